/* C version of esindexer.convert.scan.scan_py: the pre-flight walk over a pickle's opcodes.
 *
 * Why this exists: the pure-Python scan costs about as much as unpickling plus orjson
 * together (docs/performance.md, "Pickle to JSON"); the same walk in C is ~20x cheaper.
 * It is a line-by-line port of scan_py, written for this project, and must stay exactly
 * equivalent to it: same return offset, same `kinds` entries, same `state`, and an
 * UnsafePickle in the same cases (tests/convert/test_scan.py checks this differentially).
 * When in doubt, read scan_py: it is the reference and documents the meaning of every
 * field, including the nesting depths kept per stack slot; the comments here only
 * explain what is particular to the C version.
 *
 * Safety: every read is checked against the buffer length first. Positions are kept as
 * Py_ssize_t and lengths read from the pickle (up to 2**64-1) are compared with the bytes
 * left before they are added, so nothing can overflow or point past the end. The buffer
 * is an exact `bytes` object, which cannot change while we hold the GIL. The depth stack
 * holds one byte per slot (depths never exceed max_depth < 255: a deeper one raises
 * before it is stored) and grows on the heap past a small inline buffer; each push
 * consumes at least one byte of the pickle, so it never exceeds the record's size.
 *
 * Rare things are delegated rather than ported, which keeps parity trivial:
 * - arguments of unexpected types (not bytes/int/dict/[int, int, int]), keywords, a
 *   negative start: the whole call goes to scan_py;
 * - text PUT and GET (protocol 0/1 only; ZODB writes protocol 3), whose integer syntax is
 *   Python's int(), a `kinds` value that is not a machine-size int, or an expansion sum
 *   that would overflow 64 bits: scan_py is *resumed* at that opcode with the current
 *   flags, expansion, memo count, kinds, depth stack and marks. The scan is a pure state
 *   machine over those at every opcode boundary, so resuming there gives exactly what
 *   scan_py would have given from the start.
 *
 * No global state: the UnsafePickle class, scan_py and MAX_DEPTH live in the module
 * state, set by configure() when esindexer.convert.scan imports this module.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject *unsafe;   /* esindexer.convert.scan.UnsafePickle */
    PyObject *fallback; /* esindexer.convert.scan.scan_py */
    int max_depth;      /* esindexer.convert.scan.MAX_DEPTH; 0 before configure() */
} module_state;

/* Same constant as _SMALL in esindexer/convert/scan.py. */
#define SMALL 64

/* Fixed-size opcodes that just push a value: 2 * total size + depth pushed (scan_py's
 * _PUSH); 0 = handled in the switch below. Read-only, so not "state". */
static const unsigned char PUSH_SIZE[256] = {
    ['N'] = 2, [0x88] = 2, [0x89] = 2, [0x97] = 2,
    ['K'] = 4, [0x82] = 4,
    ['M'] = 6, [0x83] = 6,
    ['J'] = 10, [0x84] = 10,
    ['G'] = 18,
    [')'] = 3, [']'] = 3, ['}'] = 3, [0x8F] = 3,
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

/* scan_py's `stack` (depth of each slot) and `marks` (stack length at each MARK), with
 * small inline buffers so that most records never allocate. */
typedef struct {
    unsigned char *d;
    Py_ssize_t len, cap;
    Py_ssize_t *marks;
    Py_ssize_t nmarks, mcap;
    unsigned char dbuf[256];
    Py_ssize_t mbuf[32];
} Stack;

static void
stack_init(Stack *s)
{
    s->d = s->dbuf;
    s->len = 0;
    s->cap = (Py_ssize_t)sizeof(s->dbuf);
    s->marks = s->mbuf;
    s->nmarks = 0;
    s->mcap = (Py_ssize_t)(sizeof(s->mbuf) / sizeof(s->mbuf[0]));
}

static void
stack_free(Stack *s)
{
    if (s->d != s->dbuf)
        PyMem_Free(s->d);
    if (s->marks != s->mbuf)
        PyMem_Free(s->marks);
}

static int
stack_grow(Stack *s)
{
    if (s->cap > PY_SSIZE_T_MAX / 2) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = s->cap * 2;
    unsigned char *d;
    if (s->d == s->dbuf) {
        d = PyMem_Malloc((size_t)cap);
        if (d != NULL)
            memcpy(d, s->dbuf, (size_t)s->len);
    }
    else {
        d = PyMem_Realloc(s->d, (size_t)cap);
    }
    if (d == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    s->d = d;
    s->cap = cap;
    return 0;
}

static int
push_mark(Stack *s)
{
    if (s->nmarks == s->mcap) {
        if (s->mcap > (Py_ssize_t)(PY_SSIZE_T_MAX / sizeof(Py_ssize_t) / 2)) {
            PyErr_NoMemory();
            return -1;
        }
        Py_ssize_t cap = s->mcap * 2;
        Py_ssize_t *m;
        if (s->marks == s->mbuf) {
            m = PyMem_Malloc((size_t)cap * sizeof(Py_ssize_t));
            if (m != NULL)
                memcpy(m, s->mbuf, (size_t)s->nmarks * sizeof(Py_ssize_t));
        }
        else {
            m = PyMem_Realloc(s->marks, (size_t)cap * sizeof(Py_ssize_t));
        }
        if (m == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->marks = m;
        s->mcap = cap;
    }
    s->marks[s->nmarks++] = s->len;
    return 0;
}

/* The deepest of d[from:len], or 0 when it is empty. */
static inline int
max_from(const unsigned char *d, Py_ssize_t from, Py_ssize_t len)
{
    int m = 0;
    for (Py_ssize_t x = from; x < len; x++)
        if (d[x] > m)
            m = d[x];
    return m;
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
 * and the depth of the value, -1 - k for a container (0 for a scalar), in *depth.
 * Returns 0, -1 on error, or 1 when the value is not a machine-size int or the sum would
 * overflow: the caller then resumes scan_py at this opcode (nothing changed yet). */
static int
do_get(PyObject *kinds, unsigned long long key, long long *flags, long long *expansion,
       long long *depth)
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
    *depth = kv < 0 ? -1 - kv : 0; /* no overflow: -1 - LLONG_MIN == LLONG_MAX */
    return 0;
}

/* Call scan_py(data, i, kinds, [flags, expansion, memos], stack, marks) and copy its
 * state back into `state` (scan_py writes the state only on success, as here). */
static PyObject *
resume(module_state *st, PyObject *data, Py_ssize_t i, PyObject *kinds, PyObject *state,
       long long flags, long long expansion, long long memos, const Stack *s)
{
    PyObject *sub = NULL, *start = NULL, *depths = NULL, *marks = NULL, *result = NULL;
    sub = Py_BuildValue("[LLL]", flags, expansion, memos);
    if (sub == NULL)
        goto done;
    start = PyLong_FromSsize_t(i);
    if (start == NULL)
        goto done;
    depths = PyList_New(s->len);
    if (depths == NULL)
        goto done;
    for (Py_ssize_t x = 0; x < s->len; x++) {
        PyObject *item = PyLong_FromLong(s->d[x]);
        if (item == NULL)
            goto done;
        PyList_SET_ITEM(depths, x, item);
    }
    marks = PyList_New(s->nmarks);
    if (marks == NULL)
        goto done;
    for (Py_ssize_t x = 0; x < s->nmarks; x++) {
        PyObject *item = PyLong_FromSsize_t(s->marks[x]);
        if (item == NULL)
            goto done;
        PyList_SET_ITEM(marks, x, item);
    }
    PyObject *args[6] = {data, start, kinds, sub, depths, marks};
    result = PyObject_Vectorcall(st->fallback, args, 6, NULL);
    if (result != NULL) {
        if (!PyList_Check(sub) || PyList_GET_SIZE(sub) != 3) {
            PyErr_SetString(PyExc_RuntimeError, "scan_py left an unexpected state");
            Py_CLEAR(result);
        }
        else {
            for (Py_ssize_t x = 0; x < 3; x++) {
                PyObject *item = PyList_GET_ITEM(sub, x);
                Py_INCREF(item);
                if (PyList_SetItem(state, x, item) < 0) { /* steals item */
                    Py_CLEAR(result);
                    break;
                }
            }
        }
    }
done:
    Py_XDECREF(sub);
    Py_XDECREF(start);
    Py_XDECREF(depths);
    Py_XDECREF(marks);
    return result;
}

/* Store the final state; return the offset after STOP. */
static PyObject *
finish(PyObject *state, Py_ssize_t end, long long flags, long long expansion,
       long long memos)
{
    long long values[3] = {flags, expansion, memos};
    for (Py_ssize_t x = 0; x < 3; x++) {
        PyObject *v = PyLong_FromLongLong(values[x]);
        if (v == NULL)
            return NULL;
        if (PyList_SetItem(state, x, v) < 0) /* steals v */
            return NULL;
    }
    return PyLong_FromSsize_t(end);
}

/* The scan proper; `s` is the caller's (empty) depth stack, freed by the caller. The
 * hot part of the stack lives in locals: `dep` (s->d), `len` (s->len), `cap` (s->cap) and
 * `fence` (the last MARK, or 0: the C unpickler never pops below it); s->len is synced
 * before anything that reads or grows *s. */
static PyObject *
scan_impl(module_state *st, PyObject *data, Py_ssize_t i, PyObject *kinds,
          PyObject *state, long long flags, long long expansion, long long memos,
          Stack *s)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    const Py_ssize_t n = PyBytes_GET_SIZE(data);
    /* a pickle cannot hold more memo entries than it has bytes */
    const uint64_t limit = (uint64_t)n + 256;
    const int max_depth = st->max_depth;
    unsigned char *dep = s->d;
    Py_ssize_t len = s->len, cap = s->cap;
    Py_ssize_t fence = s->nmarks ? s->marks[s->nmarks - 1] : 0;
    uint64_t size = 0; /* of the scalar that just ended, for the `scalar:` block */
    uint64_t idx;
    const unsigned char *q, *q2;
    unsigned char op;
    int r, d, a, c;
    long long gd;
    Py_ssize_t mark;

#define PUSH(v)                                                                         \
    do {                                                                                \
        if (len == cap) {                                                               \
            s->len = len;                                                               \
            if (stack_grow(s) < 0)                                                      \
                return NULL;                                                            \
            dep = s->d;                                                                 \
            cap = s->cap;                                                               \
        }                                                                               \
        dep[len++] = (unsigned char)(v);                                                \
    } while (0)
#define POP_MARK()                                                                      \
    do {                                                                                \
        mark = s->marks[--s->nmarks];                                                   \
        fence = s->nmarks ? s->marks[s->nmarks - 1] : 0;                                \
    } while (0)
#define RESUME() (s->len = len, resume(st, data, i, kinds, state, flags, expansion, memos, s))

    for (;;) {
        if (i >= n)
            goto truncated;
        op = p[i];
        if (PUSH_SIZE[op]) {
            PUSH(PUSH_SIZE[op] & 1);
            i += PUSH_SIZE[op] >> 1;
            continue;
        }
        switch (op) {
        case 0x71: /* BINPUT not right after a scalar: assume a container */
            if (n - i < 2)
                goto truncated;
            if (len <= fence)
                goto underflow;
            if (kinds_set(kinds, p[i + 1], -1 - (long long)dep[len - 1]) < 0)
                return NULL;
            memos = -1;
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
            r = do_get(kinds, p[i + 1], &flags, &expansion, &gd);
            if (r < 0)
                return NULL;
            if (r > 0)
                return RESUME();
            if (gd > max_depth)
                goto too_deep;
            PUSH(gd);
            i += 2;
            continue;
        case 0x28: /* MARK */
            s->len = len;
            if (push_mark(s) < 0)
                return NULL;
            fence = len;
            i += 1;
            continue;
        case 0x75: /* SETITEMS */
        case 0x65: /* APPENDS */
        case 0x90: /* ADDITEMS */
            if (s->nmarks == 0)
                goto underflow;
            POP_MARK();
            if (mark <= fence)
                goto underflow;
            if (len > mark) {
                d = max_from(dep, mark, len) + 1;
                len = mark;
                if (d > dep[mark - 1]) {
                    if (d > max_depth)
                        goto too_deep;
                    dep[mark - 1] = (unsigned char)d;
                }
            }
            i += 1;
            continue;
        case 0x73: /* SETITEM */
            if (len - 2 <= fence)
                goto underflow;
            a = dep[len - 1];
            c = dep[len - 2];
            d = (a > c ? a : c) + 1;
            len -= 2;
            if (d > dep[len - 1]) {
                if (d > max_depth)
                    goto too_deep;
                dep[len - 1] = (unsigned char)d;
            }
            i += 1;
            continue;
        case 0x61: /* APPEND */
        case 0x62: /* BUILD */
            /* APPEND needs an item above its list; BUILD fails like the unpickler */
            if (op == 0x61 ? len - 1 <= fence : len - 2 < fence)
                goto underflow;
            d = dep[--len] + 1;
            if (d > dep[len - 1]) {
                if (d > max_depth)
                    goto too_deep;
                dep[len - 1] = (unsigned char)d;
            }
            i += 1;
            continue;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: /* TUPLE3 */
        {
            Py_ssize_t count = op - 0x84;
            if (len - count < fence)
                goto underflow;
            d = max_from(dep, len - count, len) + 1;
            if (d > max_depth)
                goto too_deep;
            len -= count;
            dep[len++] = (unsigned char)d;
            i += 1;
            continue;
        }
        case 0x74: /* TUPLE */
        case 0x6C: /* LIST */
        case 0x64: /* DICT */
        case 0x91: /* FROZENSET */
            if (s->nmarks == 0)
                goto underflow;
            POP_MARK();
            d = max_from(dep, mark, len) + 1;
            if (d > max_depth)
                goto too_deep;
            len = mark;
            PUSH(d);
            i += 1;
            continue;
        case 0x52: /* REDUCE */
        case 0x81: /* NEWOBJ */
            if (len - 2 < fence)
                goto underflow;
            a = dep[--len];
            c = dep[len - 1];
            d = (a > c ? a : c) + 1;
            if (d > max_depth)
                goto too_deep;
            dep[len - 1] = (unsigned char)d;
            i += 1;
            continue;
        case 0x51: /* BINPERSID */
            if (len <= fence)
                goto underflow;
            d = dep[len - 1] + 1;
            if (d > max_depth)
                goto too_deep;
            dep[len - 1] = (unsigned char)d;
            i += 1;
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
                int32_t slen = (int32_t)rd_u32(p + i + 1);
                if (slen < 0) {
                    PyErr_Format(st->unsafe, "negative length at offset %zd", i);
                    return NULL;
                }
                size = (uint64_t)slen;
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
        case 0x56: /* UNICODE: one line */
            q = memchr(p + i + 1, '\n', (size_t)(n - i - 1));
            if (q == NULL)
                goto no_newline;
            size = (uint64_t)((q + 1 - p) - i);
            i = q + 1 - p;
            goto scalar;
        case 0x80: /* PROTO */
            i += 2;
            continue;
        case 0x95: /* FRAME */
            i += 9;
            continue;
        case 0x50: /* PERSID: one line, a reference one level deep */
            q = memchr(p + i + 1, '\n', (size_t)(n - i - 1));
            if (q == NULL)
                goto no_newline;
            PUSH(1);
            i = q + 1 - p;
            continue;
        case 0x69: /* INST: two lines, then the arguments above the MARK */
        case 0x6F: /* OBJ: class and arguments above the MARK */
        {
            Py_ssize_t j = i + 1;
            if (op == 0x69) {
                q = memchr(p + i + 1, '\n', (size_t)(n - i - 1));
                if (q == NULL)
                    goto no_newline;
                q2 = memchr(q + 1, '\n', (size_t)(p + n - (q + 1)));
                if (q2 == NULL)
                    goto no_newline;
                j = q2 + 1 - p;
            }
            if (s->nmarks == 0)
                goto underflow;
            POP_MARK();
            if (op == 0x69) {
                d = max_from(dep, mark, len) + 2;
            }
            else {
                if (len <= mark)
                    goto underflow;
                c = dep[mark];
                d = max_from(dep, mark + 1, len) + 1;
                d = (c > d ? c : d) + 1;
            }
            if (d > max_depth)
                goto too_deep;
            len = mark;
            PUSH(d);
            i = j;
            continue;
        }
        case 0x92: /* NEWOBJ_EX: class, args, kwargs; (args, kwargs) is a level */
        {
            if (len - 3 < fence)
                goto underflow;
            int kw = dep[--len];
            a = dep[--len];
            c = dep[len - 1];
            d = (a > kw ? a : kw) + 1;
            d = (c > d ? c : d) + 1;
            if (d > max_depth)
                goto too_deep;
            dep[len - 1] = (unsigned char)d;
            i += 1;
            continue;
        }
        case 0x93: /* STACK_GLOBAL: module and name -> a global */
            if (len - 2 < fence)
                goto underflow;
            len -= 1;
            dep[len - 1] = 0;
            i += 1;
            continue;
        case 0x72: /* LONG_BINPUT not right after a scalar */
            if (n - i < 5)
                goto truncated;
            idx = rd_u32(p + i + 1);
            if (idx > limit)
                goto memo_too_big;
            if (len <= fence)
                goto underflow;
            if (kinds_set(kinds, idx, -1 - (long long)dep[len - 1]) < 0)
                return NULL;
            memos = -1;
            i += 5;
            continue;
        case 0x70: /* PUT (text) */
        case 0x67: /* GET (text): int() syntax, protocol 0/1 only -> scan_py */
            return RESUME();
        case 0x94: /* MEMOIZE not right after a scalar: the next index */
            if (len <= fence)
                goto underflow;
            if (memos < 0)
                goto mixed;
            if (kinds_set(kinds, (unsigned long long)memos, -1 - (long long)dep[len - 1]) < 0)
                return NULL;
            memos += 1;
            flags |= 2;
            i += 1;
            continue;
        case 0x6A: /* LONG_BINGET */
            if (n - i < 5)
                goto truncated;
            r = do_get(kinds, rd_u32(p + i + 1), &flags, &expansion, &gd);
            if (r < 0)
                return NULL;
            if (r > 0)
                return RESUME();
            if (gd > max_depth)
                goto too_deep;
            PUSH(gd);
            i += 5;
            continue;
        case 0x30: /* POP: the top item, or the MARK right above it */
            if (s->nmarks > 0 && fence == len)
                POP_MARK();
            else if (len <= fence)
                goto underflow;
            else
                len--;
            i += 1;
            continue;
        case 0x31: /* POP_MARK */
            if (s->nmarks == 0)
                goto underflow;
            POP_MARK();
            len = mark;
            i += 1;
            continue;
        case 0x32: /* DUP */
            if (len <= fence)
                goto underflow;
            d = dep[len - 1];
            PUSH(d);
            flags |= 1;
            i += 1;
            continue;
        case 0x98: /* READONLY_BUFFER */
            if (len <= fence)
                goto underflow;
            i += 1;
            continue;
        case 0x2E: /* STOP */
            if (len <= fence)
                goto underflow;
            return finish(state, i + 1, flags, expansion, memos);
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
        PUSH(0);
        op = p[i];
        if (op == 0x71) {
            if (n - i < 2)
                goto truncated;
            if (size > SMALL && kinds_set(kinds, p[i + 1], (long long)size) < 0)
                return NULL;
            memos = -1;
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
            memos = -1;
            i += 5;
        }
        else if (op == 0x94) {
            if (memos < 0)
                goto mixed;
            if (size > SMALL)
                flags |= 2; /* index not tracked: treat later GETs conservatively */
            memos += 1;
            i += 1;
        }
    }
#undef PUSH
#undef POP_MARK
#undef RESUME

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
underflow:
    PyErr_Format(st->unsafe, "stack underflow at offset %zd", i);
    return NULL;
too_deep:
    PyErr_Format(st->unsafe, "nesting deeper than %d levels at offset %zd", max_depth, i);
    return NULL;
mixed:
    PyErr_Format(st->unsafe, "MEMOIZE after PUT opcodes at offset %zd", i);
    return NULL;
}

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    if (st->fallback == NULL || st->unsafe == NULL || st->max_depth <= 0) {
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
        PyList_GET_SIZE(state) != 3 || !PyLong_CheckExact(PyList_GET_ITEM(state, 0)) ||
        !PyLong_CheckExact(PyList_GET_ITEM(state, 1)) ||
        !PyLong_CheckExact(PyList_GET_ITEM(state, 2)))
        return PyObject_Vectorcall(st->fallback, args, nargsf, NULL);

    long long values[3];
    for (Py_ssize_t x = 0; x < 3; x++) {
        int overflow;
        values[x] = PyLong_AsLongLongAndOverflow(PyList_GET_ITEM(state, x), &overflow);
        if (overflow)
            return PyObject_Vectorcall(st->fallback, args, nargsf, NULL);
    }
    Py_ssize_t i = PyLong_AsSsize_t(start_obj);
    if (i == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return PyObject_Vectorcall(st->fallback, args, nargsf, NULL);
    }
    if (i < 0) /* Python's negative indexing: not worth porting */
        return PyObject_Vectorcall(st->fallback, args, nargsf, NULL);

    Stack s;
    stack_init(&s);
    PyObject *result = scan_impl(st, data, i, kinds, state, values[0], values[1],
                                 values[2], &s);
    stack_free(&s);
    return result;
}

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(unsafe_pickle_class, scan_py, max_depth)");
        return NULL;
    }
    long max_depth = PyLong_AsLong(args[2]);
    if (max_depth == -1 && PyErr_Occurred())
        return NULL;
    if (max_depth < 1 || max_depth > 254) { /* depths are stored in one byte */
        PyErr_SetString(PyExc_ValueError, "max_depth must be between 1 and 254");
        return NULL;
    }
    module_state *st = (module_state *)PyModule_GetState(module);
    Py_INCREF(args[0]);
    Py_XSETREF(st->unsafe, args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(st->fallback, args[1]);
    st->max_depth = (int)max_depth;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL | METH_KEYWORDS,
     "scan(data, start, kinds, state) -> offset after STOP; the C version of "
     "esindexer.convert.scan.scan_py, with identical results."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(UnsafePickle, scan_py, MAX_DEPTH): the exception to raise, the reference "
     "scan to delegate rare cases to, and the deepest nesting accepted."},
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
