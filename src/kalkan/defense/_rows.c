/* The client table's per-request arithmetic in C: probe the index, advance the GCRA meters,
 * update a behaviour row. Each is the exact counterpart of a function in rows.py (the
 * reference, used when Kalkan is built without a C compiler); tests/unit/test_rows.py checks
 * that both give the same results, bit for bit, on the same arrays.
 *
 * Why C: the arrays are Python array.array objects, and compiled Python (mypyc) reaches their
 * items only through the generic item protocol, boxing every float and large int it reads or
 * writes. At 100,000 clients that boxing was most of the defence's cost per request
 * (bench/hit_instructions.py, case xff-on). Here each call reads the arrays' buffers directly.
 *
 * Every buffer is checked for its item type and every index against its length: a wrong call
 * raises, it never reads or writes outside an array.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* rows.py's constants (test_rows.py compares the results with the Python reference, which
 * reads them from rows.py: a change there that is not made here fails it). */
#define ROW_WIDTH 16
#define GAP_ALPHA 0.25
#define SHARED 0.02
#define BUCKETS 26
#define SKETCH_FULL 13
#define PATHS_MASK ((UINT64_C(1) << BUCKETS) - 1)

/* The row's offsets (rows.py). */
enum { T_LAST, T_REF, N, PAGES, ASSETS, COSTLY, NEW_QUERY, NEW_PATH, ERRORS, ORIGIN,
       UA_CHANGES, REFS, GAP_MEAN, GAP_VAR, SKETCHES, UA_MARK };

/* Flags of observe_row's `kind` (rows.py). */
#define KIND_PAGE 1
#define KIND_ASSET 2
#define KIND_COSTLY 4

static int
take(PyObject *obj, Py_buffer *view, char code, Py_ssize_t itemsize, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return -1;
    if (view->itemsize != itemsize || view->format == NULL || view->format[0] != code
            || view->format[1] != '\0') {
        PyErr_Format(PyExc_TypeError, "%s must be an array('%c')", what, code);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int
as_ssize(PyObject *obj, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(obj);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int
as_double(PyObject *obj, double *out)
{
    *out = PyFloat_AsDouble(obj);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
out_of_range(const char *what)
{
    PyErr_Format(PyExc_IndexError, "%s out of range", what);
    return NULL;
}

/* probe(index: array('I'), fps: array('q'), last: array('I'), mask, fp, t) -> int
 * The slot holding `fp` (its `last` set to t), or -(cell + 1) for the empty cell where it
 * belongs. */
static PyObject *
rows_probe(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "probe() takes 6 arguments");
        return NULL;
    }
    Py_ssize_t mask, t_in;
    long fp = PyLong_AsLong(args[4]);   /* (AsLongLong goes through a byte array) */
    if (fp == -1 && PyErr_Occurred())
        return NULL;
    if (as_ssize(args[3], &mask) < 0 || as_ssize(args[5], &t_in) < 0)
        return NULL;
    Py_buffer ib, fb, lb;
    if (take(args[0], &ib, 'I', 4, "index") < 0)
        return NULL;
    if (take(args[1], &fb, 'q', 8, "fps") < 0) {
        PyBuffer_Release(&ib);
        return NULL;
    }
    if (take(args[2], &lb, 'I', 4, "last") < 0) {
        PyBuffer_Release(&ib);
        PyBuffer_Release(&fb);
        return NULL;
    }
    PyObject *result = NULL;
    const uint32_t *index = ib.buf;
    const int64_t *fps = fb.buf;
    uint32_t *last = lb.buf;
    Py_ssize_t cells = ib.len / 4, slots = fb.len / 8, lasts = lb.len / 4;
    if (mask < 0 || mask >= cells || ((mask + 1) & mask) != 0) {
        out_of_range("mask");
        goto done;
    }
    if (t_in < 0 || t_in > (Py_ssize_t)UINT32_MAX) {   /* as array('I') itself refuses it */
        PyErr_SetString(PyExc_OverflowError, "t does not fit an array('I') item");
        goto done;
    }
    Py_ssize_t i = (Py_ssize_t)(fp & mask);
    for (Py_ssize_t step = 0; step <= mask; step++) {
        uint32_t s = index[i];
        if (s == 0) {
            result = PyLong_FromSsize_t(-(i + 1));
            goto done;
        }
        if ((Py_ssize_t)s > slots || (Py_ssize_t)s > lasts) {
            out_of_range("slot");
            goto done;
        }
        if (fps[s - 1] == fp) {
            last[s - 1] = (uint32_t)t_in;
            result = PyLong_FromSsize_t((Py_ssize_t)s - 1);
            goto done;
        }
        i = (i + 1) & mask;
    }
    PyErr_SetString(PyExc_RuntimeError, "probe: the index is full");
done:
    PyBuffer_Release(&ib);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&lb);
    return result;
}

/* meter(rows: array('d'), base, spec: array('d'), now, n) -> float
 * Advance the GCRA meters of one slot: spec holds (offset, T/N, cap, beyond) per meter. Returns
 * the latest time until which one of them is over (`now` if none is). */
static PyObject *
rows_meter(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "meter() takes 5 arguments");
        return NULL;
    }
    Py_ssize_t base, n;
    double now;
    if (as_ssize(args[1], &base) < 0 || as_double(args[3], &now) < 0
            || as_ssize(args[4], &n) < 0)
        return NULL;
    Py_buffer rb, sb;
    if (take(args[0], &rb, 'd', 8, "rows") < 0)
        return NULL;
    if (take(args[2], &sb, 'd', 8, "spec") < 0) {
        PyBuffer_Release(&rb);
        return NULL;
    }
    PyObject *result = NULL;
    double *rows = rb.buf;
    const double *spec = sb.buf;
    Py_ssize_t len = rb.len / 8, meters = sb.len / 8 / 4;
    double until = now;
    for (Py_ssize_t m = 0; m < meters; m++) {
        const double *one = spec + 4 * m;
        Py_ssize_t j = base + (Py_ssize_t)one[0];
        if (base < 0 || j < 0 || j >= len) {
            out_of_range("meter");
            goto done;
        }
        double tat = rows[j];
        if (tat < now)
            tat = now;
        tat += one[1] * (double)n;
        double limit = now + one[2];
        if (tat > limit)
            tat = limit;
        rows[j] = tat;
        if (tat - one[3] > until)
            until = tat - one[3];
    }
    result = PyFloat_FromDouble(until);
done:
    PyBuffer_Release(&rb);
    PyBuffer_Release(&sb);
    return result;
}

/* observe_row(rows, slot, now, rate, kind, referred, query_bucket, path_bucket, mark, n, before)
 * -> float: behaviour.py's Behaviour.observe on one row (see rows.py's observe_row). */
static PyObject *
rows_observe_row(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "observe_row() takes 11 arguments");
        return NULL;
    }
    Py_ssize_t slot, kind, qb, pb, n;
    double now, rate, mark;
    int referred = PyObject_IsTrue(args[5]);
    if (referred < 0 || as_ssize(args[1], &slot) < 0 || as_double(args[2], &now) < 0
            || as_double(args[3], &rate) < 0 || as_ssize(args[4], &kind) < 0
            || as_ssize(args[6], &qb) < 0 || as_ssize(args[7], &pb) < 0
            || as_double(args[8], &mark) < 0 || as_ssize(args[9], &n) < 0)
        return NULL;
    if (qb >= BUCKETS || pb >= BUCKETS)
        return out_of_range("bucket");
    Py_buffer rb, bb;
    int with_before = args[10] != Py_None;
    if (take(args[0], &rb, 'd', 8, "rows") < 0)
        return NULL;
    if (with_before && take(args[10], &bb, 'd', 8, "before") < 0) {
        PyBuffer_Release(&rb);
        return NULL;
    }
    PyObject *result = NULL;
    if (slot < 0 || (slot + 1) * ROW_WIDTH > rb.len / 8
            || (with_before && bb.len / 8 < ROW_WIDTH)) {
        out_of_range("slot");
        goto done;
    }
    double *r = (double *)rb.buf + slot * ROW_WIDTH;
    double old[ROW_WIDTH];
    memcpy(old, r, sizeof old);
    if (r[T_LAST] > 0.0) {
        /* The rhythm: running mean and variance of log(gap). */
        double g = log((now > r[T_LAST] ? now - r[T_LAST] : 0.0) + 0.001);
        if (r[GAP_MEAN] != 0.0) {
            double d = g - r[GAP_MEAN];
            r[GAP_MEAN] += GAP_ALPHA * d;
            r[GAP_VAR] = (1.0 - GAP_ALPHA) * (r[GAP_VAR] + GAP_ALPHA * d * d);
        } else {
            r[GAP_MEAN] = g != 0.0 ? g : 1e-9;
        }
    }
    r[T_LAST] = now;
    double w;
    if (r[T_REF] == 0.0) {
        r[T_REF] = now;
        w = 1.0;
    } else {
        w = exp(rate * (now - r[T_REF]));
        if (w > 32.0) {
            for (int k = N; k <= REFS; k++)
                r[k] = r[k] / w;
            r[T_REF] = now;
            w = 1.0;
        }
    }
    w *= (double)n;
    r[N] += w;
    if (kind & KIND_PAGE) {
        r[PAGES] += w;
        if (referred)
            r[REFS] += w;
    } else if (kind & KIND_ASSET) {
        r[ASSETS] += w;
    }
    if (kind & KIND_COSTLY)
        r[COSTLY] += w;
    if (qb >= 0 || pb >= 0) {
        /* (A value no update can make, from a damaged row, is read as empty sketches: casting
         * it would be undefined.) */
        double packed = r[SKETCHES];
        uint64_t sketches = packed >= 0.0 && packed < 4503599627370496.0 ? (uint64_t)packed : 0;
        uint64_t paths = sketches & PATHS_MASK, queries = sketches >> BUCKETS;
        if (qb >= 0) {
            uint64_t bit = UINT64_C(1) << qb;
            if (!(queries & bit)) {
                r[NEW_QUERY] += w;
                queries = __builtin_popcountll(queries) >= SKETCH_FULL ? bit : (queries | bit);
            }
        }
        if (pb >= 0) {
            uint64_t bit = UINT64_C(1) << pb;
            if (!(paths & bit)) {
                r[NEW_PATH] += w;
                paths = __builtin_popcountll(paths) >= SKETCH_FULL ? bit : (paths | bit);
            }
        }
        r[SKETCHES] = (double)(paths | (queries << BUCKETS));
    }
    double said = 0.0;
    if (r[UA_MARK] != mark) {
        if (r[UA_MARK] != 0.0) {
            r[UA_CHANGES] += w;
            said = r[UA_MARK];
            if (with_before)
                memcpy(bb.buf, old, sizeof old);
        }
        r[UA_MARK] = mark;
    }
    if (said == 0.0 && r[UA_CHANGES] > SHARED * r[N])
        said = -1.0;
    result = PyFloat_FromDouble(said);
done:
    PyBuffer_Release(&rb);
    if (with_before)
        PyBuffer_Release(&bb);
    return result;
}

static PyMethodDef rows_methods[] = {
    {"probe", (PyCFunction)(void (*)(void))rows_probe, METH_FASTCALL,
     "probe(index, fps, last, mask, fp, t) -> slot, or -(empty cell + 1)"},
    {"meter", (PyCFunction)(void (*)(void))rows_meter, METH_FASTCALL,
     "meter(rows, base, spec, now, n) -> until"},
    {"observe_row", (PyCFunction)(void (*)(void))rows_observe_row, METH_FASTCALL,
     "observe_row(rows, slot, now, rate, kind, referred, query_bucket, path_bucket, mark, n, "
     "before) -> said"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef rows_module = {
    PyModuleDef_HEAD_INIT, "kalkan.defense._rows",
    "The client table's per-request arithmetic in C (see rows.py).", -1, rows_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__rows(void)
{
    return PyModule_Create(&rows_module);
}
