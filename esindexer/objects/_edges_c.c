/* esindexer.objects._edges_c: the walk for a record's references in C (the optional twin
 * of esindexer.objects.edges.walk_py).
 *
 * Why: a backfill with documents=objects reads every record once for the graph before
 * any document can be written, and that pass is Python on one core. Finding a record's
 * references with their keys took about 6 us a record in Python, as long as decoding it
 * (docs/performance.md); here it is a loop over the containers.
 *
 * walk(value, key, out) appends (zoid, key) to the list ``out`` for every persistent
 * reference in ``value``, in the order walk_py does: the same stack, pushed and popped
 * the same way, so the two give the same list (tests/objects/test_edges_c.py compares
 * them on generated values).
 *
 * The rules, as walk_py has them: a dict whose "::" is "persistent" and whose "::=>" is an
 * int (not a bool) is a reference, held under the key around it; any other dict gives
 * its values that are containers (dict, list, tuple), each under its own key (a key that
 * is not a str as str() gives it) unless the key starts with "::" (a marker keeps the key
 * around it); a list or a tuple gives its items that are containers, under its key.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *s_marker;     /* "::" */
static PyObject *s_persistent; /* "persistent" */
static PyObject *s_target;     /* "::=>" */

static inline int
is_container(PyObject *v)
{
    return PyDict_Check(v) || PyList_Check(v) || PyTuple_Check(v);
}

/* Push (value, key) onto the stack; 0 or -1. */
static int
push(PyObject *stack, PyObject *value, PyObject *key)
{
    PyObject *pair = PyTuple_Pack(2, value, key);
    if (pair == NULL)
        return -1;
    int rc = PyList_Append(stack, pair);
    Py_DECREF(pair);
    return rc;
}

/* The zoid a dict is a reference to (borrowed), NULL if it is none (-1 in *err on error). */
static PyObject *
ref_target(PyObject *d, int *err)
{
    PyObject *marker = PyDict_GetItemWithError(d, s_marker);
    if (marker == NULL) {
        if (PyErr_Occurred())
            *err = 1;
        return NULL;
    }
    Py_INCREF(marker);  /* (a comparison may run code that changes the dict) */
    int eq = PyObject_RichCompareBool(marker, s_persistent, Py_EQ);
    Py_DECREF(marker);
    if (eq <= 0) {
        if (eq < 0)
            *err = 1;
        return NULL;
    }
    PyObject *target = PyDict_GetItemWithError(d, s_target);
    if (target == NULL) {
        if (PyErr_Occurred())
            *err = 1;
        return NULL;
    }
    return PyLong_Check(target) && !PyBool_Check(target) ? target : NULL;
}

/* The dict's containers, pushed under their keys; 0 or -1. */
static int
push_items(PyObject *stack, PyObject *d, PyObject *key)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (!is_container(v))
            continue;
        PyObject *text;
        if (PyUnicode_Check(k)) {
            text = k;
            Py_INCREF(text);
        }
        else {
            Py_INCREF(k);
            Py_INCREF(v);
            text = PyObject_Str(k);  /* (may run code: the pair is held meanwhile) */
            Py_DECREF(k);
            if (text == NULL) {
                Py_DECREF(v);
                return -1;
            }
            Py_DECREF(v);
            if (!PyUnicode_Check(text)) {
                PyErr_SetString(PyExc_TypeError, "str() of a key did not give a str");
                Py_DECREF(text);
                return -1;
            }
        }
        Py_ssize_t meta = PyUnicode_Tailmatch(text, s_marker, 0, 2, -1);
        if (meta < 0) {
            Py_DECREF(text);
            return -1;
        }
        int rc = push(stack, v, meta ? key : text);
        Py_DECREF(text);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* The sequence's containers, pushed under ``key``; 0 or -1. */
static int
push_sequence(PyObject *stack, PyObject *seq, PyObject *key)
{
    int is_list = PyList_Check(seq);
    for (Py_ssize_t i = 0; i < (is_list ? PyList_GET_SIZE(seq) : PyTuple_GET_SIZE(seq)); i++) {
        PyObject *item = is_list ? PyList_GET_ITEM(seq, i) : PyTuple_GET_ITEM(seq, i);
        if (is_container(item) && push(stack, item, key) < 0)
            return -1;
    }
    return 0;
}

static PyObject *
walk(PyObject *self, PyObject *args)
{
    PyObject *value, *key, *out;
    if (!PyArg_ParseTuple(args, "OOO!:walk", &value, &key, &PyList_Type, &out))
        return NULL;
    PyObject *stack = PyList_New(0);
    if (stack == NULL || push(stack, value, key) < 0)
        goto error;
    while (PyList_GET_SIZE(stack) > 0) {
        Py_ssize_t last = PyList_GET_SIZE(stack) - 1;
        PyObject *pair = PyList_GET_ITEM(stack, last);
        Py_INCREF(pair);
        if (PyList_SetSlice(stack, last, last + 1, NULL) < 0) {
            Py_DECREF(pair);
            goto error;
        }
        PyObject *v = PyTuple_GET_ITEM(pair, 0), *k = PyTuple_GET_ITEM(pair, 1);
        int rc = 0;
        if (PyDict_Check(v)) {
            int err = 0;
            PyObject *target = ref_target(v, &err);
            if (err)
                rc = -1;
            else if (target != NULL) {
                PyObject *edge = PyTuple_Pack(2, target, k);
                rc = edge == NULL ? -1 : PyList_Append(out, edge);
                Py_XDECREF(edge);
            }
            else
                rc = push_items(stack, v, k);
        }
        else if (PyList_Check(v) || PyTuple_Check(v))
            rc = push_sequence(stack, v, k);
        Py_DECREF(pair);
        if (rc < 0)
            goto error;
    }
    Py_DECREF(stack);
    Py_RETURN_NONE;
error:
    Py_XDECREF(stack);
    return NULL;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(value, key, out): append (zoid, key) for each persistent reference in value, as walk_py does"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_edges_c", "A record's references with their keys, in C (esindexer.objects.edges).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__edges_c(void)
{
    s_marker = PyUnicode_InternFromString("::");
    s_persistent = PyUnicode_InternFromString("persistent");
    s_target = PyUnicode_InternFromString("::=>");
    if (s_marker == NULL || s_persistent == NULL || s_target == NULL)
        return NULL;
    return PyModule_Create(&module);
}
