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
#include <stddef.h>
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

/* The probe itself, on taken buffers: 1 and the slot in *at when `fp` is there (its last seen
 * set to t), 0 and the empty cell where it belongs when it is not, -1 with an exception set
 * on a bad mask or index. rows_probe and Hit share it. */
static int
probe_cells(Py_buffer *ib, Py_buffer *fb, Py_buffer *lb, Py_ssize_t mask, int64_t fp,
            uint32_t t, Py_ssize_t *at)
{
    const uint32_t *index = ib->buf;
    const int64_t *fps = fb->buf;
    uint32_t *last = lb->buf;
    Py_ssize_t cells = ib->len / 4, slots = fb->len / 8, lasts = lb->len / 4;
    if (mask < 0 || mask >= cells || ((mask + 1) & mask) != 0) {
        out_of_range("mask");
        return -1;
    }
    Py_ssize_t i = (Py_ssize_t)(fp & mask);
    for (Py_ssize_t step = 0; step <= mask; step++) {
        uint32_t s = index[i];
        if (s == 0) {
            *at = i;
            return 0;
        }
        if ((Py_ssize_t)s > slots || (Py_ssize_t)s > lasts) {
            out_of_range("slot");
            return -1;
        }
        if (fps[s - 1] == fp) {
            last[s - 1] = t;
            *at = (Py_ssize_t)s - 1;
            return 1;
        }
        i = (i + 1) & mask;
    }
    PyErr_SetString(PyExc_RuntimeError, "probe: the index is full");
    return -1;
}

/* GCRA on taken buffers: advance the meters of the slot whose row starts at `base` by `n`
 * requests (spec: (offset, T/N, cap, beyond) per meter); the latest time until which one is
 * over in *until (`now` when none is). 0, or -1 with an exception set. rows_meter and Hit
 * share it. */
static int
meter_cells(Py_buffer *rb, Py_ssize_t base, Py_buffer *sb, double now, Py_ssize_t n,
            double *until_out)
{
    double *rows = rb->buf;
    const double *spec = sb->buf;
    Py_ssize_t len = rb->len / 8, meters = sb->len / 8 / 4;
    double until = now;
    for (Py_ssize_t m = 0; m < meters; m++) {
        const double *one = spec + 4 * m;
        Py_ssize_t j = base + (Py_ssize_t)one[0];
        if (base < 0 || j < 0 || j >= len) {
            out_of_range("meter");
            return -1;
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
    *until_out = until;
    return 0;
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
    if (t_in < 0 || t_in > (Py_ssize_t)UINT32_MAX) {   /* as array('I') itself refuses it */
        PyErr_SetString(PyExc_OverflowError, "t does not fit an array('I') item");
        goto done;
    }
    Py_ssize_t at;
    int found = probe_cells(&ib, &fb, &lb, mask, fp, (uint32_t)t_in, &at);
    if (found >= 0)
        result = PyLong_FromSsize_t(found ? at : -(at + 1));
done:
    PyBuffer_Release(&ib);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&lb);
    return result;
}

/* SipHash-1-3 (Aumasson & Bernstein; the variant CPython hashes its strings with) of `len`
 * bytes under the key (k0, k1): rows.py's py_siphash13 is the reference. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                        \
    do {                                                                \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);       \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                          \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                          \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);       \
    } while (0)

static uint64_t
siphash13(uint64_t k0, uint64_t k1, const uint8_t *in, size_t len)
{
    uint64_t v0 = k0 ^ UINT64_C(0x736f6d6570736575), v1 = k1 ^ UINT64_C(0x646f72616e646f6d);
    uint64_t v2 = k0 ^ UINT64_C(0x6c7967656e657261), v3 = k1 ^ UINT64_C(0x7465646279746573);
    size_t whole = len - len % 8;
    for (size_t at = 0; at < whole; at += 8) {
        uint64_t m = 0;
        for (int k = 7; k >= 0; k--)
            m = (m << 8) | in[at + k];
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t k = 0; k < len % 8; k++)
        b |= (uint64_t)in[whole + k] << (8 * k);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

#define KEY_BYTES 17   /* a table key: an address or prefix number with its family's tag bit */

/* The fingerprint of a table key under (k0, k1): 62 bits (compiled Python keeps such an int
 * unboxed), never 0 (0 marks a free slot). -1 with an exception set on a bad key. */
static int64_t
fingerprint_of(PyObject *key, PyObject *k0_obj, PyObject *k1_obj)
{
    if (!PyLong_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "key must be an int");
        return -1;
    }
    uint8_t bytes[KEY_BYTES];
    if (_PyLong_AsByteArray((PyLongObject *)key, bytes, KEY_BYTES, 1, 0) < 0)
        return -1;   /* negative, or more than 136 bits */
    uint64_t k0 = PyLong_AsUnsignedLongLongMask(k0_obj);
    uint64_t k1 = PyLong_AsUnsignedLongLongMask(k1_obj);
    if (PyErr_Occurred())
        return -1;
    int64_t fp = (int64_t)(siphash13(k0, k1, bytes, KEY_BYTES) >> 2);
    return fp ? fp : 1;
}

/* fingerprint(key, k0, k1) -> int */
static PyObject *
rows_fingerprint(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fingerprint() takes 3 arguments");
        return NULL;
    }
    int64_t fp = fingerprint_of(args[0], args[1], args[2]);
    return fp < 0 ? NULL : PyLong_FromLongLong(fp);
}

/* contains(haystack: bytes, needle: bytes) -> bool: `needle in haystack` without the detour
 * bytes.__contains__ takes on 3.11 (it tries the needle as an int first, raising and clearing
 * a TypeError) and without the argument tuple bytes.find builds. */
static PyObject *
rows_contains(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "contains() takes two bytes");
        return NULL;
    }
    Py_ssize_t hl = PyBytes_GET_SIZE(args[0]), nl = PyBytes_GET_SIZE(args[1]);
    const char *h = PyBytes_AS_STRING(args[0]), *n = PyBytes_AS_STRING(args[1]);
    if (nl == 0)
        Py_RETURN_TRUE;
    for (Py_ssize_t i = 0; i + nl <= hl; i++) {
        const char *at = memchr(h + i, n[0], (size_t)(hl - nl - i + 1));
        if (at == NULL)
            break;
        i = at - h;
        if (memcmp(at, n, (size_t)nl) == 0)
            Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
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
    double until;
    if (meter_cells(&rb, base, &sb, now, n, &until) == 0)
        result = PyFloat_FromDouble(until);
    PyBuffer_Release(&rb);
    PyBuffer_Release(&sb);
    return result;
}

/* A sketch bucket given as itself (an int) or as the text it is the bucket of (rows.py's
 * bucket(): hash()'s high 32 bits modulo BUCKETS, floored as Python's % is). Hashed here: in
 * compiled Python the 64-bit hash is a boxed integer, and shifting it cost ~400 instructions. */
static int
as_bucket(PyObject *obj, Py_ssize_t *out)
{
    if (!PyUnicode_Check(obj))
        return as_ssize(obj, out);
    Py_hash_t h = PyObject_Hash(obj);
    if (h == -1 && PyErr_Occurred())
        return -1;
    int64_t b = ((int64_t)h >> 32) % BUCKETS;   /* (>> of a negative: arithmetic in gcc/clang) */
    *out = (Py_ssize_t)(b < 0 ? b + BUCKETS : b);
    return 0;
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
            || as_bucket(args[6], &qb) < 0 || as_bucket(args[7], &pb) < 0
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

/* -- Hit: one call per request for a client already in the table ------------------------- */

/* A table's arrays, taken for the length of one call (no format checks: Hit's constructor
 * checked each array's type, and an array's type never changes). */
typedef struct {
    Py_buffer index, fps, last, meters;
} TableViews;

typedef struct {
    PyObject *index, *fps, *last, *meters;
    Py_ssize_t mask, width;
} Table;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    uint64_t k0, k1;
    int shift4, shift6;
    Table addr, pre;
    PyObject *over;     /* array('d'): per address slot, until when one of its meters is over */
    PyObject *agent;    /* array('q'): per address slot, the key of a User-Agent claiming no crawler */
    PyObject *specs;    /* dict: route class -> (address spec or None, prefix spec or None) */
    PyObject *page;     /* specs["page"]: what a route missing from specs counts as */
} HitObject;

#define NO_PREFIX 0x7FFFFFFF   /* Hit's result: no prefix meter counts this route */
#define QUIET_BIT 1LL  /* Hit's result: no meter of the address is over after this request */
#define PLAIN_BIT 2LL  /* Hit's result: the agent key given is the one kept for the address */

static int
take_table(const Table *t, TableViews *v)
{
    PyObject *objs[4] = {t->index, t->fps, t->last, t->meters};
    Py_buffer *views[4] = {&v->index, &v->fps, &v->last, &v->meters};
    for (int k = 0; k < 4; k++) {
        if (PyObject_GetBuffer(objs[k], views[k], PyBUF_WRITABLE) < 0) {
            while (k-- > 0)
                PyBuffer_Release(views[k]);
            return -1;
        }
    }
    return 0;
}

static void
release_table(TableViews *v)
{
    PyBuffer_Release(&v->index);
    PyBuffer_Release(&v->fps);
    PyBuffer_Release(&v->last);
    PyBuffer_Release(&v->meters);
}

/* Item `slot` of a one-dimensional array of `itemsize`-byte items, taken as `view`: its
 * address, or NULL with an exception set (the view released again when the slot is beyond the
 * array). The caller releases the view. */
static void *
slot_item(PyObject *array, Py_buffer *view, int flags, Py_ssize_t slot, Py_ssize_t itemsize)
{
    if (PyObject_GetBuffer(array, view, flags) < 0)
        return NULL;
    if (slot >= view->len / itemsize) {
        PyBuffer_Release(view);
        out_of_range("slot");
        return NULL;
    }
    return (char *)view->buf + slot * itemsize;
}

/* The slot holding `fp` (its last seen set to t), -1 when none does, -2 with an exception set
 * on a corrupt index. */
static Py_ssize_t
find_slot(const Table *t, TableViews *v, int64_t fp, uint32_t t_now)
{
    Py_ssize_t at;
    int found = probe_cells(&v->index, &v->fps, &v->last, t->mask, fp, t_now, &at);
    return found < 0 ? -2 : found ? at : -1;
}

/* Advance one slot's meters (meter_cells); 0, or -1 with an exception set. */
static int
advance(TableViews *v, Py_ssize_t width, Py_ssize_t slot, PyObject *spec_obj, double now,
        Py_ssize_t n, double *until_out)
{
    Py_buffer sb;
    if (take(spec_obj, &sb, 'd', 8, "spec") < 0)
        return -1;
    int rc = meter_cells(&v->meters, slot * width, &sb, now, n, until_out);
    PyBuffer_Release(&sb);
    return rc;
}

static int64_t
key_fingerprint(const HitObject *h, const uint8_t *key)
{
    int64_t fp = (int64_t)(siphash13(h->k0, h->k1, key, KEY_BYTES) >> 2);
    return fp ? fp : 1;
}

/* hit(ip, version, route, now, n, agent_key) -> (address slot << 33) | (prefix slot << 2)
 * (NO_PREFIX when no prefix meter counts the route) | QUIET_BIT | PLAIN_BIT, or -1 when the
 * address or its prefix is not in the table yet (then nothing was counted: the caller adds it
 * the long way). Below 2^62 (slots below 2^29): compiled code keeps it a machine word. rows.py's
 * PyHit is the reference. */
static PyObject *
hit_call(PyObject *self_obj, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HitObject *h = (HitObject *)self_obj;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 6 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "hit() takes 6 positional arguments");
        return NULL;
    }
    long long agent_key = PyLong_AsLongLong(args[5]);
    if (agent_key == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t version, n;
    double now;
    if (!PyLong_Check(args[0]) || as_ssize(args[1], &version) < 0
            || as_double(args[3], &now) < 0 || as_ssize(args[4], &n) < 0)
        return PyErr_Occurred() ? NULL
            : (PyErr_SetString(PyExc_TypeError, "ip must be an int"), NULL);
    if (now < 0 || now >= 4294967296.0) {
        PyErr_SetString(PyExc_OverflowError, "now does not fit an array('I') item");
        return NULL;
    }
    uint32_t t_now = (uint32_t)now;
    /* The address's key (clients.py: IPv4 as its IPv4-mapped IPv6 form) and its prefix's. */
    uint8_t ip[16], key[KEY_BYTES] = {0}, pkey[KEY_BYTES] = {0};
    if (_PyLong_AsByteArray((PyLongObject *)args[0], ip, 16, 1, 0) < 0)
        return NULL;
    unsigned __int128 value = 0;
    for (int k = 15; k >= 0; k--)
        value = (value << 8) | ip[k];
    unsigned __int128 prefix;
    if (version == 4) {
        if (value >> 32) {
            PyErr_SetString(PyExc_ValueError, "an IPv4 address above 32 bits");
            return NULL;
        }
        prefix = value >> h->shift4;
        value |= (unsigned __int128)0xFFFF << 32;
        pkey[16] = 4;   /* 1 << 130: IPv4 prefixes apart from IPv6 ones */
    } else {
        prefix = h->shift6 >= 128 ? 0 : value >> h->shift6;
    }
    for (int k = 0; k < 16; k++) {
        key[k] = (uint8_t)(value >> (8 * k));
        pkey[k] = (uint8_t)(prefix >> (8 * k));
    }
    PyObject *specs = PyDict_GetItemWithError(h->specs, args[2]);
    if (specs == NULL) {
        if (PyErr_Occurred())
            return NULL;
        specs = h->page;
    }
    if (!PyTuple_Check(specs) || PyTuple_GET_SIZE(specs) != 2) {
        PyErr_SetString(PyExc_TypeError, "specs must map a route to a pair");
        return NULL;
    }
    PyObject *a_spec = PyTuple_GET_ITEM(specs, 0), *p_spec = PyTuple_GET_ITEM(specs, 1);
    TableViews av, pv;
    if (take_table(&h->addr, &av) < 0)
        return NULL;
    PyObject *result = NULL;
    int have_pre = 0;
    Py_ssize_t a = find_slot(&h->addr, &av, key_fingerprint(h, key), t_now), p = NO_PREFIX;
    if (a < 0) {
        if (a == -1)
            result = PyLong_FromLong(-1);
        goto done;
    }
    if (p_spec != Py_None) {
        if (take_table(&h->pre, &pv) < 0)
            goto done;
        have_pre = 1;
        p = find_slot(&h->pre, &pv, key_fingerprint(h, pkey), t_now);
        if (p < 0) {
            if (p == -1)
                result = PyLong_FromLong(-1);
            goto done;
        }
    }
    double until;
    Py_buffer ob;
    double *over = slot_item(h->over, &ob, PyBUF_WRITABLE, a, 8);
    if (over == NULL)
        goto done;
    if (a_spec != Py_None) {
        if (advance(&av, h->addr.width, a, a_spec, now, n, &until) < 0) {
            PyBuffer_Release(&ob);
            goto done;
        }
        if (until > now && until > *over)
            *over = until;
    }
    /* What the policy asks next (ClientTable.address_quiet, plain_agent), answered here. */
    long long flags = *over <= now ? QUIET_BIT : 0;
    PyBuffer_Release(&ob);
    if (agent_key != 0) {
        Py_buffer gb;
        const int64_t *kept = slot_item(h->agent, &gb, PyBUF_SIMPLE, a, 8);
        if (kept == NULL)
            goto done;
        if (*kept == agent_key)
            flags |= PLAIN_BIT;
        PyBuffer_Release(&gb);
    }
    if (p_spec != Py_None && advance(&pv, h->pre.width, p, p_spec, now, n, &until) < 0)
        goto done;
    result = PyLong_FromLongLong(((long long)a << 33) | ((long long)p << 2) | flags);
done:
    release_table(&av);
    if (have_pre)
        release_table(&pv);
    return result;
}

static int
table_arg(PyObject *const *args, Table *t, const char *name)
{
    /* args: index, fps, last, meters, mask, width */
    const struct { char code; Py_ssize_t size; } want[4] = {{'I', 4}, {'q', 8}, {'I', 4}, {'d', 8}};
    PyObject **slots[4] = {&t->index, &t->fps, &t->last, &t->meters};
    for (int k = 0; k < 4; k++) {
        Py_buffer view;
        if (take(args[k], &view, want[k].code, want[k].size, name) < 0)
            return -1;
        PyBuffer_Release(&view);
        *slots[k] = Py_NewRef(args[k]);
    }
    if (as_ssize(args[4], &t->mask) < 0 || as_ssize(args[5], &t->width) < 0)
        return -1;
    if (t->mask < 0 || ((t->mask + 1) & t->mask) != 0 || t->width < 0) {
        PyErr_Format(PyExc_ValueError, "%s: bad mask or width", name);
        return -1;
    }
    return 0;
}

static void
hit_dealloc(PyObject *self_obj)
{
    HitObject *h = (HitObject *)self_obj;
    Py_XDECREF(h->addr.index); Py_XDECREF(h->addr.fps); Py_XDECREF(h->addr.last);
    Py_XDECREF(h->addr.meters);
    Py_XDECREF(h->pre.index); Py_XDECREF(h->pre.fps); Py_XDECREF(h->pre.last);
    Py_XDECREF(h->pre.meters);
    Py_XDECREF(h->over); Py_XDECREF(h->agent); Py_XDECREF(h->specs); Py_XDECREF(h->page);
    Py_TYPE(self_obj)->tp_free(self_obj);
}

/* Hit(k0, k1, prefix_v4, prefix_v6, a_index, a_fps, a_last, a_meters, a_mask, a_width,
 *     over_until, p_index, p_fps, p_last, p_meters, p_mask, p_width, specs, agent) */
static PyObject *
hit_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Hit() takes positional arguments only");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) != 19) {
        PyErr_SetString(PyExc_TypeError, "Hit() takes 19 arguments");
        return NULL;
    }
    PyObject *const *a = &PyTuple_GET_ITEM(args, 0);
    HitObject *h = (HitObject *)type->tp_alloc(type, 0);
    if (h == NULL)
        return NULL;
    h->vectorcall = hit_call;
    Py_ssize_t v4, v6;
    h->k0 = PyLong_AsUnsignedLongLongMask(a[0]);
    h->k1 = PyLong_AsUnsignedLongLongMask(a[1]);
    if (PyErr_Occurred() || as_ssize(a[2], &v4) < 0 || as_ssize(a[3], &v6) < 0)
        goto fail;
    if (v4 < 0 || v4 > 32 || v6 < 0 || v6 > 128) {
        PyErr_SetString(PyExc_ValueError, "prefix lengths must be 0..32 and 0..128");
        goto fail;
    }
    h->shift4 = (int)(32 - v4);
    h->shift6 = (int)(128 - v6);
    if (table_arg(a + 4, &h->addr, "address table") < 0)
        goto fail;
    Py_buffer view;
    if (take(a[10], &view, 'd', 8, "over_until") < 0)
        goto fail;
    PyBuffer_Release(&view);
    h->over = Py_NewRef(a[10]);
    if (table_arg(a + 11, &h->pre, "prefix table") < 0)
        goto fail;
    if (!PyDict_Check(a[17])) {
        PyErr_SetString(PyExc_TypeError, "specs must be a dict");
        goto fail;
    }
    h->specs = Py_NewRef(a[17]);
    PyObject *page = PyDict_GetItemString(a[17], "page");
    if (page == NULL) {
        PyErr_SetString(PyExc_ValueError, "specs must have the page route");
        goto fail;
    }
    h->page = Py_NewRef(page);
    if (take(a[18], &view, 'q', 8, "agent") < 0)
        goto fail;
    PyBuffer_Release(&view);
    h->agent = Py_NewRef(a[18]);
    return (PyObject *)h;
fail:
    Py_DECREF(h);
    return NULL;
}

static PyTypeObject HitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kalkan.defense._rows.Hit",
    .tp_basicsize = sizeof(HitObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Counts one request of a client already in the table, in one call (rows.PyHit).",
    .tp_new = hit_new,
    .tp_dealloc = hit_dealloc,
    .tp_vectorcall_offset = offsetof(HitObject, vectorcall),
    .tp_call = PyVectorcall_Call,
};

static PyMethodDef rows_methods[] = {
    {"probe", (PyCFunction)(void (*)(void))rows_probe, METH_FASTCALL,
     "probe(index, fps, last, mask, fp, t) -> slot, or -(empty cell + 1)"},
    {"fingerprint", (PyCFunction)(void (*)(void))rows_fingerprint, METH_FASTCALL,
     "fingerprint(key, k0, k1) -> SipHash-1-3 of the key's 17 bytes, 62 bits, never 0"},
    {"contains", (PyCFunction)(void (*)(void))rows_contains, METH_FASTCALL,
     "contains(haystack, needle) -> needle in haystack (both bytes)"},
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
    if (PyType_Ready(&HitType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&rows_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Hit", (PyObject *)&HitType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
