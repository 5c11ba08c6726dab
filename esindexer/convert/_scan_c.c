/* C version of esindexer.convert.scan.scan_py: the pre-flight walk over a pickle's opcodes.
 *
 * Why this exists: the pure-Python scan costs about as much as unpickling plus orjson
 * together (docs/performance.md, "Pickle to JSON"); the same walk in C is ~20x cheaper.
 * It is a line-by-line port of scan_py, written for this project, and must stay exactly
 * equivalent to it: same return offset, same `kinds` entries, same `state`, and an
 * UnsafePickle in the same cases (tests/test_pickle_scan.py checks this differentially).
 * When in doubt, read scan_py: it is the reference and documents the meaning of every
 * field; the comments here only explain what is particular to the C version.
 *
 * Safety: every read is checked against the buffer length first. Positions are kept as
 * Py_ssize_t and lengths read from the pickle (up to 2**64-1) are compared with the bytes
 * left before they are added, so nothing can overflow or point past the end. The buffer
 * is an exact `bytes` object, which cannot change while we hold the GIL.
 *
 * Rare things are delegated rather than ported, which keeps parity trivial:
 * - arguments of unexpected types (not bytes/int/dict/[int, int]), keywords, a negative
 *   start: the whole call goes to scan_py;
 * - text PUT and GET (protocol 0/1 only; ZODB writes protocol 3), whose integer syntax is
 *   Python's int(), a `kinds` value that is not a machine-size int, or an expansion sum
 *   that would overflow 64 bits: scan_py is *resumed* at that opcode with the current
 *   flags, expansion and kinds. The scan is a pure state machine over (offset, flags,
 *   expansion, kinds) at every opcode boundary, so resuming there gives exactly what
 *   scan_py would have given from the start.
 *
 * No global state: the UnsafePickle class and scan_py live in the module state, set by
 * configure() when esindexer.convert.scan imports this module.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject *unsafe;   /* esindexer.convert.scan.UnsafePickle */
    PyObject *fallback; /* esindexer.convert.scan.scan_py */
} module_state;

/* Same constant as _SMALL in _pickle_scan.py. */
#define SMALL 64

/* Total size of the opcodes that need no attention (scan_py's _SKIP); 0 = handled in the
 * switch below. Read-only, so not "state". */
static const unsigned char SKIP[256] = {
    ['('] = 1, ['0'] = 1, ['1'] = 1, ['N'] = 1, ['R'] = 1, ['Q'] = 1, ['a'] = 1,
    ['b'] = 1, ['d'] = 1, ['e'] = 1, ['l'] = 1, ['o'] = 1, ['s'] = 1, ['t'] = 1,
    ['u'] = 1, [')'] = 1, [']'] = 1, ['}'] = 1,
    [0x81] = 1, [0x85] = 1, [0x86] = 1, [0x87] = 1, [0x88] = 1, [0x89] = 1, [0x8F] = 1,
    [0x90] = 1, [0x91] = 1, [0x92] = 1, [0x93] = 1, [0x97] = 1, [0x98] = 1,
    ['K'] = 2, [0x80] = 2, [0x82] = 2,
    ['M'] = 3, [0x83] = 3,
    ['J'] = 5, [0x84] = 5,
    ['G'] = 9, [0x95] = 9,
};

static inline uint32_t
rd_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline uint64_t
rd_u64(const unsigned char *p)
{
    return (uint64_t)rd_u32(p) | ((uint64_t)rd_u32(p + 4) << 32);
}

/* Move past an opcode of `hdr` fixed bytes and a `size`-byte argument. If that lands at
 * or past the end, scan_py's next read (data[i]) raises IndexError; we park at n so the
 * next bounds check reports the truncation, without ever forming an overflowing sum. */
static inline Py_ssize_t
advance(Py_ssize_t i, Py_ssize_t n, uint64_t hdr, uint64_t size)
{
    uint64_t rem = (uint64_t)(n - i); /* i < n here, so rem >= 1 */
    if (size >= rem || hdr + size >= rem)
        return n;
    return i + (Py_ssize_t)(hdr + size);
}

/* kinds[key] = value; both fit in a long long. */
static int
kinds_set(PyObject *kinds, unsigned long long key, long long value)
{
    PyObject *k = PyLong_FromUnsignedLongLong(key);
    if (k == NULL)
        return -1;
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) {
        Py_DECREF(k);
        return -1;
    }
    int r = PyDict_SetItem(kinds, k, v);
    Py_DECREF(k);
    Py_DECREF(v);
    return r;
}

/* A GET of memo `key`: scan_py's
 *     k = kinds.get(key, _SMALL); if k < 0 or flags & 2: flags |= 1 else: expansion += k
 * Returns 0, -1 on error, or 1 when the value is not a machine-size int or the sum would
 * overflow: the caller then resumes scan_py at this opcode (nothing changed yet). */
static int
do_get(PyObject *kinds, unsigned long long key, long long *flags, long long *expansion)
{
    PyObject *k = PyLong_FromUnsignedLongLong(key);
    if (k == NULL)
        return -1;
    PyObject *v = PyDict_GetItemWithError(kinds, k); /* borrowed */
    Py_DECREF(k);
    long long kv;
    if (v == NULL) {
        if (PyErr_Occurred())
            return -1;
        kv = SMALL;
    }
    else if (PyLong_CheckExact(v)) {
        int overflow;
        kv = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow)
            return 1;
    }
    else {
        return 1;
    }
    if (kv < 0 || (*flags & 2)) {
        *flags |= 1;
    }
    else {
        if (*expansion > LLONG_MAX - kv)
            return 1;
        *expansion += kv;
    }
    return 0;
}

/* Call scan_py(data, i, kinds, [flags, expansion]) and copy its state back into `state`
 * (scan_py writes the state only on success, as here). */
static PyObject *
resume(module_state *st, PyObject *data, Py_ssize_t i, PyObject *kinds, PyObject *state,
       long long flags, long long expansion)
{
    PyObject *sub = Py_BuildValue("[LL]", flags, expansion);
    if (sub == NULL)
        return NULL;
    PyObject *start = PyLong_FromSsize_t(i);
    if (start == NULL) {
        Py_DECREF(sub);
        return NULL;
    }
    PyObject *args[4] = {data, start, kinds, sub};
    PyObject *result = PyObject_Vectorcall(st->fallback, args, 4, NULL);
    Py_DECREF(start);
    if (result != NULL) {
        if (!PyList_Check(sub) || PyList_GET_SIZE(sub) != 2) {
            PyErr_SetString(PyExc_RuntimeError, "scan_py left an unexpected state");
            Py_CLEAR(result);
        }
        else {
            for (Py_ssize_t x = 0; x < 2; x++) {
                PyObject *item = PyList_GET_ITEM(sub, x);
                Py_INCREF(item);
                if (PyList_SetItem(state, x, item) < 0) { /* steals item */
                    Py_CLEAR(result);
                    break;
                }
            }
        }
    }
    Py_DECREF(sub);
    return result;
}

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    if (st->fallback == NULL || st->unsafe == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "esindexer.convert._scan_c used before configure()");
        return NULL;
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs != 4)
        return PyObject_Vectorcall(st->fallback, args, nargsf, kwnames);
    PyObject *data = args[0], *start_obj = args[1], *kinds = args[2], *state = args[3];
    if (!PyBytes_CheckExact(data) || !PyLong_CheckExact(start_obj) ||
        !PyDict_CheckExact(kinds) || !PyList_CheckExact(state) ||
        PyList_GET_SIZE(state) != 2 || !PyLong_CheckExact(PyList_GET_ITEM(state, 0)) ||
        !PyLong_CheckExact(PyList_GET_ITEM(state, 1)))
        return PyObject_Vectorcall(st->fallback, args, nargsf, NULL);

    int overflow;
    long long flags = PyLong_AsLongLongAndOverflow(PyList_GET_ITEM(state, 0), &overflow);
    if (overflow)
        return PyObject_Vectorcall(st->fallback, args, nargsf, NULL);
    long long expansion =
        PyLong_AsLongLongAndOverflow(PyList_GET_ITEM(state, 1), &overflow);
    if (overflow)
        return PyObject_Vectorcall(st->fallback, args, nargsf, NULL);
    Py_ssize_t i = PyLong_AsSsize_t(start_obj);
    if (i == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return PyObject_Vectorcall(st->fallback, args, nargsf, NULL);
    }
    if (i < 0) /* Python's negative indexing: not worth porting */
        return PyObject_Vectorcall(st->fallback, args, nargsf, NULL);

    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    const Py_ssize_t n = PyBytes_GET_SIZE(data);
    /* a pickle cannot hold more memo entries than it has bytes */
    const uint64_t limit = (uint64_t)n + 256;
    uint64_t size = 0; /* of the scalar that just ended, for the `scalar:` block */
    uint64_t idx;
    const unsigned char *q, *q2;
    unsigned char op;
    int r;

    for (;;) {
        if (i >= n)
            goto truncated;
        op = p[i];
        if (SKIP[op]) {
            i += SKIP[op];
            continue;
        }
        switch (op) {
        case 0x71: /* BINPUT not right after a scalar: assume a container */
            if (n - i < 2)
                goto truncated;
            if (kinds_set(kinds, p[i + 1], -1) < 0)
                return NULL;
            i += 2;
            continue;
        case 0x58: /* BINUNICODE */
        case 0x42: /* BINBYTES: 4-byte length */
            if (n - i < 5)
                goto truncated;
            size = rd_u32(p + i + 1);
            i = advance(i, n, 5, size);
            goto scalar;
        case 0x43: /* SHORT_BINBYTES */
        case 0x8C: /* SHORT_BINUNICODE */
        case 0x55: /* SHORT_BINSTRING */
        case 0x8A: /* LONG1: 1-byte length */
            if (n - i < 2)
                goto truncated;
            size = p[i + 1];
            i = advance(i, n, 2, size);
            goto scalar;
        case 0x68: /* BINGET */
            if (n - i < 2)
                goto truncated;
            r = do_get(kinds, p[i + 1], &flags, &expansion);
            if (r < 0)
                return NULL;
            if (r > 0)
                return resume(st, data, i, kinds, state, flags, expansion);
            i += 2;
            continue;
        case 0x63: /* GLOBAL: two lines; counted as a scalar of its whole length */
            q = memchr(p + i + 1, '\n', (size_t)(n - i - 1));
            if (q == NULL)
                goto no_newline;
            q2 = memchr(q + 1, '\n', (size_t)(p + n - (q + 1)));
            if (q2 == NULL)
                goto no_newline;
            size = (uint64_t)((q2 + 1 - p) - i);
            i = q2 + 1 - p;
            goto scalar;
        case 0x54: /* BINSTRING */
        case 0x8B: /* LONG4: signed 4-byte length */
            if (n - i < 5)
                goto truncated;
            {
                int32_t len = (int32_t)rd_u32(p + i + 1);
                if (len < 0) {
                    PyErr_Format(st->unsafe, "negative length at offset %zd", i);
                    return NULL;
                }
                size = (uint64_t)len;
            }
            i = advance(i, n, 5, size);
            goto scalar;
        case 0x8D: /* BINUNICODE8 */
        case 0x8E: /* BINBYTES8 */
        case 0x96: /* BYTEARRAY8: 8-byte length */
            if (n - i < 9)
                goto truncated;
            size = rd_u64(p + i + 1);
            i = advance(i, n, 9, size);
            goto scalar;
        case 0x46: /* FLOAT */
        case 0x49: /* INT */
        case 0x4C: /* LONG */
        case 0x53: /* STRING */
        case 0x56: /* UNICODE */
        case 0x50: /* PERSID: one line, not interpreted */
            q = memchr(p + i + 1, '\n', (size_t)(n - i - 1));
            if (q == NULL)
                goto no_newline;
            size = (uint64_t)((q + 1 - p) - i);
            i = q + 1 - p;
            goto scalar;
        case 0x69: /* INST: two lines, builds an instance (not a scalar) */
            q = memchr(p + i + 1, '\n', (size_t)(n - i - 1));
            if (q == NULL)
                goto no_newline;
            q2 = memchr(q + 1, '\n', (size_t)(p + n - (q + 1)));
            if (q2 == NULL)
                goto no_newline;
            i = q2 + 1 - p;
            continue;
        case 0x72: /* LONG_BINPUT not right after a scalar */
            if (n - i < 5)
                goto truncated;
            idx = rd_u32(p + i + 1);
            if (idx > limit)
                goto memo_too_big;
            if (kinds_set(kinds, idx, -1) < 0)
                return NULL;
            i += 5;
            continue;
        case 0x70: /* PUT (text) */
        case 0x67: /* GET (text): int() syntax, protocol 0/1 only -> scan_py */
            return resume(st, data, i, kinds, state, flags, expansion);
        case 0x94: /* MEMOIZE not right after a scalar: index unknown here */
            flags |= 2;
            i += 1;
            continue;
        case 0x6A: /* LONG_BINGET */
            if (n - i < 5)
                goto truncated;
            r = do_get(kinds, rd_u32(p + i + 1), &flags, &expansion);
            if (r < 0)
                return NULL;
            if (r > 0)
                return resume(st, data, i, kinds, state, flags, expansion);
            i += 5;
            continue;
        case 0x32: /* DUP */
            flags |= 1;
            i += 1;
            continue;
        case 0x2E: /* STOP */
        {
            PyObject *f = PyLong_FromLongLong(flags);
            if (f == NULL)
                return NULL;
            if (PyList_SetItem(state, 0, f) < 0)
                return NULL;
            PyObject *e = PyLong_FromLongLong(expansion);
            if (e == NULL)
                return NULL;
            if (PyList_SetItem(state, 1, e) < 0)
                return NULL;
            return PyLong_FromSsize_t(i + 1);
        }
        default:
            PyErr_Format(st->unsafe, "invalid pickle opcode 0x%02x at offset %zd",
                         (unsigned int)op, i);
            return NULL;
        }

    scalar:
        /* A scalar of `size` bytes ended at i (size < n: it fit in the buffer). ZODB's
         * pickler memoizes most scalars right away; remember big ones so their
         * repetition is counted. */
        if (i >= n)
            goto truncated;
        op = p[i];
        if (op == 0x71) {
            if (size > SMALL) {
                if (n - i < 2)
                    goto truncated;
                if (kinds_set(kinds, p[i + 1], (long long)size) < 0)
                    return NULL;
            }
            i += 2;
        }
        else if (op == 0x72) {
            if (n - i < 5)
                goto truncated;
            idx = rd_u32(p + i + 1);
            if (idx > limit)
                goto memo_too_big;
            if (size > SMALL && kinds_set(kinds, idx, (long long)size) < 0)
                return NULL;
            i += 5;
        }
        else if (op == 0x94) {
            if (size > SMALL)
                flags |= 2; /* index not tracked: treat later GETs conservatively */
            i += 1;
        }
    }

truncated:
    PyErr_SetString(st->unsafe, "pickle data was truncated");
    return NULL;
no_newline:
    PyErr_Format(st->unsafe,
                 "pickle data was truncated or malformed (no newline after offset %zd)", i);
    return NULL;
memo_too_big:
    PyErr_Format(st->unsafe, "memo index %llu at offset %zd exceeds the record size",
                 (unsigned long long)idx, i);
    return NULL;
}

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "configure(unsafe_pickle_class, scan_py)");
        return NULL;
    }
    module_state *st = (module_state *)PyModule_GetState(module);
    Py_INCREF(args[0]);
    Py_XSETREF(st->unsafe, args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(st->fallback, args[1]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL | METH_KEYWORDS,
     "scan(data, start, kinds, state) -> offset after STOP; the C version of "
     "esindexer.convert.scan.scan_py, with identical results."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(UnsafePickle, scan_py): the exception to raise and the reference scan "
     "to delegate rare cases to."},
    {NULL, NULL, 0, NULL},
};

static int
m_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    if (st != NULL) {
        Py_VISIT(st->unsafe);
        Py_VISIT(st->fallback);
    }
    return 0;
}

static int
m_clear(PyObject *module)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    if (st != NULL) {
        Py_CLEAR(st->unsafe);
        Py_CLEAR(st->fallback);
    }
    return 0;
}

static void
m_free(void *module)
{
    m_clear((PyObject *)module);
}

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "esindexer.convert._scan_c",
    "C version of esindexer.convert.scan.scan_py (see that module).",
    sizeof(module_state),
    methods,
    NULL,
    m_traverse,
    m_clear,
    m_free,
};

PyMODINIT_FUNC
PyInit__scan_c(void)
{
    /* PyModule_Create zero-fills the module state. */
    return PyModule_Create(&moduledef);
}
