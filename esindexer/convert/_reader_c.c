/* esindexer.convert._reader_c: the two callbacks CPython's C unpickler makes for every
 * record, in C (the optional twin of esindexer/convert/reader.py).
 *
 * Why: the C unpickler calls back into its file object at the start and end of every
 * load (peek, then read of what it consumed) and into find_class for every global a
 * pickle names. From Python, each of those is a C-to-Python call; profiles of small
 * records (issue 13) put these ~10 calls per record at 5-10 % of a conversion. Here
 * they are C functions with exactly the behaviour of their Python twins:
 *
 * - Source: data (bytes) and pos; peek(n) gives everything from pos (the whole record
 *   at once, so the unpickler parses from memory), read(n), readinto(buffer) and
 *   readline() advance pos like a file's;
 * - find_class(module, name): cache[(module, name)] when present, else
 *   fallback(module, name) (esindexer.convert.values.standin, which fills the cache).
 *
 * Two more callbacks come per value rather than per record, and were the largest Python
 * items left in decoding a record (issue 25: ~10 % of the reader's CPU on the benchmark
 * corpus): the unpickler's persistent_load for every reference, and the call of the
 * datetime and date stand-ins for every datetime and date. Each has a C fast path for
 * the usual case and calls its Python twin for everything else, so the result is the
 * twin's by construction (tests/convert/test_reader.py compares them):
 *
 * - persistent_ref(pid): a ZODB reference (8-byte oid, stand-in class) as the dict
 *   esindexer.convert.values.persistent_ref builds; any other pid goes to that function;
 * - stand_in_call(meta, kind, fallback): a method for the __call__ of the datetime
 *   ("datetime") or date ("date") stand-in metaclass. A naive datetime's or a date's
 *   pickled state bytes with ordinary field values become the isoformat() text
 *   datetime.datetime(state) or datetime.date(state) would give; any other call
 *   (an aware datetime, a Python 2 str, a value out of the calendar, keywords) goes to
 *   fallback(cls, *args, **kwargs), the metaclass's Python __call__.
 *
 * These keep their Python objects in static variables (a method of a type cannot reach
 * a module's state); they are set once, when esindexer.convert imports this module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef struct {
    PyObject *cache;    /* dict: (module, name) -> stand-in type */
    PyObject *fallback; /* callable(module, name) */
} module_state;

/* ------------------------------------------------------------------------------------ */
/* Source                                                                               */
/* ------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *data; /* bytes, never NULL */
    Py_ssize_t pos;
} Source;

static PyObject *
source_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Source() takes no arguments");
        return NULL;
    }
    Source *self = (Source *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->data = PyBytes_FromStringAndSize(NULL, 0);
    if (self->data == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->pos = 0;
    return (PyObject *)self;
}

static void
source_dealloc(Source *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->data);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* data[start:end] (the bytes object itself when that is all of it); pos clamped. */
static PyObject *
slice(Source *self, Py_ssize_t start, Py_ssize_t end)
{
    Py_ssize_t len = PyBytes_GET_SIZE(self->data);
    if (start < 0)
        start = 0;
    if (start > len)
        start = len;
    if (end > len)
        end = len;
    if (end < start)
        end = start;
    if (start == 0 && end == len)
        return Py_NewRef(self->data);
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(self->data) + start, end - start);
}

static Py_ssize_t
size_arg(PyObject *const *args, Py_ssize_t nargs, const char *what)
{
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 1 argument", what);
        return -2;
    }
    if (nargs == 0 || args[0] == Py_None)
        return -1;
    Py_ssize_t n = PyLong_AsSsize_t(args[0]);
    if (n == -1 && PyErr_Occurred())
        return -2;
    return n < 0 ? -1 : n;
}

static PyObject *
source_peek(Source *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "peek() takes at most 1 argument");
        return NULL;
    }
    return slice(self, self->pos, PY_SSIZE_T_MAX);
}

static PyObject *
source_read(Source *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n = size_arg(args, nargs, "read");
    if (n == -2)
        return NULL;
    Py_ssize_t len = PyBytes_GET_SIZE(self->data);
    Py_ssize_t start = self->pos < len ? self->pos : len;
    Py_ssize_t end = (n < 0 || n > len - start) ? len : start + n;
    PyObject *out = slice(self, start, end);
    if (out != NULL)
        self->pos = end;
    return out;
}

static PyObject *
source_readinto(Source *self, PyObject *buffer)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    Py_ssize_t len = PyBytes_GET_SIZE(self->data);
    Py_ssize_t start = self->pos < len ? self->pos : len;
    Py_ssize_t size = view.len < len - start ? view.len : len - start;
    memcpy(view.buf, PyBytes_AS_STRING(self->data) + start, (size_t)size);
    PyBuffer_Release(&view);
    self->pos = start + size;
    return PyLong_FromSsize_t(size);
}

static PyObject *
source_readline(Source *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (size_arg(args, nargs, "readline") == -2)
        return NULL;
    Py_ssize_t len = PyBytes_GET_SIZE(self->data);
    Py_ssize_t start = self->pos < len ? self->pos : len;
    const char *base = PyBytes_AS_STRING(self->data);
    const char *nl = memchr(base + start, '\n', (size_t)(len - start));
    Py_ssize_t end = nl == NULL ? len : (nl - base) + 1;
    PyObject *out = slice(self, start, end);
    if (out != NULL)
        self->pos = end;
    return out;
}

static PyObject *
source_get_data(Source *self, void *closure)
{
    return Py_NewRef(self->data);
}

static int
source_set_data(Source *self, PyObject *value, void *closure)
{
    if (value == NULL || !PyBytes_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "Source.data must be bytes");
        return -1;
    }
    Py_SETREF(self->data, Py_NewRef(value));
    return 0;
}

static PyObject *
source_get_pos(Source *self, void *closure)
{
    return PyLong_FromSsize_t(self->pos);
}

static int
source_set_pos(Source *self, PyObject *value, void *closure)
{
    Py_ssize_t pos = value == NULL ? -1 : PyLong_AsSsize_t(value);
    if (pos == -1 && (value == NULL || PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "Source.pos must be an int");
        return -1;
    }
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "Source.pos must not be negative");
        return -1;
    }
    self->pos = pos;
    return 0;
}

static PyMethodDef source_methods[] = {
    {"peek", (PyCFunction)(void (*)(void))source_peek, METH_FASTCALL, "peek(n=0): everything from pos."},
    {"read", (PyCFunction)(void (*)(void))source_read, METH_FASTCALL, "read(n=-1): up to n bytes from pos."},
    {"readinto", (PyCFunction)source_readinto, METH_O, "readinto(buffer): fill buffer from pos."},
    {"readline", (PyCFunction)(void (*)(void))source_readline, METH_FASTCALL, "readline(): up to a newline."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef source_getset[] = {
    {"data", (getter)source_get_data, (setter)source_set_data, "the record (bytes)", NULL},
    {"pos", (getter)source_get_pos, (setter)source_set_pos, "the read position", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot source_slots[] = {
    {Py_tp_new, source_new},
    {Py_tp_dealloc, source_dealloc},
    {Py_tp_methods, source_methods},
    {Py_tp_getset, source_getset},
    {Py_tp_doc, "The file object the C unpickler reads (see esindexer.convert.reader.Source)."},
    {0, NULL},
};

static PyType_Spec source_spec = {
    "esindexer.convert._reader_c.Source",
    sizeof(Source),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    source_slots,
};

/* ------------------------------------------------------------------------------------ */
/* find_class                                                                           */
/* ------------------------------------------------------------------------------------ */

static PyObject *
find_class(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "find_class(module, name) takes 2 arguments");
        return NULL;
    }
    if (st->cache == NULL || st->fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_reader_c.configure() was not called");
        return NULL;
    }
    PyObject *key = PyTuple_Pack(2, args[0], args[1]);
    if (key == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(st->cache, key); /* borrowed */
    Py_DECREF(key);
    if (found != NULL)
        return Py_NewRef(found);
    if (PyErr_Occurred())
        return NULL;
    return PyObject_Vectorcall(st->fallback, args, 2, NULL);
}

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    if (nargs != 2 || !PyDict_CheckExact(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "configure(cache: dict, fallback: callable)");
        return NULL;
    }
    Py_XSETREF(st->cache, Py_NewRef(args[0]));
    Py_XSETREF(st->fallback, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------ */
/* persistent references                                                                */
/* ------------------------------------------------------------------------------------ */

static PyObject *standin_meta;  /* esindexer.convert.model.StandInMeta */
static PyObject *ref_fallback;  /* esindexer.convert.values.persistent_ref */
static PyObject *s_marker, *s_persistent, *s_id, *s_arrow, *s_dotted;

static PyObject *
configure_refs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "configure_refs(standin_meta: type, fallback: callable)");
        return NULL;
    }
    if (s_marker == NULL) {
        s_marker = PyUnicode_InternFromString("::");
        s_persistent = PyUnicode_InternFromString("persistent");
        s_id = PyUnicode_InternFromString("id");
        s_arrow = PyUnicode_InternFromString("::=>");
        s_dotted = PyUnicode_InternFromString("dotted");
        if (!s_marker || !s_persistent || !s_id || !s_arrow || !s_dotted)
            return NULL;
    }
    Py_XSETREF(standin_meta, Py_NewRef(args[0]));
    Py_XSETREF(ref_fallback, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyObject *
persistent_ref(PyObject *module, PyObject *pid)
{
    if (ref_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_reader_c.configure_refs() was not called");
        return NULL;
    }
    /* values.persistent_ref's usual case: (8-byte oid, stand-in class) */
    if (!PyTuple_CheckExact(pid) || PyTuple_GET_SIZE(pid) != 2)
        return PyObject_CallOneArg(ref_fallback, pid);
    PyObject *oid = PyTuple_GET_ITEM(pid, 0), *klass = PyTuple_GET_ITEM(pid, 1);
    if (!PyBytes_CheckExact(oid) || PyBytes_GET_SIZE(oid) != 8 || (PyObject *)Py_TYPE(klass) != standin_meta)
        return PyObject_CallOneArg(ref_fallback, pid);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(oid);
    unsigned long long n = 0;
    for (int i = 0; i < 8; i++)
        n = (n << 8) | p[i];
    PyObject *dotted = PyObject_GetAttr(klass, s_dotted);
    if (dotted == NULL)
        return NULL;
    PyObject *zoid = PyLong_FromUnsignedLongLong(n);
    PyObject *id = zoid == NULL ? NULL : PyList_New(2);
    PyObject *ref = id == NULL ? NULL : PyDict_New();
    if (ref == NULL) {
        Py_DECREF(dotted);
        Py_XDECREF(zoid);
        Py_XDECREF(id);
        return NULL;
    }
    PyList_SET_ITEM(id, 0, Py_NewRef(zoid));
    PyList_SET_ITEM(id, 1, dotted); /* steals */
    /* the key order of the Python twin's dict: "::", "id", "::=>" */
    int failed = PyDict_SetItem(ref, s_marker, s_persistent) < 0 || PyDict_SetItem(ref, s_id, id) < 0 ||
                 PyDict_SetItem(ref, s_arrow, zoid) < 0;
    Py_DECREF(id);
    Py_DECREF(zoid);
    if (failed) {
        Py_DECREF(ref);
        return NULL;
    }
    return ref;
}

/* ------------------------------------------------------------------------------------ */
/* datetime and date stand-ins                                                          */
/* ------------------------------------------------------------------------------------ */

static PyObject *datetime_fallback; /* constructors._datetime_call(cls, *args, **kwargs) */
static PyObject *date_fallback;     /* constructors._date_call(cls, *args, **kwargs) */

static int
days_in_month(int year, int month)
{
    static const int days[13] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month == 2 && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))
        return 29;
    return days[month];
}

/* `width` decimal digits of 0 <= value < 10**width, zero-padded, at buf[*n] */
static void
digits(char *buf, Py_ssize_t *n, long value, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        buf[*n + i] = (char)('0' + value % 10);
        value /= 10;
    }
    *n += width;
}

/* The isoformat() text of a naive datetime's (10 bytes) or a date's (4 bytes) pickled
 * state, or NULL without an exception where a field is out of the calendar (datetime's
 * pickle path does not check them: the Python twin decides what such a value gives). */
static PyObject *
iso_text(const unsigned char *p, Py_ssize_t size)
{
    int year = (p[0] << 8) | p[1];
    /* datetime keeps fold in the month byte's high bit; isoformat() does not show it */
    int month = size == 10 ? (p[2] & 0x7F) : p[2];
    int day = p[3];
    if (year < 1 || year > 9999 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month))
        return NULL;
    /* digits written by hand: snprintf's format parsing was a visible share of a date */
    char buf[32];
    Py_ssize_t n = 0;
    digits(buf, &n, year, 4);
    buf[n++] = '-';
    digits(buf, &n, month, 2);
    buf[n++] = '-';
    digits(buf, &n, day, 2);
    if (size == 10) {
        int hour = p[4], minute = p[5], second = p[6];
        long us = ((long)p[7] << 16) | ((long)p[8] << 8) | p[9];
        if (hour > 23 || minute > 59 || second > 59 || us > 999999)
            return NULL;
        buf[n++] = 'T';
        digits(buf, &n, hour, 2);
        buf[n++] = ':';
        digits(buf, &n, minute, 2);
        buf[n++] = ':';
        digits(buf, &n, second, 2);
        if (us) {
            buf[n++] = '.';
            digits(buf, &n, us, 6);
        }
    }
    return PyUnicode_FromStringAndSize(buf, n);
}

/* cls(*args, **kwargs) for a stand-in whose metaclass's __call__ this is */
static PyObject *
call_or_fallback(PyObject *fallback, Py_ssize_t size, PyObject *cls, PyObject *const *args,
                 Py_ssize_t nargs, PyObject *kwnames)
{
    if (fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_reader_c.stand_in_call() was not called");
        return NULL;
    }
    if (nargs == 1 && kwnames == NULL && PyBytes_CheckExact(args[0]) && PyBytes_GET_SIZE(args[0]) == size) {
        PyObject *text = iso_text((const unsigned char *)PyBytes_AS_STRING(args[0]), size);
        if (text != NULL || PyErr_Occurred())
            return text;
    }
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *small[8];
    PyObject **all = nargs + nkw + 1 <= 8 ? small : PyMem_New(PyObject *, nargs + nkw + 1);
    if (all == NULL)
        return PyErr_NoMemory();
    all[0] = cls;
    memcpy(all + 1, args, (size_t)(nargs + nkw) * sizeof(PyObject *));
    PyObject *result = PyObject_Vectorcall(fallback, all, (size_t)nargs + 1, kwnames);
    if (all != small)
        PyMem_Free(all);
    return result;
}

static PyObject *
datetime_call(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return call_or_fallback(datetime_fallback, 10, cls, args, nargs, kwnames);
}

static PyObject *
date_call(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return call_or_fallback(date_fallback, 4, cls, args, nargs, kwnames);
}

static PyMethodDef datetime_call_def = {
    "__call__", (PyCFunction)(void (*)(void))datetime_call, METH_FASTCALL | METH_KEYWORDS,
    "A naive datetime's state bytes as isoformat() text; anything else as the Python __call__."};
static PyMethodDef date_call_def = {
    "__call__", (PyCFunction)(void (*)(void))date_call, METH_FASTCALL | METH_KEYWORDS,
    "A date's state bytes as isoformat() text; anything else as the Python __call__."};

static PyObject *
stand_in_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const char *kind = nargs == 3 && PyUnicode_Check(args[1]) ? PyUnicode_AsUTF8(args[1]) : NULL;
    if (kind == NULL || !PyType_Check(args[0]) || !PyType_IsSubtype((PyTypeObject *)args[0], &PyType_Type) ||
        !PyCallable_Check(args[2]) || (strcmp(kind, "datetime") != 0 && strcmp(kind, "date") != 0)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "stand_in_call(metaclass, 'datetime' | 'date', fallback)");
        return NULL;
    }
    int is_datetime = strcmp(kind, "datetime") == 0;
    PyObject **slot = is_datetime ? &datetime_fallback : &date_fallback;
    Py_XSETREF(*slot, Py_NewRef(args[2]));
    return PyDescr_NewMethod((PyTypeObject *)args[0], is_datetime ? &datetime_call_def : &date_call_def);
}

static PyMethodDef methods[] = {
    {"configure_refs", (PyCFunction)(void (*)(void))configure_refs, METH_FASTCALL,
     "configure_refs(standin_meta, fallback): the stand-in metaclass and values.persistent_ref."},
    {"persistent_ref", (PyCFunction)persistent_ref, METH_O,
     "persistent_ref(pid): values.persistent_ref, its usual case in C."},
    {"stand_in_call", (PyCFunction)(void (*)(void))stand_in_call, METH_FASTCALL,
     "stand_in_call(metaclass, 'datetime' | 'date', fallback): a __call__ method for the metaclass."},
    {"find_class", (PyCFunction)(void (*)(void))find_class, METH_FASTCALL,
     "find_class(module, name): cache[(module, name)], else fallback(module, name)."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(cache, fallback): the stand-in cache (a dict) and the function that fills it."},
    {NULL, NULL, 0, NULL},
};

static int
m_exec(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &source_spec, NULL);
    if (type == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "Source", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    Py_DECREF(type);
    return 0;
}

static int
m_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    if (st != NULL) {
        Py_VISIT(st->cache);
        Py_VISIT(st->fallback);
    }
    return 0;
}

static int
m_clear(PyObject *module)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    if (st != NULL) {
        Py_CLEAR(st->cache);
        Py_CLEAR(st->fallback);
    }
    return 0;
}

static void
m_free(void *module)
{
    m_clear((PyObject *)module);
}

static PyModuleDef_Slot m_slots[] = {
    {Py_mod_exec, m_exec},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "esindexer.convert._reader_c",
    "C twins of esindexer.convert.reader.Source, values.standin's cache lookup, values.persistent_ref and the datetime and date stand-ins' calls.",
    sizeof(module_state),
    methods,
    m_slots,
    m_traverse,
    m_clear,
    m_free,
};

PyMODINIT_FUNC
PyInit__reader_c(void)
{
    return PyModuleDef_Init(&moduledef);
}
