/*
 * service.engine._exact: the exact GradientSHAP kernel of a two-hidden-layer ReLU net, in C, without the GIL.
 *
 * The algorithm and its notation are documented in service/engine/exact_kernel.py, which computes the constants
 * of a model and its baselines once. This file owns them from then on and does the arithmetic:
 *
 *   m = Model(w1=, b1=, w2=, b2=, w3=, b3=, db=, ab=, m0=, w2t=, vt=, h0=, u0=, p=, c=, bw=, b=)   (once per model)
 *   m.logits(xs, out)              the logit of each row of xs into out
 *   m.explain(xs, attr, logit)     attributions and logits of each row
 *
 * The constructor takes every constant by keyword (keyword-only: no two can be swapped by position), reads the
 * dimensions F, H1, H2 and K from w1 (H1, F), w2 (H2, H1) and bw (K,), checks every other constant's type and
 * size against them, naming the argument when one does not fit, and copies them into memory of its own: a call
 * passes only the records and the output buffers, which are checked again by name (C-contiguous float64 of the
 * right size, outputs writable), and nothing a caller does to its arrays afterwards can change the model.
 *
 * Reproducibility: records are computed one at a time with fixed-order loops; the build passes
 * -ffp-contract=off (no fused multiply-add) and no -ffast-math, so the compiler may vectorise element-wise
 * loops but never reorder a sum: a record's numbers are bitwise the same alone or in any batch, and on any
 * x86-64 (the AVX2 and baseline clones of the hot function compute the same thing).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define GSHAP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GSHAP_CLONES
#endif

typedef struct {
    Py_ssize_t n, f, h1, h2, k;
} dims_t;

/* relu that keeps NaN, as torch.relu does: !(s <= 0) is true for NaN */
static double logit_one(const double *x, const double *w1, const double *b1, const double *w2, const double *b2,
                        const double *w3, double b3, double *a1, const dims_t *d) {
    for (Py_ssize_t i = 0; i < d->h1; i++) {
        double s = b1[i];
        const double *row = w1 + i * d->f;
        for (Py_ssize_t f = 0; f < d->f; f++) s += row[f] * x[f];
        a1[i] = !(s <= 0.0) ? s : 0.0;
    }
    double acc = b3;
    for (Py_ssize_t j = 0; j < d->h2; j++) {
        double s = b2[j];
        const double *row = w2 + j * d->h1;
        for (Py_ssize_t i = 0; i < d->h1; i++) s += row[i] * a1[i];
        if (!(s <= 0.0)) acc += w3[j] * s;
    }
    return acc;
}

typedef struct {
    double *wx, *d, *tt, *a, *b, *g1, *key, *slope, *h, *hp;
    Py_ssize_t *tidx, *cidx;
    double *cand, *integ;
    unsigned char *fl; /* h2 flags, padded to a multiple of 8 */
} scratch_t;

GSHAP_CLONES
static void record_attr(const double *restrict x, const double *restrict w1, const double *restrict db,
                        const double *restrict ab, const unsigned char *restrict m0, const double *restrict w2t,
                        const double *restrict vt, const double *restrict h0, const double *restrict u0,
                        const double *restrict p, const double *restrict c, const double *restrict bw,
                        const double *restrict bl, const scratch_t *s, const dims_t *dm, double *restrict out) {
    const Py_ssize_t nf = dm->f, h1n = dm->h1, h2n = dm->h2, kn = dm->k;
    const Py_ssize_t nwords = (h2n + 7) / 8;
    double *restrict wx = s->wx, *restrict d = s->d, *restrict tt = s->tt, *restrict aa = s->a;
    double *restrict bb = s->b, *restrict g1 = s->g1, *restrict key = s->key;
    double *restrict slope = s->slope, *restrict h = s->h, *restrict hp = s->hp;
    Py_ssize_t *restrict tidx = s->tidx, *restrict cidx = s->cidx;
    double *restrict cand = s->cand, *restrict integ = s->integ;
    unsigned char *restrict fl = s->fl;

    for (Py_ssize_t i = 0; i < h1n; i++) {
        double acc = 0.0;
        for (Py_ssize_t f = 0; f < nf; f++) acc += w1[i * nf + f] * x[f];
        wx[i] = acc;
    }
    for (Py_ssize_t f = 0; f < nf; f++) out[f] = 0.0;

    for (Py_ssize_t k = 0; k < kn; k++) {
        const double *dbk = db + k * h1n, *abk = ab + k * h1n, *u0k = u0 + k * h1n;
        const unsigned char *m0k = m0 + k * h1n;
        /* layer-1 slopes and toggle times; the toggling units sorted by time (insertion sort, stable) */
        for (Py_ssize_t i = 0; i < h1n; i++) {
            d[i] = wx[i] - dbk[i];
            tt[i] = -abk[i] / d[i];
        }
        Py_ssize_t ne = 0;
        for (Py_ssize_t i = 0; i < h1n; i++) { /* branch-free compaction of the toggling units */
            const int toggles = (m0k[i] ? (d[i] < 0.0) : (d[i] > 0.0)) & (tt[i] < 1.0);
            cand[ne] = tt[i];
            cidx[ne] = i;
            ne += toggles;
        }
        for (Py_ssize_t a = 0; a < ne; a++) { /* rank of each by (time, unit): a stable sort without branches */
            const double ta = cand[a];
            Py_ssize_t r = 0;
            for (Py_ssize_t b2 = 0; b2 < ne; b2++) r += (cand[b2] < ta) | ((cand[b2] == ta) & (b2 < a));
            key[r] = ta;
            tidx[r] = cidx[a];
        }
        /* layer-2 slope on the first segment (P_k x - c_k) and values at alpha = 0 */
        const double *pk = p + k * h2n * nf, *ck = c + k * h2n, *h0k = h0 + k * h2n;
        for (Py_ssize_t j = 0; j < h2n; j++) { /* p is (K, F, H2): the f sums run side by side over j */
            slope[j] = -ck[j];
            h[j] = h0k[j];
        }
        for (Py_ssize_t f = 0; f < nf; f++) {
            const double xf = x[f];
            const double *prow = pk + f * h2n;
            for (Py_ssize_t j = 0; j < h2n; j++) slope[j] += prow[j] * xf;
        }
        for (Py_ssize_t i = 0; i < h1n; i++) {
            aa[i] = u0k[i];
            bb[i] = 0.0;
            g1[i] = 0.0;
        }
        double tprev = 0.0;
        for (Py_ssize_t q = 0; q <= ne; q++) {
            const double tq = q < ne ? key[q] : 1.0;
            const double seg = tq - tprev;
            for (Py_ssize_t j = 0; j < h2n; j++) {
                const double v0 = h[j];
                const double v1 = v0 + slope[j] * seg;
                hp[j] = v0;
                h[j] = v1;
                fl[j] = (unsigned char)((v0 > 0.0) != (v1 > 0.0));
            }
            for (Py_ssize_t w = 0; w < nwords; w++) {
                uint64_t word;
                memcpy(&word, fl + 8 * w, 8);
                if (!word) continue; /* eight units without a sign change */
                const Py_ssize_t end = 8 * w + 8 < h2n ? 8 * w + 8 : h2n;
                for (Py_ssize_t j = 8 * w; j < end; j++) {
                    if (!fl[j]) continue;
                    const double v0 = hp[j], v1 = h[j];
                    const double tau = tprev + seg * (v0 / (v0 - v1));
                    const double sg = v1 > 0.0 ? 1.0 : -1.0;
                    const double st = sg * tau;
                    const double *vrow = vt + j * h1n;
                    for (Py_ssize_t i = 0; i < h1n; i++) {
                        aa[i] += sg * vrow[i];
                        bb[i] += st * vrow[i];
                    }
                }
            }
            tprev = tq;
            if (q < ne) {
                const Py_ssize_t i = tidx[q];
                g1[i] = aa[i] * tq - bb[i]; /* U_i(t_i) */
                const double coef = m0k[i] ? -d[i] : d[i];
                const double *wrow = w2t + i * h2n;
                for (Py_ssize_t j = 0; j < h2n; j++) slope[j] += coef * wrow[j];
            }
        }
        for (Py_ssize_t i = 0; i < h1n; i++) {
            const double u1 = aa[i] - bb[i]; /* U_i(1) */
            if (m0k[i])
                g1[i] = (d[i] < 0.0 && tt[i] < 1.0) ? g1[i] : u1;
            else
                g1[i] = (d[i] > 0.0 && tt[i] < 1.0) ? (u1 - g1[i]) : 0.0;
        }
        const double *bk = bl + k * nf;
        for (Py_ssize_t f = 0; f < nf; f++) integ[f] = 0.0;
        for (Py_ssize_t i = 0; i < h1n; i++) { /* the F sums over i run side by side, each in order of i */
            const double gi = g1[i];
            const double *wrow = w1 + i * nf;
            for (Py_ssize_t f = 0; f < nf; f++) integ[f] += gi * wrow[f];
        }
        for (Py_ssize_t f = 0; f < nf; f++) out[f] += bw[k] * (x[f] - bk[f]) * integ[f];
    }
}

/* ---- argument handling ---------------------------------------------------------------------------------- */

#define MAX_BUFS 4 /* the most buffers one call holds at once (explain: xs, attr, logit) */

typedef struct {
    Py_buffer views[MAX_BUFS];
    int n;
} bufs_t;

static void release_all(bufs_t *bs) {
    for (int i = 0; i < bs->n; i++) PyBuffer_Release(&bs->views[i]);
    bs->n = 0;
}

/* format 'd' (itemsize 8) or 'B'/'?' (itemsize 1), after an optional byte-order character */
static int format_ok(const Py_buffer *v, Py_ssize_t itemsize) {
    const char *fmt = v->format ? v->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    int ok = itemsize == 8 ? strcmp(fmt, "d") == 0 : (strcmp(fmt, "B") == 0 || strcmp(fmt, "?") == 0);
    return ok && v->itemsize == itemsize;
}

/* Into the next free slot of bs (refused, not overflowed, when every slot is taken): a C-contiguous buffer of
 * `count` items of `itemsize` bytes, writable if asked; `count` < 0 takes a 2-D buffer of rows of `-count` items
 * and reports its number of rows in *rows. Returns the data, or NULL with an exception naming the argument. */
static void *take(bufs_t *bs, PyObject *obj, const char *name, Py_ssize_t count, Py_ssize_t itemsize, int writable,
                  Py_ssize_t *rows) {
    if (bs->n < 0 || bs->n >= MAX_BUFS) {
        PyErr_Format(PyExc_RuntimeError, "%s: no free buffer slot (%d in use, at most %d)", name, bs->n, MAX_BUFS);
        return NULL;
    }
    Py_buffer *v = &bs->views[bs->n];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, v, flags) < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous%s buffer of %s", name, writable ? " writable" : "",
                     itemsize == 8 ? "float64" : "uint8/bool");
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    bs->n++;
    if (count < 0) {
        const Py_ssize_t width = -count;
        if (!format_ok(v, itemsize) || v->ndim != 2 || v->shape[1] != width) {
            PyErr_Format(PyExc_ValueError, "%s: expected (N, %zd) items of %zd bytes, got format %s, %d dimensions",
                         name, width, itemsize, v->format ? v->format : "B", v->ndim);
            return NULL;
        }
        *rows = v->shape[0];
        return v->buf;
    }
    if (!format_ok(v, itemsize) || v->len != count * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes, got format %s, %zd bytes", name, count,
                     itemsize, v->format ? v->format : "B", v->len);
        return NULL;
    }
    return v->buf;
}

/* ---- the model: its constants, checked and copied once ----------------------------------------------------- */

enum { W1, B1, W2, B2, W3, DB, AB, W2T, VT, H0, U0, P, C, BW, BL, N_F64 }; /* the float64 constants; then m0 */

static const char *const F64_NAMES[N_F64] = {"w1", "b1", "w2", "b2", "w3", "db", "ab", "w2t",
                                             "vt", "h0", "u0", "p",  "c",  "bw", "b"};

typedef struct {
    PyObject_HEAD
    dims_t dm; /* n unused: per call */
    double b3;
    double *f64[N_F64]; /* pointers into mem */
    unsigned char *m0;
    void *mem;
} ModelObject;

static void model_dealloc(ModelObject *self) {
    PyMem_RawFree(self->mem);
    self->mem = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* dims of one keyword argument: rows (or 0 for a vector) and columns, read without format checks */
static int shape2(PyObject *obj, const char *name, Py_ssize_t *r, Py_ssize_t *c) {
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_C_CONTIGUOUS | PyBUF_ND) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous float64 buffer", name);
        return -1;
    }
    int nd = v.ndim;
    *r = nd == 2 ? v.shape[0] : (nd == 1 ? v.shape[0] : -1);
    *c = nd == 2 ? v.shape[1] : -1;
    PyBuffer_Release(&v);
    return 0;
}

static int model_init(ModelObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"w1", "b1", "w2", "b2", "w3", "b3", "db", "ab", "m0",
                             "w2t", "vt", "h0", "u0", "p", "c", "bw", "b", NULL};
    PyObject *o[17] = {NULL};
    if (PyTuple_GET_SIZE(args) != 0) {
        PyErr_SetString(PyExc_TypeError, "Model() takes its constants by keyword only");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$OOOOOOOOOOOOOOOOO:Model", kwlist, &o[0], &o[1], &o[2], &o[3],
                                     &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13], &o[14],
                                     &o[15], &o[16]))
        return -1;
    for (int i = 0; i < 17; i++)
        if (!o[i]) {
            PyErr_Format(PyExc_TypeError, "Model() missing keyword argument '%s'", kwlist[i]);
            return -1;
        }
    if (self->mem) { /* __init__ called twice: the constants are set once */
        PyErr_SetString(PyExc_TypeError, "Model: the constants are set once, at construction");
        return -1;
    }
    PyObject *f64obj[N_F64] = {o[0], o[1], o[2], o[3], o[4], o[6], o[7], o[9], o[10], o[11], o[12], o[13], o[14],
                               o[15], o[16]};
    double b3 = PyFloat_AsDouble(o[5]);
    if (b3 == -1.0 && PyErr_Occurred()) {
        PyErr_SetString(PyExc_TypeError, "b3: expected a float");
        return -1;
    }
    /* F, H1 from w1 (H1, F); H2 from w2 (H2, H1); K from bw (K,) */
    Py_ssize_t h1, f, h2, h1b, k, unused;
    if (shape2(o[0], "w1", &h1, &f) < 0 || shape2(o[2], "w2", &h2, &h1b) < 0 || shape2(o[15], "bw", &k, &unused) < 0)
        return -1;
    if (f < 1 || h1 < 1 || h2 < 1 || h1b != h1 || k < 1 || unused != -1) {
        PyErr_SetString(PyExc_ValueError, "w1 (H1, F), w2 (H2, H1) and bw (K,) do not fit together");
        return -1;
    }
    const Py_ssize_t count[N_F64] = {
        [W1] = h1 * f, [B1] = h1,     [W2] = h2 * h1,    [B2] = h2,     [W3] = h2,     [DB] = k * h1, [AB] = k * h1,
        [W2T] = h1 * h2, [VT] = h2 * h1, [H0] = k * h2, [U0] = k * h1, [P] = k * h2 * f, [C] = k * h2, [BW] = k,
        [BL] = k * f,
    };
    size_t total = 0;
    for (int i = 0; i < N_F64; i++) total += (size_t)count[i];
    void *mem = PyMem_RawMalloc(total * sizeof(double) + (size_t)(k * h1));
    if (!mem) {
        PyErr_NoMemory();
        return -1;
    }
    double *at = mem;
    for (int i = 0; i < N_F64; i++) {
        bufs_t bs = {.n = 0};
        const double *src = take(&bs, f64obj[i], F64_NAMES[i], count[i], 8, 0, NULL);
        if (!src) {
            release_all(&bs);
            PyMem_RawFree(mem);
            return -1;
        }
        memcpy(at, src, sizeof(double) * (size_t)count[i]);
        release_all(&bs);
        self->f64[i] = at;
        at += count[i];
    }
    bufs_t bs = {.n = 0};
    const unsigned char *m0 = take(&bs, o[8], "m0", k * h1, 1, 0, NULL);
    if (!m0) {
        release_all(&bs);
        PyMem_RawFree(mem);
        return -1;
    }
    self->m0 = (unsigned char *)at;
    for (Py_ssize_t i = 0; i < k * h1; i++) self->m0[i] = m0[i] != 0;
    release_all(&bs);
    self->mem = mem;
    self->b3 = b3;
    self->dm = (dims_t){.n = 0, .f = f, .h1 = h1, .h2 = h2, .k = k};
    return 0;
}

static int model_ready(ModelObject *self) {
    if (!self->mem) {
        PyErr_SetString(PyExc_TypeError, "Model: not initialised");
        return 0;
    }
    return 1;
}

static PyObject *model_logits(ModelObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "logits(xs, out)");
        return NULL;
    }
    if (!model_ready(self)) return NULL;
    dims_t dm = self->dm;
    bufs_t bs = {.n = 0};
    const double *xs = take(&bs, args[0], "xs", -dm.f, 8, 0, &dm.n);
    double *out = xs ? take(&bs, args[1], "out", dm.n, 8, 1, NULL) : NULL;
    if (!out) {
        release_all(&bs);
        return NULL;
    }
    double *a1 = PyMem_RawMalloc(sizeof(double) * (size_t)dm.h1);
    if (!a1) {
        release_all(&bs);
        return PyErr_NoMemory();
    }
    double *const *c = self->f64;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t n = 0; n < dm.n; n++)
        out[n] = logit_one(xs + n * dm.f, c[W1], c[B1], c[W2], c[B2], c[W3], self->b3, a1, &dm);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(a1);
    release_all(&bs);
    Py_RETURN_NONE;
}

static PyObject *model_explain(ModelObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "explain(xs, attr, logit)");
        return NULL;
    }
    if (!model_ready(self)) return NULL;
    dims_t dm = self->dm;
    bufs_t bs = {.n = 0};
    const double *xs = take(&bs, args[0], "xs", -dm.f, 8, 0, &dm.n);
    const Py_ssize_t n = dm.n, f = dm.f, h1 = dm.h1, h2 = dm.h2;
    double *attr = xs ? take(&bs, args[1], "attr", n * f, 8, 1, NULL) : NULL;
    double *logit = attr ? take(&bs, args[2], "logit", n, 8, 1, NULL) : NULL;
    if (!logit) {
        release_all(&bs);
        return NULL;
    }
    const Py_ssize_t nwords = (h2 + 7) / 8;
    const Py_ssize_t nd = 9 * (h1 + 1) + 3 * h2 + f + 1;
    double *dbuf = PyMem_RawMalloc(sizeof(double) * (size_t)nd);
    Py_ssize_t *tidx = PyMem_RawMalloc(sizeof(Py_ssize_t) * (size_t)(2 * (h1 + 1)));
    unsigned char *fl = PyMem_RawCalloc((size_t)(8 * nwords + 8), 1);
    if (!dbuf || !tidx || !fl) {
        PyMem_RawFree(dbuf);
        PyMem_RawFree(tidx);
        PyMem_RawFree(fl);
        release_all(&bs);
        return PyErr_NoMemory();
    }
    scratch_t s = {
        .wx = dbuf,
        .d = dbuf + (h1 + 1),
        .tt = dbuf + 2 * (h1 + 1),
        .a = dbuf + 3 * (h1 + 1),
        .b = dbuf + 4 * (h1 + 1),
        .g1 = dbuf + 5 * (h1 + 1),
        .key = dbuf + 6 * (h1 + 1),
        .slope = dbuf + 8 * (h1 + 1),
        .h = dbuf + 8 * (h1 + 1) + h2,
        .hp = dbuf + 8 * (h1 + 1) + 2 * h2,
        .tidx = tidx,
        .cidx = tidx + (h1 + 1),
        .cand = dbuf + 8 * (h1 + 1) + 3 * h2,
        .integ = dbuf + 9 * (h1 + 1) + 3 * h2,
        .fl = fl,
    };
    double *a1 = dbuf + 7 * (h1 + 1);
    double *const *c = self->f64;
    const unsigned char *m0 = self->m0;
    const double b3 = self->b3;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n; r++) {
        const double *x = xs + r * f;
        logit[r] = logit_one(x, c[W1], c[B1], c[W2], c[B2], c[W3], b3, a1, &dm);
        record_attr(x, c[W1], c[DB], c[AB], m0, c[W2T], c[VT], c[H0], c[U0], c[P], c[C], c[BW], c[BL], &s, &dm,
                    attr + r * f);
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(dbuf);
    PyMem_RawFree(tidx);
    PyMem_RawFree(fl);
    release_all(&bs);
    Py_RETURN_NONE;
}

static PyObject *model_get_dims(ModelObject *self, void *closure) {
    (void)closure;
    if (!model_ready(self)) return NULL;
    return Py_BuildValue("{s:n,s:n,s:n,s:n}", "features", self->dm.f, "hidden1", self->dm.h1, "hidden2",
                         self->dm.h2, "baselines", self->dm.k);
}

static PyMethodDef model_methods[] = {
    {"logits", (PyCFunction)(void (*)(void))model_logits, METH_FASTCALL,
     "logits(xs, out): the logit of each row of xs (N, F) into out (N,), without the GIL."},
    {"explain", (PyCFunction)(void (*)(void))model_explain, METH_FASTCALL,
     "explain(xs, attr, logit): exact GradientSHAP attributions (N, F) and logits (N,) of each row of xs (N, F), "
     "without the GIL (see service.engine.exact_kernel)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef model_getset[] = {
    {"dims", (getter)model_get_dims, NULL, "{'features': F, 'hidden1': H1, 'hidden2': H2, 'baselines': K}", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "service.engine._exact.Model",
    .tp_doc = "Model(*, w1, b1, w2, b2, w3, b3, db, ab, m0, w2t, vt, h0, u0, p, c, bw, b): the constants of one "
              "folded two-hidden-layer ReLU net and its weighted baselines, checked and copied once "
              "(see service.engine.exact_kernel).",
    .tp_basicsize = sizeof(ModelObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)model_init,
    .tp_dealloc = (destructor)model_dealloc,
    .tp_methods = model_methods,
    .tp_getset = model_getset,
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_exact",
    .m_doc = "The exact GradientSHAP kernel in C (see service.engine.exact_kernel).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__exact(void) {
    if (PyType_Ready(&ModelType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0) {
        Py_DECREF(&ModelType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
