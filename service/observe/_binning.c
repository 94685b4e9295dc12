/* The drift window's per-record counting (service/observe/drift.py, DriftWindow.add_rows) in C.
 *
 * A Binner holds, per monitored variable, its sorted fine edges and the column of its first fine bin in a row of
 * counts. Binner.add(row, rows, probabilities) bins each record (its feature values, then its probability): per
 * variable, the index of the first edge greater than the value (Python's bisect.bisect_right, compared the same
 * way: NaN compares false, so it falls past every edge), and adds 1 to that column of ``row``, a writable buffer of
 * int64 counts. It returns the sum of the probabilities, added in order as the Python loop adds them. Nothing of a
 * value is kept. service/observe/drift.py falls back to the same loop in Python when this did not compile, and a
 * test checks that both count alike.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    Py_ssize_t n_vars;
    Py_ssize_t width;     /* the row's length the columns must fit in */
    Py_ssize_t *columns;  /* per variable, its first column */
    Py_ssize_t *starts;   /* per variable, where its edges start in ``edges`` */
    Py_ssize_t *counts;   /* per variable, how many edges */
    double *edges;
} Binner;

static void Binner_dealloc(Binner *self) {
    PyMem_Free(self->columns);
    PyMem_Free(self->starts);
    PyMem_Free(self->counts);
    PyMem_Free(self->edges);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Binner(edges: list[list[float]], columns: list[int], width: int) */
static int Binner_init(Binner *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"edges", "columns", "width", NULL};
    PyMem_Free(self->columns); /* a second __init__ starts afresh */
    PyMem_Free(self->starts);
    PyMem_Free(self->counts);
    PyMem_Free(self->edges);
    self->columns = self->starts = self->counts = NULL;
    self->edges = NULL;
    self->n_vars = 0;
    PyObject *edges_obj, *columns_obj;
    Py_ssize_t width;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOn", kwlist, &edges_obj, &columns_obj, &width)) {
        return -1;
    }
    PyObject *edges = PySequence_Fast(edges_obj, "edges must be a sequence of sequences of floats");
    if (edges == NULL) {
        return -1;
    }
    PyObject *columns = PySequence_Fast(columns_obj, "columns must be a sequence of ints");
    if (columns == NULL) {
        Py_DECREF(edges);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(edges);
    if (PySequence_Fast_GET_SIZE(columns) != n || n == 0) {
        PyErr_SetString(PyExc_ValueError, "edges and columns need one entry per variable");
        goto fail;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t len = PySequence_Size(PySequence_Fast_GET_ITEM(edges, k));
        if (len < 0) {
            goto fail;
        }
        total += len;
    }
    self->columns = PyMem_Calloc((size_t)n, sizeof(Py_ssize_t));
    self->starts = PyMem_Calloc((size_t)n, sizeof(Py_ssize_t));
    self->counts = PyMem_Calloc((size_t)n, sizeof(Py_ssize_t));
    self->edges = PyMem_Calloc((size_t)(total > 0 ? total : 1), sizeof(double));
    if (!self->columns || !self->starts || !self->counts || !self->edges) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_ssize_t at = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *one = PySequence_Fast(PySequence_Fast_GET_ITEM(edges, k), "edges must be sequences of floats");
        if (one == NULL) {
            goto fail;
        }
        Py_ssize_t len = PySequence_Fast_GET_SIZE(one);
        self->starts[k] = at;
        self->counts[k] = len;
        for (Py_ssize_t i = 0; i < len; i++) {
            double e = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(one, i));
            if (e == -1.0 && PyErr_Occurred()) {
                Py_DECREF(one);
                goto fail;
            }
            if (i > 0 && !(self->edges[at - 1] <= e)) {
                Py_DECREF(one);
                PyErr_SetString(PyExc_ValueError, "each variable's edges must be sorted and not NaN");
                goto fail;
            }
            self->edges[at++] = e;
        }
        Py_DECREF(one);
        Py_ssize_t column = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(columns, k));
        if (column == -1 && PyErr_Occurred()) {
            goto fail;
        }
        /* a value falls in one of len + 1 bins: columns column .. column + len */
        if (column < 0 || column + len >= width) {
            PyErr_SetString(PyExc_ValueError, "a variable's bins do not fit in the row");
            goto fail;
        }
        self->columns[k] = column;
    }
    self->n_vars = n;
    self->width = width;
    Py_DECREF(edges);
    Py_DECREF(columns);
    return 0;
fail:
    Py_DECREF(edges);
    Py_DECREF(columns);
    return -1;
}

/* the first index i in a[0:n] with x < a[i] (bisect_right) */
static inline Py_ssize_t upper_bound(const double *a, Py_ssize_t n, double x) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (x < a[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return lo;
}

/* add(row, rows, probabilities) -> float: count each record's bins into ``row``; the sum of the probabilities */
static PyObject *Binner_add(Binner *self, PyObject *args) {
    PyObject *row_obj, *rows_obj, *probs_obj;
    if (!PyArg_ParseTuple(args, "OOO", &row_obj, &rows_obj, &probs_obj)) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(row_obj, &view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    PyObject *rows = NULL, *probs = NULL;
    if (view.itemsize != 8 || view.format == NULL || !(view.format[0] == 'q' || view.format[0] == 'l') ||
        view.format[1] != '\0' || view.len / 8 < self->width) {
        PyErr_SetString(PyExc_ValueError, "row must be a writable buffer of int64 counts, as wide as the window's row");
        goto fail;
    }
    rows = PySequence_Fast(rows_obj, "rows must be a sequence of records");
    probs = PySequence_Fast(probs_obj, "probabilities must be a sequence of floats");
    if (rows == NULL || probs == NULL) {
        goto fail;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(rows);
    if (PySequence_Fast_GET_SIZE(probs) != n) {
        PyErr_SetString(PyExc_ValueError, "one probability per record");
        goto fail;
    }
    int64_t *counts = (int64_t *)view.buf;
    Py_ssize_t f = self->n_vars - 1;
    double total = 0.0;
    /* every record's length and probability checked first: a wrong one leaves the row untouched */
    for (Py_ssize_t r = 0; r < n; r++) {
        /* a list or a tuple: the counting loop below reads its items in place (PySequence_Fast_ITEMS) */
        PyObject *record = PySequence_Fast_GET_ITEM(rows, r);
        if (!PyList_Check(record) && !PyTuple_Check(record)) {
            PyErr_SetString(PyExc_TypeError, "a record must be a list or a tuple of floats");
            goto fail;
        }
        if (PySequence_Fast_GET_SIZE(record) != f) {
            PyErr_Format(PyExc_ValueError, "a record must have %zd values", f);
            goto fail;
        }
        double p = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(probs, r));
        if (p == -1.0 && PyErr_Occurred()) {
            goto fail;
        }
    }
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject **values = PySequence_Fast_ITEMS(PySequence_Fast_GET_ITEM(rows, r));
        for (Py_ssize_t k = 0; k < self->n_vars; k++) {
            double v;
            if (k < f) {
                v = PyFloat_AsDouble(values[k]);
                if (v == -1.0 && PyErr_Occurred()) {
                    goto fail; /* earlier records of this call are counted: a record of non-numbers is a bug */
                }
            } else {
                v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(probs, r));
                total += v;
            }
            counts[self->columns[k] + upper_bound(self->edges + self->starts[k], self->counts[k], v)] += 1;
        }
    }
    Py_DECREF(rows);
    Py_DECREF(probs);
    PyBuffer_Release(&view);
    return PyFloat_FromDouble(total);
fail:
    Py_XDECREF(rows);
    Py_XDECREF(probs);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef Binner_methods[] = {
    {"add", (PyCFunction)Binner_add, METH_VARARGS,
     "add(row, rows, probabilities) -> float: count each record's bins into row; the sum of the probabilities"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BinnerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "service.observe._binning.Binner",
    .tp_basicsize = sizeof(Binner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Binner(edges, columns, width): the drift window's fine bins of every variable, counted in C",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Binner_init,
    .tp_dealloc = (destructor)Binner_dealloc,
    .tp_methods = Binner_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_binning",
    .m_doc = "The drift window's per-record counting, in C.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__binning(void) {
    if (PyType_Ready(&BinnerType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&BinnerType);
    if (PyModule_AddObject(m, "Binner", (PyObject *)&BinnerType) < 0) {
        Py_DECREF(&BinnerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
