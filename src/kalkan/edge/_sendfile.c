/* A hit's head and its body file sent in one call: the exact counterpart of `send_head_and_file`
 * in body_files.py (the reference, used when Kalkan is built without a C compiler).
 *
 * Why C: Python has no send() with flags on a bare descriptor (the event loop's transport
 * hides its socket), and the head must go with MSG_MORE so that it leaves in the same segment
 * as the body's first bytes, as nginx's writev-then-sendfile does under TCP_NOPUSH.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <sys/sendfile.h>
#include <sys/socket.h>

/* send_head_and_file(sock_fd, head, file_fd, size) -> bytes sent, the head's first.
 * Never blocks (the socket is non-blocking and MSG_DONTWAIT is set); stops at the first
 * short or failed call and reports what went out: the caller queues the rest on its
 * transport, whose own write then meets (and reports) any error of the socket. */
static PyObject *
send_head_and_file(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "send_head_and_file(sock_fd, head: bytes, file_fd, size)");
        return NULL;
    }
    int sock = (int)PyLong_AsLong(args[0]);
    int file = (int)PyLong_AsLong(args[2]);
    Py_ssize_t size = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    const char *head = PyBytes_AS_STRING(args[1]);
    Py_ssize_t head_len = PyBytes_GET_SIZE(args[1]);
    ssize_t sent = send(sock, head, (size_t)head_len, MSG_MORE | MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < head_len)
        return PyLong_FromSsize_t(sent < 0 ? 0 : sent);
    off_t offset = 0;
    while (offset < size) {
        ssize_t n = sendfile(sock, file, &offset, (size_t)(size - offset));
        if (n <= 0)
            break;  /* EAGAIN (the socket's buffer is full) or an error: the transport goes on */
    }
    return PyLong_FromSsize_t(head_len + (Py_ssize_t)offset);
}

static PyMethodDef sendfile_methods[] = {
    {"send_head_and_file", (PyCFunction)(void (*)(void))send_head_and_file, METH_FASTCALL,
     "send_head_and_file(sock_fd, head, file_fd, size) -> bytes sent: see body_files.py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sendfile_module = {
    PyModuleDef_HEAD_INIT, "kalkan.edge._sendfile",
    "A hit's head and its body file sent in one call (see body_files.py).", -1,
    sendfile_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__sendfile(void)
{
    return PyModule_Create(&sendfile_module);
}
