/* An access-log line appended to the log's buffer in one call: the exact counterpart of
 * `append_line_py` in access_log.py (the reference, used when Kalkan is built without a C
 * compiler); tests/unit/test_log_line.py checks that both append the same bytes.
 *
 * Why C: every answer, hits included, writes a line, and the readers' User-Agent and Referer
 * differ on every line. Formatted in Python they were checked, decoded to str, joined into the
 * line, and the batch joined and encoded again: about a tenth of a hit's CPU time. Here the
 * line's pieces are copied once, into bytes that go to the file as they are.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define N_TEXTS 8  /* stamp, ms, client, middle, total, decision, reason, agent */

/* 1 if s[0..n) can go between the quotes of a JSON string as it is: ASCII, no control
 * character, quote or backslash (a loop without branches: the compiler vectorizes it). */
static int
as_is(const unsigned char *s, Py_ssize_t n)
{
    unsigned char bad = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        bad |= (unsigned char)((s[i] < 0x20) | (s[i] == '"') | (s[i] == '\\') | (s[i] >= 0x7f));
    return bad == 0;
}

/* append(buf, stamp, ms, client, middle, total, decision, reason, agent, ua, referer) -> bool */
static PyObject *
append(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 + N_TEXTS || !PyByteArray_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "append(buf: bytearray, 8 str, ua: bytes | None, referer: bytes | None)");
        return NULL;
    }
    const char *text[N_TEXTS];
    Py_ssize_t size[N_TEXTS], total = 2;  /* "}\n" */
    for (int i = 0; i < N_TEXTS; i++) {
        PyObject *piece = args[1 + i];
        if (!PyUnicode_Check(piece)) {
            PyErr_SetString(PyExc_TypeError, "a line's text pieces are str");
            return NULL;
        }
        if (!PyUnicode_IS_ASCII(piece))
            Py_RETURN_FALSE;  /* never from access_log.py (its pieces are JSON, ASCII) */
        text[i] = (const char *)PyUnicode_1BYTE_DATA(piece);
        size[i] = PyUnicode_GET_LENGTH(piece);
        total += size[i];
    }
    PyObject *ua = args[1 + N_TEXTS], *referer = args[2 + N_TEXTS];
    if ((ua != Py_None && !PyBytes_Check(ua)) || (referer != Py_None && !PyBytes_Check(referer))) {
        PyErr_SetString(PyExc_TypeError, "ua and referer are bytes or None");
        return NULL;
    }
    if (ua != Py_None) {
        if (!as_is((const unsigned char *)PyBytes_AS_STRING(ua), PyBytes_GET_SIZE(ua)))
            Py_RETURN_FALSE;  /* to escape: access_log.py's long way */
        total += 8 + PyBytes_GET_SIZE(ua);   /* ,"ua":"…" */
    }
    if (referer != Py_None) {
        if (!as_is((const unsigned char *)PyBytes_AS_STRING(referer), PyBytes_GET_SIZE(referer)))
            Py_RETURN_FALSE;
        total += 13 + PyBytes_GET_SIZE(referer);  /* ,"referer":"…" */
    }
    PyObject *buf = args[0];
    Py_ssize_t at = PyByteArray_GET_SIZE(buf);
    if (PyByteArray_Resize(buf, at + total) < 0)
        return NULL;
    char *out = PyByteArray_AS_STRING(buf) + at;
    for (int i = 0; i < N_TEXTS; i++) {
        memcpy(out, text[i], (size_t)size[i]);
        out += size[i];
    }
    if (ua != Py_None) {
        memcpy(out, ",\"ua\":\"", 7);
        memcpy(out + 7, PyBytes_AS_STRING(ua), (size_t)PyBytes_GET_SIZE(ua));
        out += 7 + PyBytes_GET_SIZE(ua);
        *out++ = '"';
    }
    if (referer != Py_None) {
        memcpy(out, ",\"referer\":\"", 12);
        memcpy(out + 12, PyBytes_AS_STRING(referer), (size_t)PyBytes_GET_SIZE(referer));
        out += 12 + PyBytes_GET_SIZE(referer);
        *out++ = '"';
    }
    out[0] = '}';
    out[1] = '\n';
    Py_RETURN_TRUE;
}

static PyMethodDef log_line_methods[] = {
    {"append", (PyCFunction)(void (*)(void))append, METH_FASTCALL,
     "append(buf, stamp, ms, client, middle, total, decision, reason, agent, ua, referer)"
     " -> bool: see access_log.append_line_py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef log_line_module = {
    PyModuleDef_HEAD_INIT, "kalkan.observe._log_line",
    "An access-log line appended in one call (see access_log.py).", -1, log_line_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__log_line(void)
{
    return PyModule_Create(&log_line_module);
}
