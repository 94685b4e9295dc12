/*
 * service.engine._exact: the exact GradientSHAP kernels, in C, without the GIL. Net (at the end of this file) takes
 * any stack of affine maps and (leaky) ReLUs and is what the service runs; Model, first, is the earlier kernel of
 * two hidden ReLU layers, kept as the benchmark's reference (tests/reference_kernels.py, scripts/bench_engine.py).
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
 * x86-64 (the AVX-512, AVX2 and baseline clones of the hot functions compute the same thing).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

/* The hot functions are compiled three times, for AVX-512 (x86-64-v4), AVX2 and the x86-64 baseline, and the
 * loader picks the best the CPU has. Element-wise loops only are vectorised (no sum is reordered, no multiply-add
 * fused), so each clone computes the same bits: tests/engine/test_kernel_clones.py builds the file once for each
 * instruction set, with GSHAP_NO_CLONES and -march, and compares their answers bit for bit. */
#if defined(GSHAP_NO_CLONES)
#define GSHAP_CLONES
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define GSHAP_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define GSHAP_CLONES
#endif

/* Sign-change flags are bytes of 0 or 1, read eight at a time as a word: the index of its first set byte, and the
 * word without it (so the units of a word are visited in increasing order, with no branch per unit). The portable
 * version (any byte order or compiler; GSHAP_PORTABLE_FLAGS forces it, for the test that compares the builds)
 * visits the same units in the same order. */
#if !defined(GSHAP_PORTABLE_FLAGS) && defined(__GNUC__) && defined(__BYTE_ORDER__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
static inline Py_ssize_t first_flag(uint64_t word) { return (Py_ssize_t)(__builtin_ctzll(word) >> 3); }
static inline uint64_t drop_first_flag(uint64_t word) { return word & (word - 1); }
#else
static inline Py_ssize_t first_flag(uint64_t word) {
    unsigned char b[8];
    memcpy(b, &word, 8);
    Py_ssize_t i = 0;
    while (!b[i]) i++;
    return i;
}
static inline uint64_t drop_first_flag(uint64_t word) {
    unsigned char b[8];
    memcpy(b, &word, 8);
    b[first_flag(word)] = 0;
    memcpy(&word, b, 8);
    return word;
}
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

/* ==== Net: the kernel of any stack of affine maps and (leaky) ReLUs ======================================== *
 *
 *   n = Net(weights=[W0..WL], biases=[c0..cL], slopes=[a0..a(L-1)], db=, ab=, m0=, p=, c=, h0=[..], gamma=[..],
 *           u0=, vt=, bw=, b=)
 *   n.logits(xs, out)            n.explain(xs, attr, logit)
 *
 * f(z) = W_L act_{L-1}(... act_0(W_0 z + c_0) ...) + c_L with act_l(s) = s for s > 0 and a_l s otherwise (a_l = 0:
 * ReLU), L >= 1 hidden layers of any widths. Along the path z(α) = b + α (x − b) the layer-0 pre-activations are
 * linear (each unit toggles at most once, at t_i = −ab_i / d_i); between consecutive breakpoints of the layers
 * below it, layer l's pre-activations are linear, so each of its units changes sign at most once there, at a
 * time found by linear interpolation. The walk is event-driven, layer by layer: the segments between layer-0
 * toggles are cut by the sign changes of layer 1 (sorted by time, ties by unit), those by layer 2's, and so on;
 * the last hidden layer's sign changes need no order (they change only the gradient, which is integrated).
 * At each sign change of a unit of layer m the kernel updates, by rank-1 steps, the slopes of the layers above m
 * (forward) and u = ∂f/∂h_0 with its integral U(t) = A t − B (backward, through the masks below m), and
 * records, for each layer-0 unit, U at its toggle time: g_i = ∫ m_i(α) u_i(α) dα is then a combination of U(t_i)
 * and U(1) (a unit of layer 0 is on a prefix or a suffix of the path). The last hidden layer's sign changes are
 * summed at layer L−2 (pa, pb) and never pushed down one by one: when a mask between changes, a rank-1 term keeps
 * the sums right (see fwd_chain, bwd_chain), and a layer-0 toggle reads its one component through the column the
 * slope update computes anyway; the sums go down to layer 0 once per path. On two hidden layers Net runs
 * net_record2, the two-layer kernel's loop (Model's record_attr) with the slopes multiplied in where a mask
 * changes: for ReLUs a multiplication by 1, so the answers are Model's bits. Notation and constants:
 * service/engine/exact_kernel.py. */

#define NET_MAX_LAYERS 64 /* hidden layers; the walk recurses once per layer */

typedef struct {
    PyObject_HEAD
    Py_ssize_t nl, f, k, hmax; /* hidden layers L, features, baselines, widest layer */
    Py_ssize_t h[NET_MAX_LAYERS + 1]; /* widths of hidden layers 0..L-1; h[L] = 1 */
    double slope[NET_MAX_LAYERS];
    double *w[NET_MAX_LAYERS + 1];  /* W_l (h[l], h[l-1]) row-major, h[-1] = f */
    double *wt[NET_MAX_LAYERS + 1]; /* l >= 1: W_l transposed (h[l-1], h[l]) */
    double *bias[NET_MAX_LAYERS + 1];
    double *h0[NET_MAX_LAYERS];  /* l = 1..L-1: (K, h[l]) pre-activations at α = 0 */
    double *gam[NET_MAX_LAYERS]; /* l = 1..L-2: (K, h[l]) ∂f/∂h_l at α = 0 */
    double *db, *ab, *p, *c, *u0, *vt, *bw, *bl;
    unsigned char *m0;
    void *mem;
} NetObject;

typedef struct {
    double *wx, *d, *tt, *aa, *bb, *g1, *key0, *cand0, *integ;
    Py_ssize_t *tidx0, *cidx0;
    double *v[NET_MAX_LAYERS], *vp[NET_MAX_LAYERS], *s[NET_MAX_LAYERS], *mk[NET_MAX_LAYERS], *gm[NET_MAX_LAYERS];
    double *cand[NET_MAX_LAYERS], *key[NET_MAX_LAYERS];
    Py_ssize_t *tidx[NET_MAX_LAYERS], *cidx[NET_MAX_LAYERS];
    unsigned char *fl[NET_MAX_LAYERS];
    double *pa, *pb; /* last-layer crossings pending at layer L-2 (aa and bb themselves when L = 2) */
    double *t[4];    /* temporaries of the widest layer */
    int dirty;
} work_t;

static double net_logit(const NetObject *m, const double *x, double *buf0, double *buf1) {
    const Py_ssize_t nl = m->nl;
    const double *in = x;
    Py_ssize_t nin = m->f;
    double *out = buf0;
    for (Py_ssize_t l = 0; l < nl - 1; l++) {
        const double *wl = m->w[l], *bl = m->bias[l];
        const double a = m->slope[l];
        for (Py_ssize_t i = 0; i < m->h[l]; i++) {
            double s = bl[i];
            const double *row = wl + i * nin;
            for (Py_ssize_t q = 0; q < nin; q++) s += row[q] * in[q];
            out[i] = !(s <= 0.0) ? s : (a == 0.0 ? 0.0 : a * s); /* keeps NaN, as torch does */
        }
        in = out;
        nin = m->h[l];
        out = out == buf0 ? buf1 : buf0;
    }
    /* the last hidden layer folded into the output's sum, as the two-layer kernel does */
    const double *wl = m->w[nl - 1], *bl = m->bias[nl - 1], *wo = m->w[nl];
    const double a = m->slope[nl - 1];
    double acc = m->bias[nl][0];
    for (Py_ssize_t j = 0; j < m->h[nl - 1]; j++) {
        double s = bl[j];
        const double *row = wl + j * nin;
        for (Py_ssize_t q = 0; q < nin; q++) s += row[q] * in[q];
        if (!(s <= 0.0))
            acc += wo[j] * s;
        else if (a != 0.0)
            acc += wo[j] * (a * s);
    }
    return acc;
}

/* the units' ranks by (time, unit): a stable sort without branches */
static inline __attribute__((always_inline)) void rank_sort(const double *restrict cand, const Py_ssize_t *restrict cidx, Py_ssize_t ne,
                             double *restrict key, Py_ssize_t *restrict tidx) {
    for (Py_ssize_t a = 0; a < ne; a++) {
        const double ta = cand[a];
        Py_ssize_t r = 0;
        for (Py_ssize_t b2 = 0; b2 < ne; b2++) r += (cand[b2] < ta) | ((cand[b2] == ta) & (b2 < a));
        key[r] = ta;
        tidx[r] = cidx[a];
    }
}

/* Unit i of layer m (0 <= m <= L-2) changed the slope of its output by dh. The slopes of layers m+1..L-1 follow:
 * s_l += dh c_l with c_{m+1} = W_{m+1}[:, i] and c_{l+1} = W_{l+1} (mk_l ⊙ c_l), the column of the Jacobian of
 * layer l's pre-activations with respect to h_m[i]. When qp is given (m < T = L-2), also the row i of the map
 * from layer T down to layer m applied to the pending sums: *qp = (mk_T ⊙ c_T)·pa, *qb = (mk_T ⊙ c_T)·pb. */
static void fwd_chain(const NetObject *M, work_t *W, Py_ssize_t m, Py_ssize_t i, double dh, double *qp,
                      double *qb) {
    const Py_ssize_t nl = M->nl, top = nl - 2;
    const double *cur = M->wt[m + 1] + i * M->h[m + 1];
    double *bufs[2] = {W->t[0], W->t[1]};
    int side = 0;
    for (Py_ssize_t l = m + 1; l <= nl - 1; l++) {
        const Py_ssize_t hn = M->h[l];
        if (l > m + 1) { /* c_l = W_l (mk_{l-1} ⊙ c_{l-1}), by the columns of W_l */
            const Py_ssize_t hp = M->h[l - 1];
            const double *restrict mk = W->mk[l - 1];
            const double *restrict wt = M->wt[l];
            double *restrict nxt = bufs[side];
            side ^= 1;
            for (Py_ssize_t j = 0; j < hn; j++) nxt[j] = 0.0;
            for (Py_ssize_t q = 0; q < hp; q++) {
                const double cq = mk[q] * cur[q];
                if (cq == 0.0) continue; /* an inactive ReLU passes nothing on */
                const double *restrict row = wt + q * hn;
                for (Py_ssize_t j = 0; j < hn; j++) nxt[j] += cq * row[j];
            }
            cur = nxt;
        }
        double *restrict s = W->s[l];
        for (Py_ssize_t j = 0; j < hn; j++) s[j] += dh * cur[j];
        if (l == top && qp) {
            const double *restrict mk = W->mk[top];
            double a = 0.0, b = 0.0;
            for (Py_ssize_t j = 0; j < hn; j++) {
                const double cj = mk[j] * cur[j];
                a += cj * W->pa[j];
                b += cj * W->pb[j];
            }
            *qp = a;
            *qb = b;
        }
    }
}

/* The pending sums of the last hidden layer's crossings (pa: Σ δγ_T, pb: Σ τ δγ_T) pushed down to layer 0 through
 * the current masks: aa += M pa, bb += M pb with M = W_1ᵀ D_1 ⋯ W_Tᵀ D_T (L >= 3; once per path, at its end). */
static void flush(const NetObject *M, work_t *W) {
    if (!W->dirty) return;
    W->dirty = 0;
    const Py_ssize_t top = M->nl - 2;
    const double *ca = W->pa, *cb = W->pb;
    double *bufa[2] = {W->t[0], W->t[2]}, *bufb[2] = {W->t[1], W->t[3]};
    int side = 0;
    for (Py_ssize_t l = top; l >= 1; l--) {
        const Py_ssize_t hl = M->h[l], hp = M->h[l - 1];
        double *restrict na = l >= 2 ? bufa[side] : W->aa, *restrict nb = l >= 2 ? bufb[side] : W->bb;
        const double *restrict mk = W->mk[l];
        if (l >= 2)
            for (Py_ssize_t q = 0; q < hp; q++) na[q] = nb[q] = 0.0;
        for (Py_ssize_t j = 0; j < hl; j++) {
            const double xa = mk[j] * ca[j], xb = mk[j] * cb[j];
            if (xa == 0.0 && xb == 0.0) continue;
            const double *restrict row = M->w[l] + j * hp;
            for (Py_ssize_t q = 0; q < hp; q++) {
                na[q] += xa * row[q];
                nb[q] += xb * row[q];
            }
        }
        ca = na;
        cb = nb;
        side ^= 1;
    }
}

/* Unit j of layer m (1 <= m <= T) changed its mask at tau. Along r_{m-1} = W_m[j, :], r_{l-1} = W_lᵀ (mk_l ⊙ r_l):
 * γb_l += ca r_l for 1 <= l < m, then aa += ca r_0 and bb += cb r_0. */
static void bwd_chain(const NetObject *M, work_t *W, Py_ssize_t m, Py_ssize_t j, double ca, double cb) {
    const double *cur = M->w[m] + j * M->h[m - 1];
    double *bufs[2] = {W->t[0], W->t[1]};
    int side = 0;
    for (Py_ssize_t l = m - 1;; l--) { /* cur = r_l, of width h[l] */
        const Py_ssize_t hn = M->h[l];
        if (l == 0) {
            double *restrict aa = W->aa, *restrict bb = W->bb;
            for (Py_ssize_t q = 0; q < hn; q++) {
                aa[q] += ca * cur[q];
                bb[q] += cb * cur[q];
            }
            return;
        }
        double *restrict g = W->gm[l];
        for (Py_ssize_t q = 0; q < hn; q++) g[q] += ca * cur[q];
        const Py_ssize_t hp = M->h[l - 1];
        const double *restrict mk = W->mk[l];
        double *restrict nxt = bufs[side];
        side ^= 1;
        for (Py_ssize_t q = 0; q < hp; q++) nxt[q] = 0.0;
        for (Py_ssize_t i = 0; i < hn; i++) {
            const double ci = mk[i] * cur[i];
            if (ci == 0.0) continue;
            const double *restrict row = M->w[l] + i * hp;
            for (Py_ssize_t q = 0; q < hp; q++) nxt[q] += ci * row[q];
        }
        cur = nxt;
    }
}

/* the last hidden layer over [tprev, tprev + seg]: advance its values h (previous ones into vp), integrate its sign
 * changes, in any order, into pa and pb (the rows of vt times ±(1 − slope), and times their time); returns
 * whether any unit changed sign */
static inline __attribute__((always_inline)) int last_pass(Py_ssize_t hn, Py_ssize_t hp, double *restrict h,
                                                           double *restrict vp, const double *restrict slope,
                                                           unsigned char *restrict fl, double *restrict pa,
                                                           double *restrict pb, const double *restrict vt,
                                                           double keep, double tprev, double seg) {
    const Py_ssize_t nwords = (hn + 7) / 8;
    int any = 0;
    for (Py_ssize_t j = 0; j < hn; j++) {
        const double v0 = h[j];
        const double v1 = v0 + slope[j] * seg;
        vp[j] = v0;
        h[j] = v1;
        fl[j] = (unsigned char)((v0 > 0.0) != (v1 > 0.0));
    }
    for (Py_ssize_t w = 0; w < nwords; w++) {
        uint64_t word;
        memcpy(&word, fl + 8 * w, 8);
        if (!word) continue; /* eight units without a sign change */
        any = 1;
        /* the units that changed, in increasing order, one per set byte (a flag is 0 or 1): no branch per unit */
        for (; word; word = drop_first_flag(word)) {
            const Py_ssize_t j = 8 * w + first_flag(word);
            if (j >= hn) break; /* padding */
            const double v0 = vp[j], v1 = h[j];
            const double tau = tprev + seg * (v0 / (v0 - v1));
            const double sg = (v1 > 0.0 ? 1.0 : -1.0) * keep; /* the mask's change: ±1 for a ReLU */
            const double st = sg * tau;
            const double *vrow = vt + j * hp;
            for (Py_ssize_t i = 0; i < hp; i++) {
                pa[i] += sg * vrow[i];
                pb[i] += st * vrow[i];
            }
        }
    }
    return any;
}

/* last_pass on the network's last hidden layer, its crossings pending at layer L-2 (L >= 3) */
static inline __attribute__((always_inline)) void last_pass_net(const NetObject *M, work_t *W, double tprev,
                                                                double seg) {
    const Py_ssize_t l = M->nl - 1;
    if (last_pass(M->h[l], M->h[l - 1], W->v[l], W->vp[l], W->s[l], W->fl[l], W->pa, W->pb, M->vt,
                  1.0 - M->slope[l], tprev, seg))
        W->dirty = 1;
}

/* a hidden layer m below the last (1 <= m <= L-2) over [t0, t1]: its sign changes, in order, cut the interval
 * for the layers above */
GSHAP_CLONES
static void mid_pass(const NetObject *M, work_t *W, Py_ssize_t m, double t0, double t1) {
    const Py_ssize_t hn = M->h[m];
    const double seg = t1 - t0;
    double *restrict h = W->v[m], *restrict vp = W->vp[m], *restrict slope = W->s[m];
    double *restrict cand = W->cand[m], *restrict key = W->key[m];
    Py_ssize_t *restrict cidx = W->cidx[m], *restrict tidx = W->tidx[m];
    Py_ssize_t ne = 0;
    for (Py_ssize_t j = 0; j < hn; j++) {
        const double v0 = h[j];
        const double v1 = v0 + slope[j] * seg;
        vp[j] = v0;
        h[j] = v1;
        if ((v0 > 0.0) != (v1 > 0.0)) {
            double tau = t0 + seg * (v0 / (v0 - v1));
            tau = tau > t1 ? t1 : (tau < t0 ? t0 : tau); /* rounding never leaves the interval */
            cand[ne] = tau;
            cidx[ne] = j;
            ne++;
        }
    }
    rank_sort(cand, cidx, ne, key, tidx);
    const double a = M->slope[m];
    double tprev = t0;
    for (Py_ssize_t q = 0; q <= ne; q++) {
        const double tq = q < ne ? key[q] : t1;
        if (m + 1 == M->nl - 1)
            last_pass_net(M, W, tprev, tq - tprev);
        else
            mid_pass(M, W, m + 1, tprev, tq);
        tprev = tq;
        if (q < ne) {
            const Py_ssize_t j = tidx[q];
            const double now = h[j] > 0.0 ? 1.0 : a, before = h[j] > 0.0 ? a : 1.0;
            const double dm = now - before;
            /* γ_m[j] = γb_m[j] + qp: its base part and the pending crossings' (see exact_kernel.py) */
            double qp = 0.0, qb = 0.0;
            if (m == M->nl - 2) {
                qp = W->pa[j];
                qb = W->pb[j];
                fwd_chain(M, W, m, j, dm * slope[j], NULL, NULL);
            } else {
                fwd_chain(M, W, m, j, dm * slope[j], &qp, &qb);
            }
            const double gb = W->gm[m][j];
            bwd_chain(M, W, m, j, dm * gb, dm * (tq * (gb + qp) - qb));
            W->mk[m][j] = now;
        }
    }
}

/* Two hidden layers: the two-layer kernel (record_attr above) with the layers' negative slopes a0 and a1; with
 * a0 = a1 = 0 every operation is the same, so the answers are the same bits. */
GSHAP_CLONES
static void net_record2(const double *restrict x, const double *restrict w1, const double *restrict db,
                        const double *restrict ab, const unsigned char *restrict m0, const double *restrict w2t,
                        const double *restrict vt, const double *restrict h0, const double *restrict u0,
                        const double *restrict p, const double *restrict c, const double *restrict bw,
                        const double *restrict bl, double a0, double a1, const scratch_t *s, const dims_t *dm,
                        double *restrict out) {
    const Py_ssize_t nf = dm->f, h1n = dm->h1, h2n = dm->h2, kn = dm->k;
    const Py_ssize_t nwords = (h2n + 7) / 8;
    double *restrict wx = s->wx, *restrict d = s->d, *restrict tt = s->tt, *restrict aa = s->a;
    double *restrict bb = s->b, *restrict g1 = s->g1, *restrict key = s->key;
    double *restrict slope = s->slope, *restrict h = s->h, *restrict hp = s->hp;
    Py_ssize_t *restrict tidx = s->tidx, *restrict cidx = s->cidx;
    double *restrict cand = s->cand, *restrict integ = s->integ;
    unsigned char *restrict fl = s->fl;
    const double keep = 1.0 - a1, keep0 = 1.0 - a0; /* 1 for a ReLU: the products below are then exact */

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
                /* the units that changed, in increasing order, one per set byte: no branch per unit */
                for (; word; word = drop_first_flag(word)) {
                    const Py_ssize_t j = 8 * w + first_flag(word);
                    if (j >= h2n) break; /* padding */
                    const double v0 = hp[j], v1 = h[j];
                    const double tau = tprev + seg * (v0 / (v0 - v1));
                    const double sg = (v1 > 0.0 ? 1.0 : -1.0) * keep; /* ±1 for a ReLU */
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
                const double coef = (m0k[i] ? -d[i] : d[i]) * keep0;
                const double *wrow = w2t + i * h2n;
                for (Py_ssize_t j = 0; j < h2n; j++) slope[j] += coef * wrow[j];
            }
        }
        if (a0 == 0.0) {
            for (Py_ssize_t i = 0; i < h1n; i++) {
                const double u1 = aa[i] - bb[i]; /* U_i(1) */
                if (m0k[i])
                    g1[i] = (d[i] < 0.0 && tt[i] < 1.0) ? g1[i] : u1;
                else
                    g1[i] = (d[i] > 0.0 && tt[i] < 1.0) ? (u1 - g1[i]) : 0.0;
            }
        } else { /* a leaky unit passes a0 of the gradient where it is off */
            for (Py_ssize_t i = 0; i < h1n; i++) {
                const double u1 = aa[i] - bb[i], ut = g1[i];
                if (m0k[i])
                    g1[i] = (d[i] < 0.0 && tt[i] < 1.0) ? ut + a0 * (u1 - ut) : u1;
                else
                    g1[i] = (d[i] > 0.0 && tt[i] < 1.0) ? a0 * ut + (u1 - ut) : a0 * u1;
            }
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

/* a record's attributions, any depth but two hidden layers (which net_record2 computes) */
GSHAP_CLONES
static void net_record(const NetObject *M, const double *restrict x, work_t *W, double *restrict out) {
    const Py_ssize_t nf = M->f, h1n = M->h[0], kn = M->k, nl = M->nl;
    const Py_ssize_t h2n = nl >= 2 ? M->h[1] : 0;
    const double *restrict w1 = M->w[0];
    double *restrict wx = W->wx, *restrict d = W->d, *restrict tt = W->tt;
    double *aa = W->aa, *bb = W->bb; /* not restrict: the walk's helpers reach them through W */
    double *restrict g1 = W->g1, *restrict key = W->key0, *restrict cand = W->cand0;
    Py_ssize_t *restrict tidx = W->tidx0, *restrict cidx = W->cidx0;
    double *restrict integ = W->integ;
    const double a0 = M->slope[0];

    for (Py_ssize_t i = 0; i < h1n; i++) {
        double acc = 0.0;
        for (Py_ssize_t f = 0; f < nf; f++) acc += w1[i * nf + f] * x[f];
        wx[i] = acc;
    }
    for (Py_ssize_t f = 0; f < nf; f++) out[f] = 0.0;

    for (Py_ssize_t k = 0; k < kn; k++) {
        const double *dbk = M->db + k * h1n, *abk = M->ab + k * h1n, *u0k = M->u0 + k * h1n;
        const unsigned char *m0k = M->m0 + k * h1n;
        /* layer-0 slopes and toggle times; the toggling units sorted by time */
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
        rank_sort(cand, cidx, ne, key, tidx);
        if (nl >= 2) { /* layer-1 slope on the first segment (P_k x − c_k) and the state of every layer at α = 0 */
            const double *pk = M->p + k * h2n * nf, *ck = M->c + k * h2n, *h0k = M->h0[1] + k * h2n;
            double *slope = W->s[1], *h = W->v[1]; /* not restrict: the walk's helpers reach them through W */
            for (Py_ssize_t j = 0; j < h2n; j++) {
                slope[j] = -ck[j];
                h[j] = h0k[j];
            }
            for (Py_ssize_t f = 0; f < nf; f++) {
                const double xf = x[f];
                const double *prow = pk + f * h2n;
                for (Py_ssize_t j = 0; j < h2n; j++) slope[j] += prow[j] * xf;
            }
            for (Py_ssize_t l = 1; l <= nl - 2; l++) {
                const double al = M->slope[l];
                const double *vl = W->v[l];
                double *restrict mk = W->mk[l];
                for (Py_ssize_t j = 0; j < M->h[l]; j++) mk[j] = vl[j] > 0.0 ? 1.0 : al;
                memcpy(W->gm[l], M->gam[l] + k * M->h[l], sizeof(double) * (size_t)M->h[l]);
                /* the next layer's values at α = 0 and its slope on the first segment */
                const Py_ssize_t hn = M->h[l + 1];
                memcpy(W->v[l + 1], M->h0[l + 1] + k * hn, sizeof(double) * (size_t)hn);
                double *restrict sn = W->s[l + 1];
                const double *sl = W->s[l];
                for (Py_ssize_t j = 0; j < hn; j++) sn[j] = 0.0;
                for (Py_ssize_t q = 0; q < M->h[l]; q++) {
                    const double cq = mk[q] * sl[q];
                    if (cq == 0.0) continue;
                    const double *row = M->wt[l + 1] + q * hn;
                    for (Py_ssize_t j = 0; j < hn; j++) sn[j] += cq * row[j];
                }
            }
            if (nl >= 3)
                for (Py_ssize_t q = 0; q < M->h[nl - 2]; q++) W->pa[q] = W->pb[q] = 0.0;
        }
        W->dirty = 0;
        for (Py_ssize_t i = 0; i < h1n; i++) {
            aa[i] = u0k[i];
            bb[i] = 0.0;
            g1[i] = 0.0;
        }
        double tprev = 0.0;
        for (Py_ssize_t q = 0; q <= ne; q++) {
            const double tq = q < ne ? key[q] : 1.0;
            const double seg = tq - tprev;
            (void)seg;
            if (nl >= 3)
                mid_pass(M, W, 1, tprev, tq);
            tprev = tq;
            if (q < ne) {
                const Py_ssize_t i = tidx[q];
                const double coef = (m0k[i] ? -d[i] : d[i]) * (1.0 - a0);
                if (nl >= 3) { /* U_i(t_i) with the pending crossings: (M pa)_i, (M pb)_i */
                    double qp = 0.0, qb = 0.0;
                    fwd_chain(M, W, 0, i, coef, &qp, &qb);
                    g1[i] = (aa[i] + qp) * tq - (bb[i] + qb);
                } else {
                    g1[i] = aa[i] * tq - bb[i];
                }
            }
        }
        if (nl >= 3) flush(M, W);
        if (a0 == 0.0) {
            for (Py_ssize_t i = 0; i < h1n; i++) {
                const double u1 = aa[i] - bb[i]; /* U_i(1) */
                if (m0k[i])
                    g1[i] = (d[i] < 0.0 && tt[i] < 1.0) ? g1[i] : u1;
                else
                    g1[i] = (d[i] > 0.0 && tt[i] < 1.0) ? (u1 - g1[i]) : 0.0;
            }
        } else {
            for (Py_ssize_t i = 0; i < h1n; i++) {
                const double u1 = aa[i] - bb[i], ut = g1[i];
                if (m0k[i])
                    g1[i] = (d[i] < 0.0 && tt[i] < 1.0) ? ut + a0 * (u1 - ut) : u1;
                else
                    g1[i] = (d[i] > 0.0 && tt[i] < 1.0) ? a0 * ut + (u1 - ut) : a0 * u1;
            }
        }
        const double *bk = M->bl + k * nf;
        for (Py_ssize_t f = 0; f < nf; f++) integ[f] = 0.0;
        for (Py_ssize_t i = 0; i < h1n; i++) {
            const double gi = g1[i];
            const double *wrow = w1 + i * nf;
            for (Py_ssize_t f = 0; f < nf; f++) integ[f] += gi * wrow[f];
        }
        for (Py_ssize_t f = 0; f < nf; f++) out[f] += M->bw[k] * (x[f] - bk[f]) * integ[f];
    }
}

/* ---- Net: construction ------------------------------------------------------------------------------------ */

static void net_dealloc(NetObject *self) {
    PyMem_RawFree(self->mem);
    self->mem = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* a ≤ limit, with a·b and sums checked against overflow by the caller through this */
static int mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* the 2-D shape (or 1-D length, cols = -1) of a buffer, without format checks */
static int shape_of(PyObject *obj, const char *name, Py_ssize_t index, Py_ssize_t *r, Py_ssize_t *c, int *nd) {
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_C_CONTIGUOUS | PyBUF_ND) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s[%zd]: expected a C-contiguous float64 buffer", name, index);
        return -1;
    }
    *nd = v.ndim;
    *r = v.ndim >= 1 ? v.shape[0] : -1;
    *c = v.ndim == 2 ? v.shape[1] : -1;
    PyBuffer_Release(&v);
    return 0;
}

/* copy `count` float64 from obj (checked: C-contiguous, format 'd', exactly that size) to dst */
static int copy_f64(PyObject *obj, const char *name, Py_ssize_t index, Py_ssize_t count, double *dst) {
    bufs_t bs = {.n = 0};
    char label[64];
    if (index >= 0)
        snprintf(label, sizeof label, "%s[%zd]", name, index);
    else
        snprintf(label, sizeof label, "%s", name);
    const double *src = take(&bs, obj, label, count, 8, 0, NULL);
    if (!src) {
        release_all(&bs);
        return -1;
    }
    if (count) memcpy(dst, src, sizeof(double) * (size_t)count);
    release_all(&bs);
    return 0;
}

/* a list or tuple of exactly n items (a new reference to a fast sequence), or NULL naming the argument */
static PyObject *seq_of(PyObject *obj, const char *name, Py_ssize_t n) {
    if (!PyList_Check(obj) && !PyTuple_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a list or tuple", name);
        return NULL;
    }
    PyObject *s = PySequence_Fast(obj, name);
    if (!s) return NULL;
    if (n >= 0 && PySequence_Fast_GET_SIZE(s) != n) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items, got %zd", name, n, PySequence_Fast_GET_SIZE(s));
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

static int net_init(NetObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"weights", "biases", "slopes", "db", "ab", "m0", "p", "c",
                             "h0", "gamma", "u0", "vt", "bw", "b", NULL};
    enum { KW = 14 };
    PyObject *o[KW] = {NULL};
    if (PyTuple_GET_SIZE(args) != 0) {
        PyErr_SetString(PyExc_TypeError, "Net() takes its constants by keyword only");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$OOOOOOOOOOOOOO:Net", kwlist, &o[0], &o[1], &o[2], &o[3], &o[4],
                                     &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13]))
        return -1;
    for (int i = 0; i < KW; i++)
        if (!o[i]) {
            PyErr_Format(PyExc_TypeError, "Net() missing keyword argument '%s'", kwlist[i]);
            return -1;
        }
    if (self->mem) {
        PyErr_SetString(PyExc_TypeError, "Net: the constants are set once, at construction");
        return -1;
    }
    int rc = -1;
    void *mem = NULL;
    PyObject *ws = NULL, *bs = NULL, *ss = NULL, *hs = NULL, *gs = NULL;
    ws = seq_of(o[0], "weights", -1);
    if (!ws) goto done;
    const Py_ssize_t nl = PySequence_Fast_GET_SIZE(ws) - 1;
    if (nl < 1 || nl > NET_MAX_LAYERS) {
        PyErr_Format(PyExc_ValueError, "weights: expected 2 to %d matrices (1 to %d hidden layers), got %zd",
                     NET_MAX_LAYERS + 1, NET_MAX_LAYERS, nl + 1);
        goto done;
    }
    if (!(bs = seq_of(o[1], "biases", nl + 1)) || !(ss = seq_of(o[2], "slopes", nl)) ||
        !(hs = seq_of(o[8], "h0", nl - 1)) || !(gs = seq_of(o[9], "gamma", nl >= 2 ? nl - 2 : 0)))
        goto done;
    /* dimensions: F and H_l from the weights, K from bw; every width in [1, 2^24] */
    Py_ssize_t h[NET_MAX_LAYERS + 1], f = 0, k = 0, prev = 0;
    for (Py_ssize_t l = 0; l <= nl; l++) {
        Py_ssize_t r, c;
        int nd;
        if (shape_of(PySequence_Fast_GET_ITEM(ws, l), "weights", l, &r, &c, &nd) < 0) goto done;
        if (l == 0) prev = f = c;
        const Py_ssize_t want_r = l == nl ? 1 : r;
        if (nd != 2 || r < 1 || c < 1 || r > (1 << 24) || c > (1 << 24) || c != prev || r != want_r) {
            PyErr_Format(PyExc_ValueError,
                         "weights[%zd]: expected a (%s, %zd) matrix, got %d dimensions (%zd, %zd)", l,
                         l == nl ? "1" : "H", prev, nd, r, c);
            goto done;
        }
        h[l] = r;
        prev = r;
    }
    {
        Py_ssize_t r, c;
        int nd;
        if (shape_of(o[12], "bw", -1, &r, &c, &nd) < 0) goto done;
        if (nd != 1 || r < 1 || r > (1 << 24)) {
            PyErr_SetString(PyExc_ValueError, "bw: expected (K,) baseline weights, K >= 1");
            goto done;
        }
        k = r;
    }
    const Py_ssize_t h1 = nl >= 2 ? h[1] : 0;
    /* sizes of every constant, in float64 items, overflow-checked */
    size_t total = 0, n = 0, hmax = (size_t)f;
    int ok = 1;
    for (Py_ssize_t l = 0; l <= nl; l++) {
        const size_t in = (size_t)(l ? h[l - 1] : f);
        ok &= mul_ok((size_t)h[l], in, &n);
        total += (l ? 2 : 1) * n + (size_t)h[l]; /* W_l (and W_l transposed), c_l */
        if ((size_t)h[l] > hmax) hmax = (size_t)h[l];
    }
    size_t sz_h0 = 0, sz_g = 0, sz_p = 0, sz_k0 = 0, sz_vt = 0;
    for (Py_ssize_t l = 1; l < nl; l++) {
        ok &= mul_ok((size_t)k, (size_t)h[l], &n);
        sz_h0 += n;
        if (l <= nl - 2) sz_g += n;
    }
    ok &= mul_ok((size_t)k, (size_t)h[0], &sz_k0);
    ok &= mul_ok((size_t)k * (size_t)f, (size_t)h1, &sz_p) && mul_ok((size_t)k, (size_t)f, &n);
    ok &= mul_ok((size_t)(nl >= 2 ? h[nl - 1] : 0), (size_t)(nl >= 2 ? h[nl - 2] : 0), &sz_vt);
    total += sz_h0 + sz_g + 3 * sz_k0 + sz_p + (size_t)k * (size_t)h1 + sz_vt + (size_t)k + n + (size_t)nl;
    if (!ok || total > ((size_t)1 << 34) / sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "Net: the constants would take more than 16 GiB");
        goto done;
    }
    mem = PyMem_RawMalloc(total * sizeof(double) + sz_k0 + 8);
    if (!mem) {
        PyErr_NoMemory();
        goto done;
    }
    double *at = mem;
    for (Py_ssize_t l = 0; l <= nl; l++) {
        const Py_ssize_t in = l ? h[l - 1] : f;
        self->w[l] = at;
        if (copy_f64(PySequence_Fast_GET_ITEM(ws, l), "weights", l, h[l] * in, at) < 0) goto done;
        at += h[l] * in;
        if (l) { /* the transpose: its columns are read as rows when a unit below changes its slope */
            self->wt[l] = at;
            for (Py_ssize_t r = 0; r < h[l]; r++)
                for (Py_ssize_t q = 0; q < in; q++) at[q * h[l] + r] = self->w[l][r * in + q];
            at += h[l] * in;
        } else {
            self->wt[l] = NULL;
        }
        self->bias[l] = at;
        if (copy_f64(PySequence_Fast_GET_ITEM(bs, l), "biases", l, h[l], at) < 0) goto done;
        at += h[l];
    }
    for (Py_ssize_t l = 0; l < nl; l++) {
        const double a = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(ss, l));
        if (a == -1.0 && PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "slopes[%zd]: expected a float", l);
            goto done;
        }
        if (!isfinite(a)) {
            PyErr_Format(PyExc_ValueError, "slopes[%zd]: expected a finite negative slope", l);
            goto done;
        }
        self->slope[l] = a;
    }
    self->h0[0] = self->gam[0] = NULL;
    for (Py_ssize_t l = 1; l < nl; l++) {
        self->h0[l] = at;
        if (copy_f64(PySequence_Fast_GET_ITEM(hs, l - 1), "h0", l - 1, k * h[l], at) < 0) goto done;
        at += k * h[l];
        self->gam[l] = NULL;
        if (l <= nl - 2) {
            self->gam[l] = at;
            if (copy_f64(PySequence_Fast_GET_ITEM(gs, l - 1), "gamma", l - 1, k * h[l], at) < 0) goto done;
            at += k * h[l];
        }
    }
    struct {
        int kw;
        const char *name;
        Py_ssize_t count;
        double **dst;
    } flat[] = {
        {3, "db", k * h[0], &self->db},       {4, "ab", k * h[0], &self->ab},     {6, "p", k * f * h1, &self->p},
        {7, "c", k * h1, &self->c},           {10, "u0", k * h[0], &self->u0},
        {11, "vt", nl >= 2 ? h[nl - 1] * h[nl - 2] : 0, &self->vt},
        {12, "bw", k, &self->bw},             {13, "b", k * f, &self->bl},
    };
    for (size_t i = 0; i < sizeof flat / sizeof flat[0]; i++) {
        *flat[i].dst = at;
        if (copy_f64(o[flat[i].kw], flat[i].name, -1, flat[i].count, at) < 0) goto done;
        at += flat[i].count;
    }
    {
        bufs_t bm = {.n = 0};
        const unsigned char *m0 = take(&bm, o[5], "m0", k * h[0], 1, 0, NULL);
        if (!m0) {
            release_all(&bm);
            goto done;
        }
        self->m0 = (unsigned char *)at;
        for (Py_ssize_t i = 0; i < k * h[0]; i++) self->m0[i] = m0[i] != 0;
        release_all(&bm);
    }
    self->nl = nl;
    self->f = f;
    self->k = k;
    self->hmax = (Py_ssize_t)hmax;
    for (Py_ssize_t l = 0; l <= nl; l++) self->h[l] = h[l];
    self->mem = mem;
    mem = NULL;
    rc = 0;
done:
    PyMem_RawFree(mem);
    Py_XDECREF(ws);
    Py_XDECREF(bs);
    Py_XDECREF(ss);
    Py_XDECREF(hs);
    Py_XDECREF(gs);
    return rc;
}

static int net_ready(NetObject *self) {
    if (!self->mem) {
        PyErr_SetString(PyExc_TypeError, "Net: not initialised");
        return 0;
    }
    return 1;
}

/* ---- Net: calls --------------------------------------------------------------------------------------------- */

/* one call's scratch, in one allocation (freed by the caller with PyMem_RawFree(*block)) */
static int work_alloc(const NetObject *M, work_t *W, void **block) {
    const Py_ssize_t h0 = M->h[0] + 1, hm = M->hmax + 1;
    size_t nd = 8 * (size_t)h0 + (size_t)M->f + 4 * (size_t)hm + 2 * (size_t)hm + 2;
    size_t ni = 2 * (size_t)h0, nb = 0;
    for (Py_ssize_t l = 1; l < M->nl; l++) {
        nd += 7 * (size_t)(M->h[l] + 1);
        ni += 2 * (size_t)(M->h[l] + 1);
        nb += 8 * (size_t)((M->h[l] + 7) / 8) + 8;
    }
    const size_t bytes = nd * sizeof(double) + ni * sizeof(Py_ssize_t) + nb + 8;
    char *mem = NULL;
    if (posix_memalign((void **)&mem, 64, bytes) != 0) return -1;
    memset(mem, 0, bytes);
    *block = mem;
    double *at = (double *)mem;
    double **one[] = {&W->wx, &W->d, &W->tt, &W->aa, &W->bb, &W->g1, &W->key0, &W->cand0};
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++) {
        *one[i] = at;
        at += h0;
    }
    W->integ = at;
    at += M->f;
    for (int i = 0; i < 4; i++) {
        W->t[i] = at;
        at += hm;
    }
    for (Py_ssize_t l = 1; l < M->nl; l++) {
        const Py_ssize_t hl = M->h[l] + 1;
        double **per[] = {&W->v[l], &W->vp[l], &W->s[l], &W->mk[l], &W->gm[l], &W->cand[l], &W->key[l]};
        for (size_t i = 0; i < sizeof per / sizeof per[0]; i++) {
            *per[i] = at;
            at += hl;
        }
    }
    W->pa = M->nl >= 3 ? at : W->aa;
    W->pb = M->nl >= 3 ? at + hm : W->bb;
    at += 2 * hm; /* the logits' two activations share this room with pa and pb (never at the same time) */
    at += 2;
    Py_ssize_t *ix = (Py_ssize_t *)at;
    W->tidx0 = ix;
    W->cidx0 = ix + h0;
    ix += 2 * h0;
    for (Py_ssize_t l = 1; l < M->nl; l++) {
        W->tidx[l] = ix;
        W->cidx[l] = ix + (M->h[l] + 1);
        ix += 2 * (M->h[l] + 1);
    }
    unsigned char *fb = (unsigned char *)ix;
    for (Py_ssize_t l = 1; l < M->nl; l++) {
        W->fl[l] = fb;
        fb += 8 * ((M->h[l] + 7) / 8) + 8;
    }
    W->dirty = 0;
    return 0;
}

static PyObject *net_logits(NetObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "logits(xs, out)");
        return NULL;
    }
    if (!net_ready(self)) return NULL;
    Py_ssize_t n = 0;
    bufs_t bs = {.n = 0};
    const double *xs = take(&bs, args[0], "xs", -self->f, 8, 0, &n);
    double *out = xs ? take(&bs, args[1], "out", n, 8, 1, NULL) : NULL;
    if (!out) {
        release_all(&bs);
        return NULL;
    }
    double *buf = PyMem_RawMalloc(sizeof(double) * 2 * (size_t)(self->hmax + 1));
    if (!buf) {
        release_all(&bs);
        return PyErr_NoMemory();
    }
    const Py_ssize_t f = self->f;
    double *b1 = buf + self->hmax + 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n; r++) out[r] = net_logit(self, xs + r * f, buf, b1);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(buf);
    release_all(&bs);
    Py_RETURN_NONE;
}

/* the attributions (n, f) and logits (n,) of the rows of xs, on W and buf (2 (hmax + 1) doubles): plain C, no
 * Python object touched, so that a caller may run it without the GIL (net_explain) or on a thread that never takes
 * it (Runner). A record's numbers do not depend on the scratch's history: the same bits alone or in any batch. */
static void net_rows(const NetObject *M, work_t *W, double *buf, const double *xs, Py_ssize_t n, double *attr,
                     double *logit) {
    const Py_ssize_t f = M->f;
    double *b1 = buf + M->hmax + 1;
    if (M->nl == 2) { /* the two-layer loop, on the same scratch (its arrays are at least as long as it needs) */
        const dims_t dm = {.n = n, .f = f, .h1 = M->h[0], .h2 = M->h[1], .k = M->k};
        const scratch_t s = {.wx = W->wx, .d = W->d, .tt = W->tt, .a = W->aa, .b = W->bb, .g1 = W->g1,
                             .key = W->key0, .slope = W->s[1], .h = W->v[1], .hp = W->vp[1], .tidx = W->tidx0,
                             .cidx = W->cidx0, .cand = W->cand0, .integ = W->integ, .fl = W->fl[1]};
        for (Py_ssize_t r = 0; r < n; r++) {
            const double *x = xs + r * f;
            logit[r] = net_logit(M, x, buf, b1);
            net_record2(x, M->w[0], M->db, M->ab, M->m0, M->wt[1], M->vt, M->h0[1], M->u0, M->p, M->c, M->bw,
                        M->bl, M->slope[0], M->slope[1], &s, &dm, attr + r * f);
        }
    } else {
        for (Py_ssize_t r = 0; r < n; r++) {
            const double *x = xs + r * f;
            logit[r] = net_logit(M, x, buf, b1);
            net_record(M, x, W, attr + r * f);
        }
    }
}

/* xs, attr and logit of an explain call, checked by name (views in bs, released by the caller) */
static int explain_args(NetObject *self, bufs_t *bs, PyObject *const *args, const double **xs, double **attr,
                        double **logit, Py_ssize_t *n) {
    const Py_ssize_t f = self->f;
    *xs = take(bs, args[0], "xs", -f, 8, 0, n);
    *attr = *xs ? take(bs, args[1], "attr", *n * f, 8, 1, NULL) : NULL;
    *logit = *attr ? take(bs, args[2], "logit", *n, 8, 1, NULL) : NULL;
    return *logit != NULL;
}

static PyObject *net_explain(NetObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "explain(xs, attr, logit)");
        return NULL;
    }
    if (!net_ready(self)) return NULL;
    Py_ssize_t n = 0;
    bufs_t bs = {.n = 0};
    const double *xs;
    double *attr, *logit;
    if (!explain_args(self, &bs, args, &xs, &attr, &logit, &n)) {
        release_all(&bs);
        return NULL;
    }
    work_t W;
    void *block = NULL;
    double *buf = PyMem_RawMalloc(sizeof(double) * 2 * (size_t)(self->hmax + 1));
    if (!buf || work_alloc(self, &W, &block) < 0) {
        PyMem_RawFree(buf);
        release_all(&bs);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    net_rows(self, &W, buf, xs, n, attr, logit);
    Py_END_ALLOW_THREADS
    free(block);
    PyMem_RawFree(buf);
    release_all(&bs);
    Py_RETURN_NONE;
}

static PyObject *net_get_dims(NetObject *self, void *closure) {
    (void)closure;
    if (!net_ready(self)) return NULL;
    PyObject *hidden = PyList_New(self->nl);
    if (!hidden) return NULL;
    for (Py_ssize_t l = 0; l < self->nl; l++) {
        PyObject *v = PyLong_FromSsize_t(self->h[l]);
        if (!v) {
            Py_DECREF(hidden);
            return NULL;
        }
        PyList_SET_ITEM(hidden, l, v);
    }
    return Py_BuildValue("{s:n,s:N,s:n}", "features", self->f, "hidden", hidden, "baselines", self->k);
}

static PyObject *net_get_slopes(NetObject *self, void *closure) {
    (void)closure;
    if (!net_ready(self)) return NULL;
    PyObject *out = PyList_New(self->nl);
    if (!out) return NULL;
    for (Py_ssize_t l = 0; l < self->nl; l++) {
        PyObject *v = PyFloat_FromDouble(self->slope[l]);
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, l, v);
    }
    return out;
}

static PyMethodDef net_methods[] = {
    {"logits", (PyCFunction)(void (*)(void))net_logits, METH_FASTCALL,
     "logits(xs, out): the logit of each row of xs (N, F) into out (N,), without the GIL."},
    {"explain", (PyCFunction)(void (*)(void))net_explain, METH_FASTCALL,
     "explain(xs, attr, logit): exact GradientSHAP attributions (N, F) and logits (N,) of each row of xs (N, F), "
     "without the GIL (see service.engine.exact_kernel)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef net_getset[] = {
    {"dims", (getter)net_get_dims, NULL, "{'features': F, 'hidden': [H_0, ..., H_{L-1}], 'baselines': K}", NULL},
    {"slopes", (getter)net_get_slopes, NULL, "[a_0, ..., a_{L-1}]: each hidden layer's negative slope", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject NetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "service.engine._exact.Net",
    .tp_doc = "Net(*, weights, biases, slopes, db, ab, m0, p, c, h0, gamma, u0, vt, bw, b): the constants of one "
              "folded network of affine maps and (leaky) ReLUs, any depth and widths, and its weighted baselines, "
              "checked and copied once (see service.engine.exact_kernel).",
    .tp_basicsize = sizeof(NetObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)net_init,
    .tp_dealloc = (destructor)net_dealloc,
    .tp_methods = net_methods,
    .tp_getset = net_getset,
};

/* ---- Runner: the kernel on threads of its own, which never take the GIL ------------------------------------
 *
 *   r = Runner(net, threads)       threads (>= 1) started at once; each has its own scratch
 *   r.submit(token, xs, attr, logit)   queue one call (the buffers are checked, and held until collected)
 *   r.fileno()                     a pipe that turns readable when calls are done (an event loop watches it)
 *   r.collect()                    the tokens of the calls done since the last collect, in the order they finished
 *   r.close()                      finish the queued calls, stop the threads (collect still returns their tokens)
 *
 * An explanation on a Python worker thread takes the GIL three times (to start the call, to return from it and to
 * hand the answer to the event loop), and each time waits for the loop to let go of it; here the threads compute
 * without ever taking it, and the loop's only costs are submit, one read of the pipe per wake-up, and collect. The
 * pipe gets one byte when the done list turns non-empty, not one per call. A token is any object, kept alive (and
 * touched) only by the methods above, which run with the GIL. */

typedef struct job {
    struct job *next;
    PyObject *token;
    bufs_t bs; /* the views of xs, attr and logit, released by collect (with the GIL) */
    const double *xs;
    double *attr, *logit;
    Py_ssize_t n;
} job_t;

typedef struct {
    PyObject_HEAD
    NetObject *net;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t *threads;
    int nthreads, started, stopping, signalled, sync_ok;
    job_t *queue, *queue_tail, *done, *done_tail;
    Py_ssize_t pending; /* submitted and not yet collected */
    int rfd, wfd;
} RunnerObject;

static void *runner_thread(void *arg) {
    RunnerObject *R = arg;
    const NetObject *M = R->net;
    work_t W;
    void *block = NULL;
    double *buf = PyMem_RawMalloc(sizeof(double) * 2 * (size_t)(M->hmax + 1));
    int ok = buf && work_alloc(M, &W, &block) == 0;
    pthread_mutex_lock(&R->mu);
    for (;;) {
        while (!R->queue && !R->stopping) pthread_cond_wait(&R->cv, &R->mu);
        job_t *j = R->queue;
        if (!j) break; /* stopping, and nothing left to do */
        R->queue = j->next;
        if (!R->queue) R->queue_tail = NULL;
        pthread_mutex_unlock(&R->mu);
        if (ok) {
            net_rows(M, &W, buf, j->xs, j->n, j->attr, j->logit);
        } else { /* no scratch (out of memory at start): NaN answers, which the service refuses as non-finite */
            for (Py_ssize_t q = 0; q < j->n * M->f; q++) j->attr[q] = NAN;
            for (Py_ssize_t r = 0; r < j->n; r++) j->logit[r] = NAN;
        }
        pthread_mutex_lock(&R->mu);
        j->next = NULL;
        if (R->done_tail)
            R->done_tail->next = j;
        else
            R->done = j;
        R->done_tail = j;
        if (!R->signalled) { /* the byte is written outside the lock: a system call must not hold up submit */
            R->signalled = 1;
            pthread_mutex_unlock(&R->mu);
            const char one = 1;
            ssize_t w;
            do w = write(R->wfd, &one, 1);
            while (w < 0 && errno == EINTR); /* EAGAIN: the pipe is full, so already readable */
            pthread_mutex_lock(&R->mu);
        }
    }
    pthread_mutex_unlock(&R->mu);
    free(block);
    PyMem_RawFree(buf);
    return NULL;
}

static void runner_stop(RunnerObject *R) {
    if (!R->started) return;
    pthread_mutex_lock(&R->mu);
    R->stopping = 1;
    pthread_cond_broadcast(&R->cv);
    pthread_mutex_unlock(&R->mu);
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < R->nthreads; i++) pthread_join(R->threads[i], NULL);
    Py_END_ALLOW_THREADS
    R->started = 0;
}

static void job_free(job_t *j) {
    release_all(&j->bs);
    Py_XDECREF(j->token);
    PyMem_RawFree(j);
}

static int runner_init(RunnerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"net", "threads", NULL};
    PyObject *net;
    int threads;
    if (self->net) {
        PyErr_SetString(PyExc_TypeError, "Runner: already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!i", kwlist, &NetType, &net, &threads)) return -1;
    if (threads < 1 || threads > 256) {
        PyErr_Format(PyExc_ValueError, "threads: expected 1 to 256, got %d", threads);
        return -1;
    }
    if (!net_ready((NetObject *)net)) return -1;
    int fds[2];
    if (pipe(fds) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        int fl = fcntl(fds[i], F_GETFL);
        if (fl < 0 || fcntl(fds[i], F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fds[i], F_SETFD, FD_CLOEXEC) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            close(fds[0]);
            close(fds[1]);
            return -1;
        }
    }
    self->rfd = fds[0];
    self->wfd = fds[1];
    self->threads = PyMem_RawCalloc((size_t)threads, sizeof(pthread_t));
    if (!self->threads || pthread_mutex_init(&self->mu, NULL) != 0 || pthread_cond_init(&self->cv, NULL) != 0) {
        PyErr_NoMemory();
        return -1; /* dealloc closes the pipe and frees the rest */
    }
    self->sync_ok = 1;
    Py_INCREF(net);
    self->net = (NetObject *)net;
    for (int i = 0; i < threads; i++) {
        int rc = pthread_create(&self->threads[i], NULL, runner_thread, self);
        if (rc != 0) {
            self->nthreads = i;
            self->started = i > 0;
            runner_stop(self);
            errno = rc;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        self->nthreads = i + 1;
        self->started = 1;
    }
    return 0;
}

static int runner_ready(RunnerObject *self) {
    if (!self->net) {
        PyErr_SetString(PyExc_TypeError, "Runner: not initialised");
        return 0;
    }
    return 1;
}

static PyObject *runner_submit(RunnerObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "submit(token, xs, attr, logit)");
        return NULL;
    }
    if (!runner_ready(self)) return NULL;
    if (!self->started || self->stopping) {
        PyErr_SetString(PyExc_RuntimeError, "Runner: closed");
        return NULL;
    }
    job_t *j = PyMem_RawCalloc(1, sizeof(job_t));
    if (!j) return PyErr_NoMemory();
    if (!explain_args(self->net, &j->bs, args + 1, &j->xs, &j->attr, &j->logit, &j->n)) {
        job_free(j);
        return NULL;
    }
    Py_INCREF(args[0]);
    j->token = args[0];
    pthread_mutex_lock(&self->mu);
    if (self->queue_tail)
        self->queue_tail->next = j;
    else
        self->queue = j;
    self->queue_tail = j;
    self->pending++;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    Py_RETURN_NONE;
}

static PyObject *runner_collect(RunnerObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!runner_ready(self)) return NULL;
    /* the pipe first, then the list: a call that finishes in between is in the list, one after it writes anew */
    char sink[64];
    while (read(self->rfd, sink, sizeof sink) > 0) {
    }
    pthread_mutex_lock(&self->mu);
    job_t *j = self->done;
    self->done = self->done_tail = NULL;
    self->signalled = 0;
    pthread_mutex_unlock(&self->mu);
    PyObject *out = PyList_New(0);
    while (j) {
        job_t *next = j->next;
        if (out && PyList_Append(out, j->token) < 0) Py_CLEAR(out);
        self->pending--;
        job_free(j);
        j = next;
    }
    return out;
}

static PyObject *runner_fileno(RunnerObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!runner_ready(self)) return NULL;
    return PyLong_FromLong(self->rfd);
}

static PyObject *runner_close(RunnerObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!runner_ready(self)) return NULL;
    runner_stop(self);
    self->stopping = 1;
    Py_RETURN_NONE;
}

static PyObject *runner_get_pending(RunnerObject *self, void *closure) {
    (void)closure;
    if (!runner_ready(self)) return NULL;
    return PyLong_FromSsize_t(self->pending);
}

static PyObject *runner_get_threads(RunnerObject *self, void *closure) {
    (void)closure;
    if (!runner_ready(self)) return NULL;
    return PyLong_FromLong(self->started ? self->nthreads : 0);
}

static void runner_dealloc(RunnerObject *self) {
    runner_stop(self);
    for (job_t *lists[2] = {self->queue, self->done}, **l = lists; l < lists + 2; l++) {
        for (job_t *j = *l; j;) {
            job_t *next = j->next;
            job_free(j);
            j = next;
        }
    }
    if (self->sync_ok) {
        pthread_cond_destroy(&self->cv);
        pthread_mutex_destroy(&self->mu);
    }
    if (self->threads) PyMem_RawFree(self->threads);
    if (self->rfd >= 0) close(self->rfd);
    if (self->wfd >= 0) close(self->wfd);
    Py_XDECREF(self->net);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef runner_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))runner_submit, METH_FASTCALL,
     "submit(token, xs, attr, logit): queue Net.explain(xs, attr, logit) for the threads; the buffers are checked "
     "now and held until the call is collected."},
    {"collect", (PyCFunction)runner_collect, METH_NOARGS,
     "collect() -> list: the tokens of the calls done since the last collect, in the order they finished (their "
     "attr and logit are written); drains the pipe."},
    {"fileno", (PyCFunction)runner_fileno, METH_NOARGS,
     "fileno() -> int: the read end of a non-blocking pipe that turns readable when a call is done."},
    {"close", (PyCFunction)runner_close, METH_NOARGS,
     "close(): finish the queued calls and stop the threads; later submits raise RuntimeError."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef runner_getset[] = {
    {"pending", (getter)runner_get_pending, NULL, "calls submitted and not yet collected", NULL},
    {"threads", (getter)runner_get_threads, NULL, "threads running (0 once closed)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *runner_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    RunnerObject *self = (RunnerObject *)PyType_GenericNew(type, args, kwds);
    if (self) self->rfd = self->wfd = -1;
    return (PyObject *)self;
}

static PyTypeObject RunnerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "service.engine._exact.Runner",
    .tp_doc = "Runner(net, threads): Net.explain on threads of its own that never take the GIL; calls are "
              "submitted, and collected when the pipe of fileno() turns readable.",
    .tp_basicsize = sizeof(RunnerObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = runner_new,
    .tp_init = (initproc)runner_init,
    .tp_dealloc = (destructor)runner_dealloc,
    .tp_methods = runner_methods,
    .tp_getset = runner_getset,
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_exact",
    .m_doc = "The exact GradientSHAP kernel in C (see service.engine.exact_kernel).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__exact(void) {
    if (PyType_Ready(&ModelType) < 0 || PyType_Ready(&NetType) < 0 || PyType_Ready(&RunnerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0) {
        Py_DECREF(&ModelType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&NetType);
    if (PyModule_AddObject(m, "Net", (PyObject *)&NetType) < 0) {
        Py_DECREF(&NetType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RunnerType);
    if (PyModule_AddObject(m, "Runner", (PyObject *)&RunnerType) < 0) {
        Py_DECREF(&RunnerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
