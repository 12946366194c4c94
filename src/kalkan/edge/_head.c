/* The common request head read in one call: the exact counterpart of `scan` in head.py (the
 * reference, used when Kalkan is built without a C compiler); tests/unit/test_head.py checks
 * that both give the same answer on the same bytes, and that whatever either accepts llhttp
 * (httptools) reads the same way.
 *
 * Why C: through httptools every header field is two callbacks into the parser's Python layer
 * and one call of a Python method, a few hundred CPU instructions each; a browser's request
 * has ten or more fields. Here the whole head is one call.
 *
 * What it accepts is a strict subset of what llhttp accepts, and it declines (returns None)
 * everything else, which then goes to llhttp: a GET or HEAD request line in origin form with
 * HTTP/1.1, fields of token names and visible values, CRLF line ends, and no field that
 * frames a body or changes the connection (Content-Length, Transfer-Encoding, Upgrade,
 * Proxy-Connection, a Connection other than keep-alive). So a head it accepts has no body:
 * the next request starts right after it, as llhttp would read it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_FIELDS 255   /* indices fit a byte in `coded`; more goes to llhttp (and its limits) */
#define MAX_CODES 32
#define MAX_NAME 32

static struct { char name[MAX_NAME]; Py_ssize_t len; unsigned char code; } codes[MAX_CODES];
static int n_codes;
static PyObject *get_str, *head_str;  /* the method names handed back, made once */

static unsigned char is_tchar[256];   /* a field name's characters (RFC 9110 §5.6.2 token) */
static unsigned char lower[256];

/* Values and targets are most of a head's bytes: their end is found with memchr and their
 * characters checked in a loop without branches, which the compiler vectorizes (a byte at a
 * time through a table was a fifth of a hit's CPU time in user space). */

/* 1 if every byte of s[0..n) may be in a field value: HTAB, SP to ~, obs-text (as llhttp). */
static int
value_ok(const unsigned char *s, Py_ssize_t n)
{
    unsigned char bad = 0;  /* a byte, so that a vector holds 16 or 32 of them */
    for (Py_ssize_t i = 0; i < n; i++)
        bad |= (unsigned char)(((s[i] < 0x20) & (s[i] != '\t')) | (s[i] == 0x7f));
    return bad == 0;
}

/* 1 if every byte of s[0..n) is ! to ~ (what this reader takes in a target). */
static int
target_ok(const unsigned char *s, Py_ssize_t n)
{
    unsigned char bad = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        bad |= (unsigned char)((s[i] <= 0x20) | (s[i] >= 0x7f));
    return bad == 0;
}

/* Where the first `c` at or after p is, or -1. */
static Py_ssize_t
find(const unsigned char *buf, Py_ssize_t p, Py_ssize_t size, int c)
{
    const unsigned char *at = memchr(buf + p, c, (size_t)(size - p));
    return at == NULL ? -1 : at - buf;
}

static int
name_is(const unsigned char *name, Py_ssize_t len, const char *lowercase, Py_ssize_t n)
{
    if (len != n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower[name[i]] != (unsigned char)lowercase[i])
            return 0;
    return 1;
}

/* Field names as browsers (and proxies, lowercased) spell them. A field whose name is one of
 * these gets the same name object every time and, when its value is the one this spelling had
 * last (Accept, Accept-Language, the Sec-Fetch-* fields: the same for most readers), the same
 * (name, value) pair: bytes and tuples are immutable, so sharing them only saves allocating,
 * and freeing, most of a head's objects. A fixed list: what a client sends cannot grow it. */
static const char *const SPELLINGS[] = {
    "Host", "User-Agent", "Accept", "Accept-Language", "Accept-Encoding", "Connection",
    "Cookie", "Referer", "Upgrade-Insecure-Requests", "Sec-Fetch-Dest", "Sec-Fetch-Mode",
    "Sec-Fetch-Site", "Sec-Fetch-User", "Sec-CH-UA", "Sec-CH-UA-Mobile", "Sec-CH-UA-Platform",
    "Cache-Control", "Pragma", "If-None-Match", "If-Modified-Since", "DNT", "Priority",
    "X-Forwarded-For", "X-Forwarded-Proto", "X-Real-IP", "Authorization", "Origin",
    "Sec-GPC", "Save-Data", "X-Requested-With", "Sec-Purpose", "Purpose", "Accept-Charset",
    "TE", "Via", "Forwarded", "X-Forwarded-Host",
};
#define N_SPELLINGS (sizeof(SPELLINGS) / sizeof(SPELLINGS[0]))
#define KNOWN_SLOTS 256   /* a power of two, over twice the spellings (both cases) */
#define SHARED_VALUE 256  /* longer values are not kept for sharing */

typedef struct {
    char spelling[MAX_NAME];
    Py_ssize_t len;
    unsigned char code;   /* its field code (set_codes), 0 if none */
    PyObject *name;       /* the name's bytes object, made once */
    PyObject *pair;       /* the last (name, value) pair made for it, or NULL */
} Known;
static Known known[2 * N_SPELLINGS];
static int n_known;
static short known_slots[KNOWN_SLOTS];  /* index + 1 into known, 0: empty */

static unsigned
spelling_hash(const unsigned char *name, Py_ssize_t len)
{
    return (unsigned)(len * 7 + name[0] * 3 + name[len - 1] + name[len / 2] * 5)
           & (KNOWN_SLOTS - 1);
}

static Known *
known_spelling(const unsigned char *name, Py_ssize_t len)
{
    for (unsigned h = spelling_hash(name, len);; h = (h + 1) & (KNOWN_SLOTS - 1)) {
        int i = known_slots[h];
        if (i == 0)
            return NULL;
        Known *k = &known[i - 1];
        if (k->len == len && memcmp(k->spelling, name, (size_t)len) == 0)
            return k;
    }
}

/* The code of a field named `name` (any case), 0 if the edge does not note it. */
static unsigned char
code_of(const unsigned char *name, Py_ssize_t len)
{
    for (int i = 0; i < n_codes; i++)
        if (name_is(name, len, codes[i].name, codes[i].len))
            return codes[i].code;
    return 0;
}

typedef struct {
    Py_ssize_t name, name_len, value, value_len;
    unsigned char code;
    Known *known;
} Field;

/* scan(data, start) -> (method, target, fields, coded, end) | None */
static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Field fields[MAX_FIELDS];
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan(data: bytes, start: int)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || start > size) {
        PyErr_SetString(PyExc_ValueError, "start is outside data");
        return NULL;
    }
    Py_ssize_t p = start, is_head;
    if (size - p >= 4 && memcmp(buf + p, "GET ", 4) == 0) {
        is_head = 0;
        p += 4;
    } else if (size - p >= 5 && memcmp(buf + p, "HEAD ", 5) == 0) {
        is_head = 1;
        p += 5;
    } else {
        Py_RETURN_NONE;
    }
    if (p >= size || buf[p] != '/')
        Py_RETURN_NONE;
    Py_ssize_t target = p;
    p = find(buf, p, size, ' ');
    if (p < 0 || !target_ok(buf + target, p - target))
        Py_RETURN_NONE;
    Py_ssize_t target_len = p - target;
    if (size - p < 11 || memcmp(buf + p, " HTTP/1.1\r\n", 11) != 0)
        Py_RETURN_NONE;
    p += 11;
    int n = 0, n_coded = 0;
    for (;;) {
        if (size - p < 2)
            Py_RETURN_NONE;  /* the head goes on past this read */
        if (buf[p] == '\r') {
            if (buf[p + 1] != '\n')
                Py_RETURN_NONE;
            p += 2;
            break;
        }
        if (n == MAX_FIELDS)
            Py_RETURN_NONE;
        Field *f = &fields[n];
        f->name = p;
        while (p < size && is_tchar[buf[p]])
            p++;
        f->name_len = p - f->name;
        if (f->name_len == 0 || p >= size || buf[p] != ':')
            Py_RETURN_NONE;
        p++;
        while (p < size && (buf[p] == ' ' || buf[p] == '\t'))
            p++;
        f->value = p;
        p = find(buf, p, size, '\r');
        if (p < 0 || !value_ok(buf + f->value, p - f->value))
            Py_RETURN_NONE;
        f->value_len = p - f->value;
        if (size - p < 2 || buf[p + 1] != '\n')
            Py_RETURN_NONE;
        p += 2;
        const unsigned char *name = buf + f->name;
        Py_ssize_t len = f->name_len;
        /* What llhttp reads itself (framing, the connection's fate) is left to llhttp. */
        if (name_is(name, len, "content-length", 14) || name_is(name, len, "transfer-encoding", 17)
                || name_is(name, len, "upgrade", 7) || name_is(name, len, "proxy-connection", 16))
            Py_RETURN_NONE;
        if (name_is(name, len, "connection", 10)
                && !name_is(buf + f->value, f->value_len, "keep-alive", 10))
            Py_RETURN_NONE;
        f->known = known_spelling(name, len);
        f->code = f->known != NULL ? f->known->code : code_of(name, len);
        n_coded += f->code != 0;
        n++;
    }
    PyObject *list = PyList_New(n);
    PyObject *coded = PyBytes_FromStringAndSize(NULL, 2 * (Py_ssize_t)n_coded);
    PyObject *target_obj = PyBytes_FromStringAndSize((const char *)buf + target, target_len);
    if (list == NULL || coded == NULL || target_obj == NULL)
        goto fail;
    char *c = PyBytes_AS_STRING(coded);
    for (int i = 0; i < n; i++) {
        Field *f = &fields[i];
        Known *k = f->known;
        const char *value_at = (const char *)buf + f->value;
        if (k != NULL && k->pair != NULL) {
            PyObject *last = PyTuple_GET_ITEM(k->pair, 1);
            if (PyBytes_GET_SIZE(last) == f->value_len
                    && memcmp(PyBytes_AS_STRING(last), value_at, (size_t)f->value_len) == 0) {
                PyList_SET_ITEM(list, i, Py_NewRef(k->pair));
                goto noted;
            }
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL)
            goto fail;
        PyList_SET_ITEM(list, i, pair);  /* the list owns it from here, also on failure */
        PyObject *name = k != NULL ? Py_NewRef(k->name)
            : PyBytes_FromStringAndSize((const char *)buf + f->name, f->name_len);
        if (name == NULL)
            goto fail;
        PyTuple_SET_ITEM(pair, 0, name);
        PyObject *value = PyBytes_FromStringAndSize(value_at, f->value_len);
        if (value == NULL)
            goto fail;
        PyTuple_SET_ITEM(pair, 1, value);
        if (k != NULL && f->value_len <= SHARED_VALUE)
            Py_XSETREF(k->pair, Py_NewRef(pair));
    noted:
        if (f->code) {
            *c++ = (char)i;
            *c++ = (char)f->code;
        }
    }
    PyObject *result = PyTuple_New(5);
    if (result == NULL)
        goto fail;
    PyTuple_SET_ITEM(result, 0, Py_NewRef(is_head ? head_str : get_str));
    PyTuple_SET_ITEM(result, 1, target_obj);
    PyTuple_SET_ITEM(result, 2, list);
    PyTuple_SET_ITEM(result, 3, coded);
    PyTuple_SET_ITEM(result, 4, PyLong_FromSsize_t(p));
    if (PyTuple_GET_ITEM(result, 4) == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
fail:
    Py_XDECREF(list);
    Py_XDECREF(coded);
    Py_XDECREF(target_obj);
    return NULL;
}

/* set_codes(((lowercase name, code), ...)): the fields the edge notes (framing.FIELD_CODES). */
static PyObject *
set_codes(PyObject *module, PyObject *items)
{
    PyObject *seq = PySequence_Fast(items, "set_codes takes a sequence of (name, code) pairs");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count > MAX_CODES) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d field codes", MAX_CODES);
        return NULL;
    }
    int kept = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const char *name;
        Py_ssize_t len;
        int code;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "y#i", &name, &len, &code))
            goto fail;
        if (len == 0 || len > MAX_NAME || code < 1 || code > 255) {
            PyErr_SetString(PyExc_ValueError, "a field code's name is 1 to 32 bytes, its code 1 to 255");
            goto fail;
        }
        for (Py_ssize_t j = 0; j < len; j++) {
            if (lower[(unsigned char)name[j]] != (unsigned char)name[j]) {
                PyErr_SetString(PyExc_ValueError, "field code names are lowercase");
                goto fail;
            }
        }
        memcpy(codes[kept].name, name, (size_t)len);
        codes[kept].len = len;
        codes[kept].code = (unsigned char)code;
        kept++;
    }
    n_codes = kept;
    for (int i = 0; i < n_known; i++)
        known[i].code = code_of((const unsigned char *)known[i].spelling, known[i].len);
    Py_DECREF(seq);
    Py_RETURN_NONE;
fail:
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef head_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, start) -> (method, target, fields, coded, end) or None: see head.py"},
    {"set_codes", set_codes, METH_O, "set_codes(pairs): the field codes scan reports"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef head_module = {
    PyModuleDef_HEAD_INIT, "kalkan.edge._head",
    "The common request head read in one call (see head.py).", -1, head_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__head(void)
{
    const char *token_extra = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        lower[c] = (unsigned char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
        is_tchar[c] = (unsigned char)((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
                                      || (c >= 'A' && c <= 'Z')
                                      || (c != 0 && strchr(token_extra, c) != NULL));
    }
    for (size_t i = 0; i < 2 * N_SPELLINGS; i++) {
        /* Each spelling as listed, then lowercased (as HTTP/2 front ends forward them). */
        const char *listed = SPELLINGS[i / 2];
        Known *k = &known[n_known];
        k->len = (Py_ssize_t)strlen(listed);
        for (Py_ssize_t j = 0; j < k->len; j++)
            k->spelling[j] = i % 2 ? (char)lower[(unsigned char)listed[j]] : listed[j];
        const unsigned char *name = (const unsigned char *)k->spelling;
        if (known_spelling(name, k->len) != NULL)
            continue;  /* already lowercase */
        k->name = PyBytes_FromStringAndSize(k->spelling, k->len);
        if (k->name == NULL)
            return NULL;
        unsigned h = spelling_hash(name, k->len);
        while (known_slots[h] != 0)
            h = (h + 1) & (KNOWN_SLOTS - 1);
        known_slots[h] = (short)(++n_known);
    }
    get_str = PyUnicode_InternFromString("GET");
    head_str = PyUnicode_InternFromString("HEAD");
    if (get_str == NULL || head_str == NULL)
        return NULL;
    return PyModule_Create(&head_module);
}
