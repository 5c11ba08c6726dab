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
#include <stdio.h>
#include <string.h>

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

/* The walk itself: (zoid, key) appended to the list ``out``; 0 or -1. */
static int
walk_into(PyObject *value, PyObject *key, PyObject *out)
{
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
    return 0;
error:
    Py_XDECREF(stack);
    return -1;
}

static PyObject *
walk(PyObject *self, PyObject *args)
{
    PyObject *value, *key, *out;
    if (!PyArg_ParseTuple(args, "OOO!:walk", &value, &key, &PyList_Type, &out))
        return NULL;
    if (walk_into(value, key, out) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- fold_value: the walk of esindexer.objects.fold._Folder.value, in C ---------------- */

/* The leaves fold never walks: exactly str, int, float, bool, None (not their subclasses). */
static inline int
is_leaf(PyObject *x)
{
    return PyUnicode_CheckExact(x) || PyLong_CheckExact(x) || PyFloat_CheckExact(x) || PyBool_Check(x)
        || x == Py_None;
}

typedef struct {
    PyObject *parts;   /* dict: zoid -> (class name, state) */
    PyObject *used;    /* set of the zoids folded so far */
    PyObject *folded;  /* list: the zoids folded, in order */
    PyObject *refs;    /* list: the references left as references */
    int decoded;       /* tuples are walked as the lists their JSON is */
    PyObject *part;    /* part(class_name, state): a part folded (Python) */
} Folder;

static PyObject *fold_one(Folder *f, PyObject *v);

/* ``x`` folded: itself (new reference) for a leaf, else fold_one. */
static inline PyObject *
fold_item(Folder *f, PyObject *x)
{
    if (is_leaf(x)) {
        Py_INCREF(x);
        return x;
    }
    return fold_one(f, x);
}

static PyObject *
fold_reference(Folder *f, PyObject *v, PyObject *target)
{
    int in_parts = PyDict_Contains(f->parts, target);
    if (in_parts < 0)
        return NULL;
    int in_used = in_parts ? PySet_Contains(f->used, target) : 1;
    if (in_used < 0)
        return NULL;
    if (in_parts && !in_used) {
        if (PySet_Add(f->used, target) < 0 || PyList_Append(f->folded, target) < 0)
            return NULL;
        PyObject *entry = PyDict_GetItemWithError(f->parts, target);
        if (entry == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, target);
            return NULL;
        }
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2) {
            PyErr_SetString(PyExc_ValueError, "a part is not a (class name, state) pair");
            return NULL;
        }
        Py_INCREF(entry);  /* (held while part() runs Python code) */
        PyObject *folded = PyObject_CallFunctionObjArgs(f->part, PyTuple_GET_ITEM(entry, 0), PyTuple_GET_ITEM(entry, 1),
                                                        NULL);
        Py_DECREF(entry);
        return folded;
    }
    if (PyList_Append(f->refs, target) < 0)
        return NULL;
    Py_INCREF(v);
    return v;
}

static PyObject *
fold_dict(Folder *f, PyObject *v)
{
    int exact = PyDict_CheckExact(v);
    PyObject *changed = exact ? NULL : PyDict_New();  /* a subclass: the plain dict its JSON reads back as */
    if (!exact && changed == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *k, *x;
    while (PyDict_Next(v, &pos, &k, &x)) {
        if (exact && is_leaf(x))
            continue;
        Py_INCREF(k);
        Py_INCREF(x);
        PyObject *y = fold_item(f, x);
        int rc = 0;
        if (y == NULL)
            rc = -1;
        else if (!exact)
            rc = PyDict_SetItem(changed, k, y);
        else if (y != x) {
            if (changed == NULL && (changed = PyDict_Copy(v)) == NULL)
                rc = -1;
            else
                rc = PyDict_SetItem(changed, k, y);
        }
        Py_XDECREF(y);
        Py_DECREF(k);
        Py_DECREF(x);
        if (rc < 0) {
            Py_XDECREF(changed);
            return NULL;
        }
    }
    if (changed != NULL)
        return changed;
    Py_INCREF(v);
    return v;
}

/* An exact list: itself when no item changes, else a copy; a list subclass or (decoded) a
 * tuple: always a new list. */
static PyObject *
fold_sequence(Folder *f, PyObject *v, int copy_always)
{
    PyObject *items = PySequence_Fast(v, "not a sequence");
    if (items == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    PyObject *copy = copy_always ? PyList_New(n) : NULL;
    if (copy_always && copy == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < n && i < PySequence_Fast_GET_SIZE(items); i++) {
        PyObject *x = PySequence_Fast_GET_ITEM(items, i);
        if (!copy_always && is_leaf(x))
            continue;
        Py_INCREF(x);
        PyObject *y = fold_item(f, x);
        Py_DECREF(x);
        if (y == NULL)
            goto error;
        if (copy_always) {
            PyList_SET_ITEM(copy, i, y);  /* (steals y) */
            continue;
        }
        if (y == x) {
            Py_DECREF(y);
            continue;
        }
        if (copy == NULL && (copy = PyList_GetSlice(v, 0, PyList_GET_SIZE(v))) == NULL) {
            Py_DECREF(y);
            goto error;
        }
        if (PyList_SetItem(copy, i, y) < 0)  /* (steals y) */
            goto error;
    }
    Py_DECREF(items);
    if (copy != NULL)
        return copy;
    Py_INCREF(v);
    return v;
error:
    Py_XDECREF(copy);
    Py_DECREF(items);
    return NULL;
}

static PyObject *
fold_one(Folder *f, PyObject *v)
{
    if (Py_EnterRecursiveCall(" while folding an object's parts"))
        return NULL;
    PyObject *out;
    if (PyDict_Check(v)) {
        int err = 0;
        PyObject *target = ref_target(v, &err);
        if (err)
            out = NULL;
        else if (target != NULL) {
            Py_INCREF(target);
            out = fold_reference(f, v, target);
            Py_DECREF(target);
        }
        else
            out = fold_dict(f, v);
    }
    else if (PyList_CheckExact(v))
        out = fold_sequence(f, v, 0);
    else if (PyList_Check(v) || (f->decoded && PyTuple_Check(v)))
        out = fold_sequence(f, v, 1);
    else {
        Py_INCREF(v);
        out = v;
    }
    Py_LeaveRecursiveCall();
    return out;
}

/* fold_value(value, parts, used, folded, refs, decoded, part): _Folder.value's result. */
static PyObject *
fold_value(PyObject *self, PyObject *args)
{
    Folder f;
    PyObject *value;
    if (!PyArg_ParseTuple(args, "OO!O!O!O!pO:fold_value", &value, &PyDict_Type, &f.parts, &PySet_Type, &f.used,
                          &PyList_Type, &f.folded, &PyList_Type, &f.refs, &f.decoded, &f.part))
        return NULL;
    return fold_item(&f, value);
}

/* ---- copy_rows: a backfill batch's nodes and edges as COPY text (CSV) ------------------ */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int
buf_reserve(Buf *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int
buf_put(Buf *b, const char *s, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

/* An int column: its decimal digits. 1: not an int within 64 bits (the caller gives up). */
static int
buf_int(Buf *b, PyObject *v)
{
    if (!PyLong_CheckExact(v))
        return 1;
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (n == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 1;
    }
    char digits[32];
    int size = snprintf(digits, sizeof digits, "%lld", n);
    return buf_put(b, digits, size);
}

/* A text column as unresolved.text writes it: None empty (NULL), a str quoted with its
 * quotes doubled and NUL dropped. 1: a value this cannot write as UTF-8 (the caller gives up). */
static int
buf_text(Buf *b, PyObject *v)
{
    if (v == Py_None)
        return 0;
    if (!PyUnicode_CheckExact(v))
        return 1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s == NULL) {
        PyErr_Clear();
        return 1;
    }
    if (buf_reserve(b, 2 * n + 2) < 0)
        return -1;
    char *out = b->data + b->len;
    *out++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\0')
            continue;
        if (c == '"')
            *out++ = '"';
        *out++ = c;
    }
    *out++ = '"';
    b->len = out - b->data;
    return 0;
}

#define PUT_OR(b, s, n) do { if (buf_put((b), (s), (n)) < 0) goto error; } while (0)
#define COLUMN(call) do { int rc_ = (call); if (rc_ < 0) goto error; if (rc_ > 0) goto give_up; } while (0)

/* copy_rows(client, facts): (nodes, edges), the COPY text (CSV, UTF-8 bytes) unresolved.write
 * writes for ``facts`` (RecordFacts, one per record) of client id ``client``; None for a value
 * it does not write the same way (an int beyond 64 bits, a str with lone surrogates, a
 * subclass), which the Python formatting then takes. */
static PyObject *
copy_rows(PyObject *self, PyObject *args)
{
    PyObject *client, *facts;
    if (!PyArg_ParseTuple(args, "UO!:copy_rows", &client, &PyList_Type, &facts))
        return NULL;
    Buf nodes = {NULL, 0, 0}, edges = {NULL, 0, 0}, prefix = {NULL, 0, 0};
    PyObject *seen = NULL, *out = NULL;
    COLUMN(buf_text(&prefix, client));
    PUT_OR(&prefix, ",", 1);
    if ((seen = PySet_New(NULL)) == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(facts); i++) {
        PyObject *f = PyList_GET_ITEM(facts, i);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 5)
            goto give_up;
        PyObject *zoid = PyTuple_GET_ITEM(f, 0), *record_edges = PyTuple_GET_ITEM(f, 4);
        PUT_OR(&nodes, prefix.data, prefix.len);
        COLUMN(buf_int(&nodes, zoid));
        PUT_OR(&nodes, ",", 1);
        COLUMN(buf_int(&nodes, PyTuple_GET_ITEM(f, 1)));
        PUT_OR(&nodes, ",", 1);
        COLUMN(buf_text(&nodes, PyTuple_GET_ITEM(f, 2)));
        PUT_OR(&nodes, ",", 1);
        COLUMN(buf_text(&nodes, PyTuple_GET_ITEM(f, 3)));
        PUT_OR(&nodes, "\n", 1);
        if (!PyList_Check(record_edges))
            goto give_up;
        if (PySet_Clear(seen) < 0)
            goto error;
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(record_edges); j++) {
            PyObject *edge = PyList_GET_ITEM(record_edges, j);
            if (!PyTuple_CheckExact(edge) || PyTuple_GET_SIZE(edge) != 3)
                goto give_up;
            int had = PySet_Contains(seen, edge);  /* (a record's same edge twice: once) */
            if (had < 0 || (!had && PySet_Add(seen, edge) < 0))
                goto error;
            if (had)
                continue;
            PyObject *listed = PyTuple_GET_ITEM(edge, 2);
            if (listed != Py_True && listed != Py_False)
                goto give_up;
            PUT_OR(&edges, prefix.data, prefix.len);
            COLUMN(buf_int(&edges, zoid));
            PUT_OR(&edges, ",", 1);
            COLUMN(buf_int(&edges, PyTuple_GET_ITEM(edge, 0)));
            PUT_OR(&edges, ",", 1);
            COLUMN(buf_text(&edges, PyTuple_GET_ITEM(edge, 1)));
            PUT_OR(&edges, listed == Py_True ? ",t\n" : ",f\n", 3);
        }
    }
    {
        PyObject *n = PyBytes_FromStringAndSize(nodes.data ? nodes.data : "", nodes.len);
        PyObject *e = n == NULL ? NULL : PyBytes_FromStringAndSize(edges.data ? edges.data : "", edges.len);
        out = e == NULL ? NULL : PyTuple_Pack(2, n, e);
        Py_XDECREF(n);
        Py_XDECREF(e);
    }
    goto done;
give_up:
    out = Py_None;
    Py_INCREF(out);
    goto done;
error:
    out = NULL;
done:
    PyMem_Free(nodes.data);
    PyMem_Free(edges.data);
    PyMem_Free(prefix.data);
    Py_XDECREF(seen);
    return out;
}

static PyObject *s_id;          /* "id" */
static PyObject *s_dunder_name; /* "__name__" */
static PyObject *s_objects;     /* "_objects" */
static PyObject *s_btrees;      /* "BTrees." */
static PyObject *s_empty;       /* "" */
static PyObject *facts_type;    /* RecordFacts (configure) */

/* record_name's answer for a plain dict state (new reference; Py_None when it has none). */
static PyObject *
name_of(PyObject *state)
{
    PyObject *attrs[2] = {s_id, s_dunder_name};
    for (int i = 0; i < 2; i++) {
        PyObject *value = PyDict_GetItemWithError(state, attrs[i]);
        if (value == NULL) {
            if (PyErr_Occurred())
                return NULL;
            continue;
        }
        if (PyUnicode_Check(value) && PyUnicode_GET_LENGTH(value) > 0) {
            Py_INCREF(value);
            return value;
        }
    }
    Py_RETURN_NONE;
}

/* facts(zoid, tid, class_name, state): RecordFacts(zoid, tid, class_name, name, edges) as
 * record_name and record_edges give them, for the states nearly every record has; None
 * for the rest, which the Python functions take: a BTrees class (items and structure), a
 * state that is not a plain dict, or one with "_objects" (an OFS container's listed
 * children). The edges are walk's pairs, each pair once in the order first met, as
 * (zoid, key, False). */
static PyObject *
facts(PyObject *self, PyObject *args)
{
    PyObject *zoid, *tid, *class_name, *state;
    if (!PyArg_ParseTuple(args, "O!OOO:facts", &PyLong_Type, &zoid, &tid, &class_name, &state))
        return NULL;
    if (facts_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_edges_c.configure was not called");
        return NULL;
    }
    if (!PyDict_CheckExact(state))
        Py_RETURN_NONE;
    if (class_name != Py_None) {
        if (!PyUnicode_Check(class_name))
            Py_RETURN_NONE;
        Py_ssize_t btree = PyUnicode_Tailmatch(class_name, s_btrees, 0, PY_SSIZE_T_MAX, -1);
        if (btree < 0)
            return NULL;
        if (btree)
            Py_RETURN_NONE;
    }
    int has_objects = PyDict_Contains(state, s_objects);
    if (has_objects < 0)
        return NULL;
    if (has_objects)
        Py_RETURN_NONE;
    int root = 0;
    {
        long long z = PyLong_AsLongLong(zoid);
        if (z == -1 && PyErr_Occurred()) {
            PyErr_Clear();  /* (beyond 64 bits: not the root) */
        }
        else
            root = z == 0;
    }
    PyObject *name = NULL, *pairs = NULL, *seen = NULL, *edges = NULL, *out = NULL;
    if (root) {
        name = s_empty;
        Py_INCREF(name);
    }
    else if ((name = name_of(state)) == NULL)
        goto error;
    if ((pairs = PyList_New(0)) == NULL)
        goto error;
    if (walk_into(state, Py_None, pairs) < 0)
        goto error;
    if ((seen = PySet_New(NULL)) == NULL || (edges = PyList_New(0)) == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pairs); i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        int had = PySet_Contains(seen, pair);
        if (had < 0 || (!had && PySet_Add(seen, pair) < 0))
            goto error;
        if (had)
            continue;
        PyObject *edge = PyTuple_Pack(3, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1), Py_False);
        int rc = edge == NULL ? -1 : PyList_Append(edges, edge);
        Py_XDECREF(edge);
        if (rc < 0)
            goto error;
    }
    PyObject *fields = PyTuple_Pack(5, zoid, tid, class_name, name, edges);
    if (fields == NULL)
        goto error;
    PyObject *new_args = PyTuple_Pack(1, fields);  /* tuple.__new__(RecordFacts, fields) */
    Py_DECREF(fields);
    if (new_args == NULL)
        goto error;
    out = PyTuple_Type.tp_new((PyTypeObject *)facts_type, new_args, NULL);
    Py_DECREF(new_args);
error:
    Py_XDECREF(name);
    Py_XDECREF(pairs);
    Py_XDECREF(seen);
    Py_XDECREF(edges);
    return out;
}

/* configure(RecordFacts): the tuple subclass facts() builds. */
static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *type;
    if (!PyArg_ParseTuple(args, "O!:configure", &PyType_Type, &type))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "configure: a tuple subclass is required");
        return NULL;
    }
    Py_INCREF(type);
    Py_XSETREF(facts_type, type);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(value, key, out): append (zoid, key) for each persistent reference in value, as walk_py does"},
    {"facts", facts, METH_VARARGS,
     "facts(zoid, tid, class_name, state): RecordFacts as record_name and record_edges give them, "
     "or None where only they can tell (BTrees classes, states that are not plain dicts, _objects)"},
    {"configure", configure, METH_VARARGS, "configure(RecordFacts): the type facts() returns"},
    {"copy_rows", copy_rows, METH_VARARGS,
     "copy_rows(client, facts): (nodes, edges) COPY text as UTF-8 bytes, as unresolved.write formats them, or None"},
    {"fold_value", fold_value, METH_VARARGS,
     "fold_value(value, parts, used, folded, refs, decoded, part): esindexer.objects.fold._Folder.value's walk"},
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
    s_id = PyUnicode_InternFromString("id");
    s_dunder_name = PyUnicode_InternFromString("__name__");
    s_objects = PyUnicode_InternFromString("_objects");
    s_btrees = PyUnicode_InternFromString("BTrees.");
    s_empty = PyUnicode_InternFromString("");
    if (s_marker == NULL || s_persistent == NULL || s_target == NULL || s_id == NULL || s_dunder_name == NULL
        || s_objects == NULL || s_btrees == NULL || s_empty == NULL)
        return NULL;
    return PyModule_Create(&module);
}
