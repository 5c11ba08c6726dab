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

static PyMethodDef methods[] = {
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
    "C twins of esindexer.convert.reader.Source and values.standin's cache lookup.",
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
