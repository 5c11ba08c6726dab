/* esindexer.documents._shape_c: the typed model's shaping of a decoded state, in C, for
 * the states it is sure about (the optional twin of esindexer/documents/typed.py).
 *
 * Why: shaping the unpickled state into flat typed paths is the largest item of Python
 * CPU per document in a backfill (issue 25: ~20 us of ~60), and most of it is the
 * interpreter's per-leaf overhead (a type test, a dict lookup, two appends per leaf).
 * This module walks the same state in the same order and writes the same dicts and
 * lists, for the shapes nearly every record has: dicts of identifiers, strings,
 * numbers, booleans, lists, tuples of leaves, dates, the converter's persistent
 * references and instances.
 *
 * Anything else -- a value other than a leaf set aside for `more` (a wide dict, a
 * non-identifier key's dict or list, a marker of the converter's other special forms,
 * depth beyond the limit),
 * an integer beyond 53 bits, a tuple holding more than leaves, bytes, a set -- makes
 * shape() return None, and the caller shapes the state with the Python code, from the
 * start. So the result is either exactly the Python shaper's (tests/test_fastshape.py
 * compares them) or nothing. Dates are decided by the Python functions (typed._date, called back for
 * strings that start with a digit the C reading of naive isoformat() text is not sure
 * of; fastshape._special_date for Zope DateTime and aware datetime markers), so there is
 * one definition of a date.
 *
 * shape(state, text_limit) -> (typed, more, values, texts, refs, mixed) | None
 * configure(date, many, obj, special, kinds, dates, special_date) must be called first.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#define MAX_KEYS 16
#define MAX_ATTRS 200
#define MAX_DEPTH 4
#define MAX_NEST 64 /* lists within lists: deeper goes to the Python shaper */
#define INT53 9007199254740991LL

/* walk results */
#define OK 0
#define ERR -1
#define FALLBACK 1

static PyObject *date_fn;   /* typed._date: str -> str | None */
static PyObject *many_type; /* typed._Many */
static PyObject *obj_type;  /* convert.model.Obj */
static PyObject *special;   /* frozenset of markers the Python shaper treats specially */
static PyObject *dates;     /* frozenset of the date markers special_date reads */
static PyObject *special_date; /* fastshape._special_date: a date marker -> str | None */
static PyObject *K_STRING, *K_NUMBER, *K_DATE, *K_BOOLEAN;
static PyObject *s_marker, *s_target, *s_id, *s_arrow, *s_idmark, *s_keyword, *s_keyword_,
    *s_class, *s_ref, *s_dot, *s_empty;

typedef struct {
    PyObject *typed, *kinds, *more, *values, *texts, *refs, *mixed;
    Py_ssize_t budget;
    int nest;
} Shaper;

static int value(Shaper *s, PyObject *path, PyObject *v, int depth);

/* another value at a path of `dict` that has `have` (typed.add_at's
 * rule): appended to a _Many, or both become one */
static int
one_more(PyObject *dict, PyObject *path, PyObject *have, PyObject *v)
{
    if (Py_TYPE(have) == (PyTypeObject *)many_type)
        return PyList_Append(have, v) < 0 ? ERR : OK;
    PyObject *pair = PyTuple_Pack(2, have, v);
    if (pair == NULL)
        return ERR;
    PyObject *many = PyObject_CallOneArg(many_type, pair);
    Py_DECREF(pair);
    if (many == NULL)
        return ERR;
    int r = PyDict_SetItem(dict, path, many);
    Py_DECREF(many);
    return r < 0 ? ERR : OK;
}

/* kinds/typed for one leaf (typed._Shaper.leaf without the values append, and again) */
static int
put(Shaper *s, PyObject *path, PyObject *kind, PyObject *v)
{
    PyObject *have = PyDict_GetItemWithError(s->kinds, path);
    if (have == NULL) {
        if (PyErr_Occurred())
            return ERR;
        if (PyDict_SetItem(s->kinds, path, kind) < 0)
            return ERR;
        return PyDict_SetItem(s->typed, path, v) < 0 ? ERR : OK;
    }
    if (have != kind && PySet_Add(s->mixed, path) < 0)
        return ERR;
    PyObject *old = PyDict_GetItemWithError(s->typed, path);
    if (old == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "a kind without a value");
        return ERR;
    }
    return one_more(s->typed, path, old, v);
}

static int
leaf(Shaper *s, PyObject *path, PyObject *kind, PyObject *v)
{
    if (kind != K_STRING && PyList_Append(s->values, v) < 0)
        return ERR;
    return put(s, path, kind, v);
}

static int
digits(const Py_UCS1 *at, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (at[i] < '0' || at[i] > '9')
            return 0;
        v = v * 10 + (at[i] - '0');
    }
    *out = v;
    return 1;
}

/* typed._date's answer for the converter's own naive datetimes (isoformat(): 19 characters,
 * or 26 with microseconds that are not all zero) written without a call into Python: the
 * text with "Z" (and ".000000Z"). NULL, no error: not that form for sure (call typed._date). */
static PyObject *
naive_isoformat(PyObject *text)
{
    Py_ssize_t size = PyUnicode_GET_LENGTH(text);
    if ((size != 19 && size != 26) || !PyUnicode_IS_ASCII(text))
        return NULL;
    const Py_UCS1 *c = PyUnicode_1BYTE_DATA(text);
    int year, month, day, hour, minute, second, micro = 0;
    if (c[4] != '-' || c[7] != '-' || c[10] != 'T' || c[13] != ':' || c[16] != ':' || !digits(c, 4, &year) ||
        !digits(c + 5, 2, &month) || !digits(c + 8, 2, &day) || !digits(c + 11, 2, &hour) ||
        !digits(c + 14, 2, &minute) || !digits(c + 17, 2, &second))
        return NULL;
    if (size == 26 && (c[19] != '.' || !digits(c + 20, 6, &micro) || micro == 0))
        return NULL; /* isoformat() writes no fraction for zero microseconds: not its text */
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (year < 1 || month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59)
        return NULL;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > days[month - 1] + (month == 2 && leap))
        return NULL;
    return PyUnicode_FromFormat(size == 26 ? "%UZ" : "%U.000000Z", text);
}

/* typed.add_at: a value kept in `more` (several at one path: a _Many) */
static int
put_more(Shaper *s, PyObject *path, PyObject *v)
{
    PyObject *have = PyDict_GetItemWithError(s->more, path);
    if (have == NULL && PyErr_Occurred())
        return ERR;
    if (have == NULL || have == Py_None)
        return PyDict_SetItem(s->more, path, v) < 0 ? ERR : OK;
    return one_more(s->more, path, have, v);
}

static int text_of(Shaper *s, PyObject *text);
static int within_53_bits(PyObject *v);

/* typed._Shaper.aside for a leaf (its JSON form is itself): kept in `more`, its text
 * collected; anything else set aside is the Python shaper's */
static int
aside_leaf(Shaper *s, PyObject *path, PyObject *v)
{
    PyTypeObject *kind = Py_TYPE(v);
    if (kind == &PyUnicode_Type) {
        if (text_of(s, v) < 0)
            return ERR;
    } else if (kind == &PyLong_Type) {
        int r = within_53_bits(v);
        if (r != OK)
            return r;
    } else if (kind == &PyFloat_Type) {
        if (!isfinite(PyFloat_AS_DOUBLE(v)))
            return FALLBACK;
    } else if (kind != &PyBool_Type && v != Py_None) {
        return FALLBACK;
    }
    return put_more(s, path, v);
}

/* a string's words for `text`, within the budget */
static int
text_of(Shaper *s, PyObject *text)
{
    Py_ssize_t size = PyUnicode_GET_LENGTH(text);
    if (s->budget > 0) {
        int r;
        if (size <= s->budget) {
            r = PyList_Append(s->texts, text);
        } else {
            PyObject *cut = PyUnicode_Substring(text, 0, s->budget);
            if (cut == NULL)
                return ERR;
            r = PyList_Append(s->texts, cut);
            Py_DECREF(cut);
        }
        if (r < 0)
            return ERR;
        s->budget -= size + 1;
    }
    return OK;
}

/* typed._Shaper.string: its text (within the budget), then a date or a string */
static int
string(Shaper *s, PyObject *path, PyObject *text)
{
    if (text_of(s, text) < 0)
        return ERR;
    if (PyUnicode_GET_LENGTH(text) > 0) {
        Py_UCS4 first = PyUnicode_READ_CHAR(text, 0);
        if (first >= '0' && first <= '9') {
            PyObject *as_date = naive_isoformat(text);
            if (as_date == NULL && PyErr_Occurred())
                return ERR;
            if (as_date == NULL)
                as_date = PyObject_CallOneArg(date_fn, text);
            if (as_date == NULL)
                return ERR;
            if (as_date != Py_None) {
                int r = leaf(s, path, K_DATE, as_date);
                Py_DECREF(as_date);
                return r;
            }
            Py_DECREF(as_date);
        }
    }
    return put(s, path, K_STRING, text);
}

/* OK for an int within 53 bits (what the converter's fast path writes as it is), else
 * FALLBACK (the Python shaper decides), ERR on an error */
static int
within_53_bits(PyObject *v)
{
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (n == -1 && PyErr_Occurred())
        return ERR;
    return overflow || n > INT53 || n < -INT53 ? FALLBACK : OK;
}

/* an int as the typed model takes it */
static int
integer(Shaper *s, PyObject *path, PyObject *v)
{
    int r = within_53_bits(v);
    return r == OK ? leaf(s, path, K_NUMBER, v) : r;
}

static PyObject *
suffixed(PyObject *path, PyObject *suffix)
{
    return PyUnicode_Concat(path, suffix);
}

/* a key that can be a path segment: an ASCII identifier of at most 64 characters */
static int
plain(PyObject *key)
{
    return PyUnicode_IS_ASCII(key) && PyUnicode_GET_LENGTH(key) <= 64 && PyUnicode_IsIdentifier(key) == 1;
}

static int
starts_with_marker(PyObject *key)
{
    return PyUnicode_GET_LENGTH(key) >= 2 && PyUnicode_READ_CHAR(key, 0) == ':' && PyUnicode_READ_CHAR(key, 1) == ':';
}

/* typed._Shaper.reference, its fast shape only (the converter's (oid, class)) */
static int
reference(Shaper *s, PyObject *path, PyObject *v)
{
    PyObject *ident = PyDict_GetItemWithError(v, s_id);
    if (ident == NULL && PyErr_Occurred())
        return ERR;
    PyObject *target = PyDict_GetItemWithError(v, s_target);
    if (target == NULL && PyErr_Occurred())
        return ERR;
    if (ident == NULL || target == NULL || !PyList_CheckExact(ident) || PyList_GET_SIZE(ident) != 2 ||
        !PyLong_CheckExact(target) || PyDict_GET_SIZE(v) != 3)
        return FALLBACK;
    PyObject *oid = PyList_GET_ITEM(ident, 0), *cls = PyList_GET_ITEM(ident, 1);
    if (!PyLong_CheckExact(oid) || !PyUnicode_CheckExact(cls))
        return FALLBACK;
    int same = PyObject_RichCompareBool(oid, target, Py_EQ);
    if (same < 0)
        return ERR;
    if (!same)
        return FALLBACK;
    int bounded = within_53_bits(target);
    if (bounded != OK)
        return bounded;
    Py_INCREF(cls); /* the list may be the only owner: keep both alive while the dicts grow */
    Py_INCREF(target);
    int r = FALLBACK;
    PyObject *at = suffixed(path, s_class);
    if (at == NULL) {
        r = ERR;
        goto done;
    }
    r = put(s, at, K_STRING, cls);
    Py_DECREF(at);
    if (r != OK)
        goto done;
    at = suffixed(path, s_ref);
    if (at == NULL) {
        r = ERR;
        goto done;
    }
    r = leaf(s, at, K_NUMBER, target);
    Py_DECREF(at);
    if (r == OK && PyList_Append(s->refs, target) < 0)
        r = ERR;
done:
    Py_DECREF(cls);
    Py_DECREF(target);
    return r;
}

static int attributes(Shaper *s, PyObject *path, PyObject *v, int depth);

/* every key of a plain dict can be a path segment (FALLBACK for a key that is not a str) */
static int
all_plain(PyObject *v, int *answer)
{
    Py_ssize_t pos = 0;
    PyObject *key, *child;
    *answer = 1;
    while (PyDict_Next(v, &pos, &key, &child)) {
        if (!PyUnicode_CheckExact(key))
            return FALLBACK;
        if (!plain(key)) {
            *answer = 0;
            return OK;
        }
    }
    return OK;
}

/* typed._Shaper.mapping, for what it does not set aside */
static int
mapping(Shaper *s, PyObject *path, PyObject *v, int depth)
{
    PyObject *marker = PyDict_GetItemWithError(v, s_marker);
    if (marker == NULL) {
        if (PyErr_Occurred())
            return ERR;
        int has = PyDict_Contains(v, s_arrow);
        if (has == 0)
            has = PyDict_Contains(v, s_idmark);
        if (has != 0)
            return has < 0 ? ERR : FALLBACK;
        if (PyDict_GET_SIZE(v) > MAX_KEYS || depth >= MAX_DEPTH)
            return FALLBACK;
        int ok;
        int r = all_plain(v, &ok);
        if (r != OK)
            return r;
        return ok ? attributes(s, path, v, depth) : FALLBACK;
    }
    if (!PyUnicode_CheckExact(marker))
        return FALLBACK;
    if (PyUnicode_CompareWithASCIIString(marker, "persistent") == 0)
        return reference(s, path, v);
    int is_date = PySet_Contains(dates, marker);
    if (is_date < 0)
        return ERR;
    if (is_date) { /* the Python shaper's reading, called back: a date, or None (set aside) */
        PyObject *as_date = PyObject_CallOneArg(special_date, v);
        if (as_date == NULL)
            return ERR;
        int r = as_date == Py_None ? FALLBACK : leaf(s, path, K_DATE, as_date);
        Py_DECREF(as_date);
        return r;
    }
    int known = PySet_Contains(special, marker);
    if (known != 0)
        return known < 0 ? ERR : FALLBACK;
    if (depth >= MAX_DEPTH || PyDict_GET_SIZE(v) > MAX_ATTRS)
        return FALLBACK;
    Py_INCREF(marker);
    PyObject *at = suffixed(path, s_class);
    int r = at == NULL ? ERR : put(s, at, K_STRING, marker);
    Py_XDECREF(at);
    Py_DECREF(marker);
    if (r != OK)
        return r;
    return attributes(s, path, v, depth);
}

/* typed._Shaper.value */
static int
value(Shaper *s, PyObject *path, PyObject *v, int depth)
{
    PyTypeObject *kind = Py_TYPE(v);
    if (kind == &PyUnicode_Type)
        return string(s, path, v);
    if (kind == &PyLong_Type)
        return integer(s, path, v);
    if (kind == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(v);
        return isfinite(d) ? leaf(s, path, K_NUMBER, v) : OK;
    }
    if (kind == &PyBool_Type)
        return leaf(s, path, K_BOOLEAN, v);
    if (kind == &PyDict_Type || kind == (PyTypeObject *)obj_type)
        return mapping(s, path, v, depth);
    if (kind == &PyTuple_Type) {
        /* its JSON form is a list of the same leaves (json_normal): only leaves here */
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(v); i++) {
            PyTypeObject *of = Py_TYPE(PyTuple_GET_ITEM(v, i));
            if (of != &PyUnicode_Type && of != &PyLong_Type && of != &PyFloat_Type && of != &PyBool_Type &&
                of != Py_TYPE(Py_None))
                return FALLBACK;
        }
        int r = OK;
        Py_INCREF(v);
        for (Py_ssize_t i = 0; r == OK && i < PyTuple_GET_SIZE(v); i++) {
            PyObject *item = PyTuple_GET_ITEM(v, i);
            if (item != Py_None)
                r = value(s, path, item, depth);
        }
        Py_DECREF(v);
        return r;
    }
    if (kind == &PyList_Type) {
        if (++s->nest > MAX_NEST)
            return FALLBACK;
        /* a strong reference to the list and its items: callbacks run Python code */
        Py_INCREF(v);
        int r = OK;
        for (Py_ssize_t i = 0; r == OK && i < PyList_GET_SIZE(v); i++) {
            PyObject *item = PyList_GET_ITEM(v, i);
            if (item == Py_None)
                continue;
            Py_INCREF(item);
            r = value(s, path, item, depth);
            Py_DECREF(item);
        }
        Py_DECREF(v);
        s->nest--;
        return r;
    }
    if (v == Py_None)
        return OK;
    return FALLBACK; /* tuples, bytes, sets, other instances: as their JSON form, in Python */
}

/* typed._Shaper.attributes */
static int
attributes(Shaper *s, PyObject *path, PyObject *v, int depth)
{
    PyObject *prefix;
    if (PyUnicode_GET_LENGTH(path) == 0) {
        prefix = s_empty;
        Py_INCREF(prefix);
    } else {
        prefix = PyUnicode_Concat(path, s_dot);
        if (prefix == NULL)
            return ERR;
    }
    int has_prefix = PyUnicode_GET_LENGTH(prefix) > 0;
    depth += 1;
    Py_ssize_t pos = 0;
    PyObject *key, *child;
    int r = OK;
    Py_INCREF(v);
    while (r == OK && PyDict_Next(v, &pos, &key, &child)) {
        if (!PyUnicode_CheckExact(key)) {
            r = FALLBACK;
            break;
        }
        if (!plain(key)) {
            if (starts_with_marker(key))
                continue; /* the converter's markers (class names are handled by mapping) */
            /* set aside in `more` under <prefix><key> (<prefix>_ for an empty key) */
            PyObject *at = PyUnicode_GET_LENGTH(key) ? PyUnicode_Concat(prefix, key)
                                                     : PyUnicode_FromFormat("%U_", prefix);
            if (at == NULL) {
                r = ERR;
                break;
            }
            Py_INCREF(child);
            r = aside_leaf(s, at, child);
            Py_DECREF(child);
            Py_DECREF(at);
            continue;
        }
        if (has_prefix && PyUnicode_CompareWithASCIIString(key, "keyword") == 0)
            key = s_keyword_;
        PyObject *at = has_prefix ? PyUnicode_Concat(prefix, key) : Py_NewRef(key);
        if (at == NULL) {
            r = ERR;
            break;
        }
        Py_INCREF(child);
        PyTypeObject *kind = Py_TYPE(child);
        if (kind == &PyDict_Type) {
            PyObject *marker = PyDict_GetItemWithError(child, s_marker);
            if (marker == NULL && PyErr_Occurred())
                r = ERR;
            else if (marker != NULL && PyUnicode_CheckExact(marker) &&
                     PyUnicode_CompareWithASCIIString(marker, "persistent") == 0)
                r = reference(s, at, child);
            else
                r = mapping(s, at, child, depth);
        } else if (child != Py_None) {
            r = value(s, at, child, depth);
        }
        Py_DECREF(child);
        Py_DECREF(at);
    }
    Py_DECREF(v);
    Py_DECREF(prefix);
    return r;
}

static PyObject *
shape(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "shape(state, text_limit)");
        return NULL;
    }
    if (date_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_shape_c.configure() was not called");
        return NULL;
    }
    PyObject *state = args[0];
    if (!PyDict_CheckExact(state) || PyDict_GET_SIZE(state) > MAX_ATTRS)
        Py_RETURN_NONE;
    Py_ssize_t budget = PyLong_AsSsize_t(args[1]);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    Shaper s = {PyDict_New(), PyDict_New(), PyDict_New(), PyList_New(0), PyList_New(0), PyList_New(0),
                PySet_New(NULL), budget, 0};
    PyObject *result = NULL;
    if (s.typed == NULL || s.kinds == NULL || s.more == NULL || s.values == NULL || s.texts == NULL ||
        s.refs == NULL || s.mixed == NULL)
        goto done;
    int r = attributes(&s, s_empty, state, 0);
    if (r == ERR)
        goto done;
    if (r == FALLBACK) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    result = PyTuple_Pack(6, s.typed, s.more, s.values, s.texts, s.refs, s.mixed);
done:
    Py_XDECREF(s.typed);
    Py_XDECREF(s.kinds);
    Py_XDECREF(s.more);
    Py_XDECREF(s.values);
    Py_XDECREF(s.texts);
    Py_XDECREF(s.refs);
    Py_XDECREF(s.mixed);
    return result;
}

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "configure(date, many, obj, special, kinds, dates, special_date)");
        return NULL;
    }
    if (!PyFrozenSet_Check(args[5]) || !PyCallable_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "configure(..., dates: frozenset, special_date: callable)");
        return NULL;
    }
    if (!PyCallable_Check(args[0]) || !PyType_Check(args[1]) || !PyType_Check(args[2]) ||
        !PyFrozenSet_Check(args[3]) || !PyTuple_Check(args[4]) || PyTuple_GET_SIZE(args[4]) != 4) {
        PyErr_SetString(PyExc_TypeError, "configure(date, many, obj, special: frozenset, kinds: 4-tuple)");
        return NULL;
    }
    PyObject *kinds = args[4];
    for (Py_ssize_t i = 0; i < 4; i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(kinds, i))) {
            PyErr_SetString(PyExc_TypeError, "kinds are strings");
            return NULL;
        }
    }
    Py_XSETREF(date_fn, Py_NewRef(args[0]));
    Py_XSETREF(many_type, Py_NewRef(args[1]));
    Py_XSETREF(obj_type, Py_NewRef(args[2]));
    Py_XSETREF(special, Py_NewRef(args[3]));
    Py_XSETREF(dates, Py_NewRef(args[5]));
    Py_XSETREF(special_date, Py_NewRef(args[6]));
    Py_XSETREF(K_STRING, Py_NewRef(PyTuple_GET_ITEM(kinds, 0)));
    Py_XSETREF(K_NUMBER, Py_NewRef(PyTuple_GET_ITEM(kinds, 1)));
    Py_XSETREF(K_DATE, Py_NewRef(PyTuple_GET_ITEM(kinds, 2)));
    Py_XSETREF(K_BOOLEAN, Py_NewRef(PyTuple_GET_ITEM(kinds, 3)));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"shape", (PyCFunction)(void (*)(void))shape, METH_FASTCALL,
     "shape(state, text_limit) -> (typed, more, values, texts, refs, mixed) or None (the Python shaper decides)"},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(date, many, obj, special, kinds, dates, special_date): the Python pieces shape() uses"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_shape_c", "The typed shaping of decoded states, in C (see typed.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__shape_c(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&s_marker, "::"}, {&s_target, "::=>"}, {&s_id, "id"}, {&s_arrow, "::->"}, {&s_idmark, "::id"},
        {&s_keyword, "keyword"}, {&s_keyword_, "keyword_"}, {&s_class, "._class"}, {&s_ref, "._ref"},
        {&s_dot, "."}, {&s_empty, ""},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL)
            return NULL;
    }
    return PyModule_Create(&module_def);
}
