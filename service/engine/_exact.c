/*
 * service._exact: the exact GradientSHAP kernel of a two-hidden-layer ReLU net, in C, without the GIL.
 *
 * The algorithm and its notation are documented in service/exact_kernel.py, which owns the precomputed
 * constants and checks every shape before calling here. This file only does the arithmetic:
 *
 *   logits(xs, w1, b1, w2, b2, w3, b3, out)
 *   explain(xs, w1, b1, w2, b2, w3, b3, db, ab, m0, w2t, vt, h0, u0, p, c, bw, b, attr, logit)
 *
 * Every array argument is a C-contiguous buffer (float64, m0 uint8); the dimensions come from the buffer
 * sizes and are cross-checked here as well, so that a wrong call raises instead of reading out of bounds.
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

#define MAX_BUFS 20

typedef struct {
    Py_buffer views[MAX_BUFS];
    int n;
} bufs_t;

static void release_all(bufs_t *bs) {
    for (int i = 0; i < bs->n; i++) PyBuffer_Release(&bs->views[i]);
    bs->n = 0;
}

/* a C-contiguous buffer of `count` items of `itemsize` bytes (format 'd' or 'B'/'?'), writable if asked */
static void *take(bufs_t *bs, PyObject *obj, const char *name, Py_ssize_t count, Py_ssize_t itemsize,
                  int writable) {
    Py_buffer *v = &bs->views[bs->n];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, v, flags) < 0) return NULL;
    bs->n++;
    const char *fmt = v->format ? v->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    int ok_fmt = itemsize == 8 ? strcmp(fmt, "d") == 0 : (strcmp(fmt, "B") == 0 || strcmp(fmt, "?") == 0);
    if (!ok_fmt || v->itemsize != itemsize || v->len != count * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes, got format %s, %zd bytes", name,
                     count, itemsize, v->format ? v->format : "B", v->len);
        return NULL;
    }
    return v->buf;
}

static int dims_from(PyObject *const *args, dims_t *d) {
    /* xs (N*F), w1 (H1*F), w2 (H2*H1): N and F from xs's shape, H1 and H2 from w1's and w2's */
    Py_buffer x, w1, w2;
    if (PyObject_GetBuffer(args[0], &x, PyBUF_C_CONTIGUOUS | PyBUF_ND) < 0) return -1;
    if (PyObject_GetBuffer(args[1], &w1, PyBUF_C_CONTIGUOUS | PyBUF_ND) < 0) {
        PyBuffer_Release(&x);
        return -1;
    }
    if (PyObject_GetBuffer(args[3], &w2, PyBUF_C_CONTIGUOUS | PyBUF_ND) < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&w1);
        return -1;
    }
    int ok = x.ndim == 2 && w1.ndim == 2 && w2.ndim == 2 && x.shape[1] == w1.shape[1] && w2.shape[1] == w1.shape[0];
    if (ok) {
        d->n = x.shape[0];
        d->f = x.shape[1];
        d->h1 = w1.shape[0];
        d->h2 = w2.shape[0];
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&w1);
    PyBuffer_Release(&w2);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "xs (N, F), w1 (H1, F) and w2 (H2, H1) do not fit together");
        return -1;
    }
    return 0;
}

static PyObject *py_logits(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "logits(xs, w1, b1, w2, b2, w3, b3, out)");
        return NULL;
    }
    dims_t dm = {0};
    if (dims_from(args, &dm) < 0) return NULL;
    double b3 = PyFloat_AsDouble(args[6]);
    if (b3 == -1.0 && PyErr_Occurred()) return NULL;
    bufs_t bs = {.n = 0};
    const double *xs = take(&bs, args[0], "xs", dm.n * dm.f, 8, 0);
    const double *w1 = xs ? take(&bs, args[1], "w1", dm.h1 * dm.f, 8, 0) : NULL;
    const double *b1 = w1 ? take(&bs, args[2], "b1", dm.h1, 8, 0) : NULL;
    const double *w2 = b1 ? take(&bs, args[3], "w2", dm.h2 * dm.h1, 8, 0) : NULL;
    const double *b2 = w2 ? take(&bs, args[4], "b2", dm.h2, 8, 0) : NULL;
    const double *w3 = b2 ? take(&bs, args[5], "w3", dm.h2, 8, 0) : NULL;
    double *out = w3 ? take(&bs, args[7], "out", dm.n, 8, 1) : NULL;
    if (!out) {
        release_all(&bs);
        return NULL;
    }
    double *a1 = PyMem_RawMalloc(sizeof(double) * (size_t)(dm.h1 > 0 ? dm.h1 : 1));
    if (!a1) {
        release_all(&bs);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t n = 0; n < dm.n; n++) out[n] = logit_one(xs + n * dm.f, w1, b1, w2, b2, w3, b3, a1, &dm);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(a1);
    release_all(&bs);
    Py_RETURN_NONE;
}

static PyObject *py_explain(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 20) {
        PyErr_SetString(PyExc_TypeError,
                        "explain(xs, w1, b1, w2, b2, w3, b3, db, ab, m0, w2t, vt, h0, u0, p, c, bw, b, attr, logit)");
        return NULL;
    }
    dims_t dm = {0};
    if (dims_from(args, &dm) < 0) return NULL;
    double b3 = PyFloat_AsDouble(args[6]);
    if (b3 == -1.0 && PyErr_Occurred()) return NULL;
    Py_buffer bwv;
    if (PyObject_GetBuffer(args[16], &bwv, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    dm.k = bwv.len / 8;
    PyBuffer_Release(&bwv);
    const Py_ssize_t n = dm.n, f = dm.f, h1 = dm.h1, h2 = dm.h2, k = dm.k;
    bufs_t bs = {.n = 0};
    const double *xs = take(&bs, args[0], "xs", n * f, 8, 0);
    const double *w1 = xs ? take(&bs, args[1], "w1", h1 * f, 8, 0) : NULL;
    const double *b1 = w1 ? take(&bs, args[2], "b1", h1, 8, 0) : NULL;
    const double *w2 = b1 ? take(&bs, args[3], "w2", h2 * h1, 8, 0) : NULL;
    const double *b2 = w2 ? take(&bs, args[4], "b2", h2, 8, 0) : NULL;
    const double *w3 = b2 ? take(&bs, args[5], "w3", h2, 8, 0) : NULL;
    const double *db = w3 ? take(&bs, args[7], "db", k * h1, 8, 0) : NULL;
    const double *ab = db ? take(&bs, args[8], "ab", k * h1, 8, 0) : NULL;
    const unsigned char *m0 = ab ? take(&bs, args[9], "m0", k * h1, 1, 0) : NULL;
    const double *w2t = m0 ? take(&bs, args[10], "w2t", h1 * h2, 8, 0) : NULL;
    const double *vt = w2t ? take(&bs, args[11], "vt", h2 * h1, 8, 0) : NULL;
    const double *h0 = vt ? take(&bs, args[12], "h0", k * h2, 8, 0) : NULL;
    const double *u0 = h0 ? take(&bs, args[13], "u0", k * h1, 8, 0) : NULL;
    const double *p = u0 ? take(&bs, args[14], "p", k * h2 * f, 8, 0) : NULL;
    const double *c = p ? take(&bs, args[15], "c", k * h2, 8, 0) : NULL;
    const double *bw = c ? take(&bs, args[16], "bw", k, 8, 0) : NULL;
    const double *bl = bw ? take(&bs, args[17], "b", k * f, 8, 0) : NULL;
    double *attr = bl ? take(&bs, args[18], "attr", n * f, 8, 1) : NULL;
    double *logit = attr ? take(&bs, args[19], "logit", n, 8, 1) : NULL;
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
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n; r++) {
        const double *x = xs + r * f;
        logit[r] = logit_one(x, w1, b1, w2, b2, w3, b3, a1, &dm);
        record_attr(x, w1, db, ab, m0, w2t, vt, h0, u0, p, c, bw, bl, &s, &dm, attr + r * f);
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(dbuf);
    PyMem_RawFree(tidx);
    PyMem_RawFree(fl);
    release_all(&bs);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"logits", (PyCFunction)(void (*)(void))py_logits, METH_FASTCALL,
     "logits(xs, w1, b1, w2, b2, w3, b3, out): the logit of each row into out, without the GIL."},
    {"explain", (PyCFunction)(void (*)(void))py_explain, METH_FASTCALL,
     "explain(xs, w1, b1, w2, b2, w3, b3, db, ab, m0, w2t, vt, h0, u0, p, c, bw, b, attr, logit): exact "
     "GradientSHAP attributions and logits of each row, without the GIL (see service.exact_kernel)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_exact",
    .m_doc = "The exact GradientSHAP kernel in C (see service.exact_kernel).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__exact(void) { return PyModule_Create(&module); }
