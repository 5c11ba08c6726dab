/* esindexer.source._copy_c: the follower's binary COPY rows parsed in C (the optional twin
 * of esindexer.source.copyrows.parse_py).
 *
 * Why: the Python parser costs about 2.5 us a row (five struct calls and a slice), which
 * would give back most of what reading states as binary COPY saves over hex text
 * (docs/performance.md). Here a row is a few loads and four objects.
 *
 * parse(buffer) -> list of (tid, zoid, state | None, state_size | None), or None
 *
 * It reads only a stream it is sure of: the signature, a header without critical or OID
 * flags, rows of exactly four fields (int8, int8, bytea or NULL, int8 or NULL) and the
 * trailer ending the buffer. Anything else gives None, and the caller parses the stream
 * with the Python twin, which says what is wrong; so a result is either exactly the
 * twin's or nothing (tests/source/test_copyrows.py compares them). Every length is
 * checked against the bytes left before it is used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static const char SIGNATURE[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', '\xff', '\r', '\n', '\0'};

static inline uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline int64_t
be64(const unsigned char *p)
{
    uint64_t v = ((uint64_t)be32(p) << 32) | be32(p + 4);
    return (int64_t)v;
}

/* 0: parsed into *rows; 1: not sure (the caller falls back); -1: a Python error */
static int
parse_into(const unsigned char *p, Py_ssize_t size, PyObject *rows)
{
    if (size < 19 || memcmp(p, SIGNATURE, 11) != 0)
        return 1;
    uint32_t flags = be32(p + 11);
    int32_t extension = (int32_t)be32(p + 15);
    if ((flags & 0x1FFFFu) != 0 || extension < 0 || extension > size - 19)
        return 1;
    Py_ssize_t pos = 19 + extension;
    for (;;) {
        if (size - pos < 2)
            return 1;
        int16_t count = (int16_t)(((unsigned)p[pos] << 8) | p[pos + 1]);
        if (count == -1)
            return pos + 2 == size ? 0 : 1;
        /* count, tid (length + 8), zoid (length + 8), the state's length */
        if (count != 4 || size - pos < 2 + 12 + 12 + 4)
            return 1;
        if (be32(p + pos + 2) != 8 || be32(p + pos + 14) != 8)
            return 1;
        int64_t tid = be64(p + pos + 6), zoid = be64(p + pos + 18);
        int32_t n = (int32_t)be32(p + pos + 26);
        pos += 30;
        const unsigned char *state = NULL;
        if (n >= 0) {
            if (n > size - pos)
                return 1;
            state = p + pos;
            pos += n;
        }
        else if (n != -1) {
            return 1;
        }
        if (size - pos < 4)
            return 1;
        int32_t m = (int32_t)be32(p + pos);
        pos += 4;
        int has_size = 0;
        int64_t state_size = 0;
        if (m == 8) {
            if (size - pos < 8)
                return 1;
            state_size = be64(p + pos);
            pos += 8;
            has_size = 1;
        }
        else if (m != -1) {
            return 1;
        }
        PyObject *row = PyTuple_New(4);
        if (row == NULL)
            return -1;
        PyObject *a = PyLong_FromLongLong(tid), *b = PyLong_FromLongLong(zoid);
        PyObject *c = state == NULL ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((const char *)state, n);
        PyObject *d = has_size ? PyLong_FromLongLong(state_size) : Py_NewRef(Py_None);
        /* PyTuple_SET_ITEM steals; a NULL slot is fine for the tuple's deallocation */
        PyTuple_SET_ITEM(row, 0, a);
        PyTuple_SET_ITEM(row, 1, b);
        PyTuple_SET_ITEM(row, 2, c);
        PyTuple_SET_ITEM(row, 3, d);
        if (a == NULL || b == NULL || c == NULL || d == NULL || PyList_Append(rows, row) < 0) {
            Py_DECREF(row);
            return -1;
        }
        Py_DECREF(row);
    }
}

static PyObject *
parse(PyObject *module, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *rows = PyList_New(0);
    int r = rows == NULL ? -1 : parse_into((const unsigned char *)view.buf, view.len, rows);
    PyBuffer_Release(&view);
    if (r == 0)
        return rows;
    Py_XDECREF(rows);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)parse, METH_O,
     "parse(buffer): the rows of a binary COPY stream of (int8, int8, bytea, int8), or None "
     "where the stream is not exactly that (esindexer.source.copyrows.parse_py then says why)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "esindexer.source._copy_c",
    "The follower's binary COPY rows parsed in C (esindexer/source/copyrows.py).",
    0,
    methods,
};

PyMODINIT_FUNC
PyInit__copy_c(void)
{
    return PyModule_Create(&moduledef);
}
