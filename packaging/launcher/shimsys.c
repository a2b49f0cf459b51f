/* _iptables_shim: the two system calls the shim makes that Python 3.11's standard library cannot,
 * built into the frozen executable. The source shim makes them through _ctypes and the C library's
 * symbols (shim/facts/legacy_kernel.py Sockopt, shim/doctor/enter.py setns_function); a static
 * executable has no symbols to look up (no dlopen) and no libffi, so here they are plain C.
 *
 *   getsockopt(fd, level, option, data) -> (errno, bytes or None)
 *       getsockopt(2) with `data` as the buffer's input (IPT_SO_GET_INFO reads the table name
 *       from it); the same contract as Sockopt.get.
 *   setns(fd, nstype) -> None, raising OSError. */

#define PY_SSIZE_T_CLEAN
#include "Python.h"

#include <errno.h>
#include <sched.h>
#include <sys/socket.h>

int setns(int fd, int nstype);

static PyObject *shim_getsockopt(PyObject *self, PyObject *args)
{
    int fd, level, option;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "iiiy*:getsockopt", &fd, &level, &option, &data))
        return NULL;
    PyObject *buf = PyBytes_FromStringAndSize(data.buf, data.len);
    socklen_t length = (socklen_t)data.len;
    PyBuffer_Release(&data);
    if (!buf)
        return NULL;
    int rc, err;
    Py_BEGIN_ALLOW_THREADS
    rc = getsockopt(fd, level, option, PyBytes_AS_STRING(buf), &length);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(buf);
        return Py_BuildValue("(iO)", err ? err : -1, Py_None);
    }
    if ((Py_ssize_t)length < PyBytes_GET_SIZE(buf) && _PyBytes_Resize(&buf, (Py_ssize_t)length) < 0)
        return NULL;
    return Py_BuildValue("(iN)", 0, buf);
}

static PyObject *shim_setns(PyObject *self, PyObject *args)
{
    int fd, nstype, rc;
    if (!PyArg_ParseTuple(args, "ii:setns", &fd, &nstype))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = setns(fd, nstype);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"getsockopt", shim_getsockopt, METH_VARARGS, NULL},
    {"setns", shim_setns, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_iptables_shim", NULL, -1, methods};

PyMODINIT_FUNC PyInit__iptables_shim(void)
{
    return PyModule_Create(&module);
}
