/* Compiled kernel of tflite_cluster.kmeans: the exact 1-D k-means dynamic programme.
 *
 * Optional: the package falls back to its numpy kernels when this extension is not built, and
 * the tests check both against each other and against brute force.
 *
 * solve(vals, wts, pstart, plen, K, integer, out)
 *   vals, wts: float64 buffers, the sorted distinct values of many problems and their weights
 *   pstart, plen: int64 buffers, problem i is vals[pstart[i] : pstart[i] + plen[i]] (plen > K)
 *   K: clusters (>= 2); integer: centroids are rounded means floor(mean + 0.5) (integer values)
 *   out: int64 writable buffer of P * K entries: the local start of every cluster of problem i
 *        (out[i*K] == 0), the leftmost optimum.
 *
 * side(vals, wts, pstart, plen, K, integer, F, T, S)
 *   One side of a "zero kept" problem (see kmeans._side): the points of a problem are sorted by
 *   distance from zero upwards... precisely: ascending x' with the points from some t on sitting
 *   at centroid 0, costing w x'^2 each. For every q in 0..K, F[i, q] is the best total with q
 *   free clusters before the zero part, T[i, q] the first point at zero, and S[i, q, :] the
 *   local starts of the q clusters (-1 unused).
 *
 * E_q(t) = min_{q-1 <= s < t} E_{q-1}(s) + cost(s, t) is solved layer by layer: the leftmost
 * optimal s, opt_q(t), is monotone in t, and opt_{q-1}(t) <= opt_q(t) (Knuth's bound). Big
 * layers run the divide and conquer optimisation down to nodes of a few dozen end points, which
 * sweep() finishes four end points per vector; small problems sweep whole layers over a table of
 * their costs, eight end points per step (sweep_tab). cost(s, t) comes from prefix sums of w,
 * w x, w x^2. Integer problems sum codes shifted to start at 0, exactly (the caller keeps the
 * sums below 2**52), so their costs are exact; float problems are centred on their weighted
 * mean. The GIL is released while solving.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int integer;
    double vmax;              /* integer problems: the largest point (the smallest is 0) */
    double *W, *S1, *S2;      /* prefix sums of w, w x, w x^2 (n + 1) */
    double *Eprev, *Ecur;     /* layer values (n + 1) */
    int32_t *A;               /* optimal last-cluster start per layer >= 2 and t: K x (n + 1) */
    double *tab;              /* small problems: every cost(s, t), s < t, at tab[tab_at(s, t)] */
    int use_tab;              /* tab holds the current problem's costs */
    /* float problems whose weights are all 1 (distinct values) divide by t - s: rinv[j] is
     * 1 / (rn - j), so a cost multiplies by rinv[rn - t + s] instead (within an ulp of the
     * division; a multiplication is far cheaper). NULL for other problems. rbuf holds 4 zeros
     * before rinv and 4 after (vector reads past either end). */
    double *rinv, *rbuf;
    Py_ssize_t rcap, rn;
    Py_ssize_t cap, acap, tcap;
} Work;

static inline double seg_cost(const Work *w, Py_ssize_t s, Py_ssize_t t)
{
    double W = w->W[t] - w->W[s];
    double S1 = w->S1[t] - w->S1[s];
    double S2 = w->S2[t] - w->S2[s];
    if (w->integer) {
        /* every sum is an integer below 2**53, so exact; (2 S1 + W) / (2 W) is at least
         * 1 / (2 W) away from the next integer when it is not one, far more than its rounding
         * error, so floor() gives the exact rounded mean */
        double c = (double)(int64_t)((2 * S1 + W) / (2 * W)); /* >= 0: truncation floors */
        return S2 - c * (2 * S1 - c * W);
    }
    return S2 - S1 * S1 / W;
}

static int work_reserve(Work *w, Py_ssize_t n, int K)
{
    if (n + 1 > w->cap) {
        Py_ssize_t c = n + 1;
        void *p[5];
        p[0] = realloc(w->W, c * sizeof(double));
        if (p[0]) w->W = p[0];
        p[1] = realloc(w->S1, c * sizeof(double));
        if (p[1]) w->S1 = p[1];
        p[2] = realloc(w->S2, c * sizeof(double));
        if (p[2]) w->S2 = p[2];
        p[3] = realloc(w->Eprev, c * sizeof(double));
        if (p[3]) w->Eprev = p[3];
        p[4] = realloc(w->Ecur, c * sizeof(double));
        if (p[4]) w->Ecur = p[4];
        for (int i = 0; i < 5; i++)
            if (!p[i]) return -1;
        w->cap = c;
    }
    Py_ssize_t need = (Py_ssize_t)(K + 1) * (n + 1);
    if (need > w->acap) {
        void *p = realloc(w->A, need * sizeof(int32_t));
        if (!p) return -1;
        w->A = p;
        w->acap = need;
    }
    return 0;
}

/* A cost table is stored by blocks of four end points: block g (t = 4g .. 4g + 3) holds, for
 * every start s = 0 .. 4g + 6, the four costs cost(s, t) side by side (one vector) at
 * tab_at(s, t), so a sweep reads a block's candidates from consecutive memory. Entries with
 * t <= s (no segment) or t > n are +inf (s past 4g + 2 only for sweep_tab, whose groups of two
 * blocks take candidates up to the second block's last end point). */
static inline Py_ssize_t tab_blk(Py_ssize_t g) { return 8 * g * g + 20 * g; }
static inline Py_ssize_t tab_at(Py_ssize_t s, Py_ssize_t t)
{
    return tab_blk(t >> 2) + 4 * s + (t & 3);
}

/* room for the cost table of a problem of n points (0), or -1 (then no table is used) */
static int tab_reserve(Work *w, Py_ssize_t n)
{
    Py_ssize_t need = tab_blk((n >> 2) + 1); /* (blocks 0 .. n / 4) */
    if (need > w->tcap) {
        void *p = realloc(w->tab, need * sizeof(double));
        if (!p) return -1;
        w->tab = p;
        w->tcap = need;
    }
    return 0;
}

static void work_free(Work *w)
{
    free(w->W); free(w->S1); free(w->S2);
    free(w->Eprev); free(w->Ecur); free(w->A); free(w->tab); free(w->rbuf);
}

static void prefix(Work *w, const double *x, const double *wt, Py_ssize_t n, int sign)
{
    /* sign = -1: the points are x[0], x[-1], x[-2], ... negated (mirrored side) */
    if (w->integer) { /* codes shifted to start at 0: exact integer sums in float64 */
        double lo = sign * x[0];
        w->W[0] = w->S1[0] = w->S2[0] = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            double v = sign * x[sign * i] - lo, c = wt[sign * i];
            w->W[i + 1] = w->W[i] + c;
            w->S1[i + 1] = w->S1[i] + c * v;
            w->S2[i + 1] = w->S2[i] + c * v * v;
        }
        w->vmax = n ? sign * x[sign * (n - 1)] - lo : 0;
        return;
    }
    double tw = 0, ts = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        tw += wt[sign * i];
        ts += wt[sign * i] * (sign * x[sign * i]);
    }
    double mu = ts / tw;
    w->W[0] = w->S1[0] = w->S2[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = sign * x[sign * i] - mu, c = wt[sign * i];
        w->W[i + 1] = w->W[i] + c;
        w->S1[i + 1] = w->S1[i] + c * v;
        w->S2[i + 1] = w->S2[i] + c * v * v;
    }
}

typedef struct {
    const Work *w;
    const double *Eprev;
    double *Ecur;
    int32_t *Acur;
    const int32_t *Aprev; /* NULL: no Knuth bound */
    Py_ssize_t prev_hi;   /* Aprev valid for t <= prev_hi */
    Py_ssize_t smin;      /* q - 1 */
    const double *tab;    /* the problem's cost table, or NULL */
} Layer;

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define SCAN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SCAN_CLONES
#endif

typedef double v4d __attribute__((vector_size(32)));
typedef long long v4l __attribute__((vector_size(32)));
typedef int v4i __attribute__((vector_size(16)));

/* (COST_INTU: COST_INT for points 0 .. vmax < 2**30 whose d1 holds the sums of 2 w x + w, as
 * fill_table() gives them) */
enum { COST_FLOAT, COST_RINV, COST_INT, COST_INTU };

/* four segment costs from their sums of w, w x, w x^2 (dW, d1, d2; rv = 1 / dW for COST_RINV),
 * with the same arithmetic as seg_cost, in the same order (the build turns off contraction into
 * fused multiply-adds), so the same values */
static inline __attribute__((always_inline)) void vcost(int kind, v4d dW, v4d d1, v4d d2, v4d rv,
                                                        v4d *out)
{
    const v4d two = {2, 2, 2, 2}, one = {1, 1, 1, 1}, big = {0x1p52, 0x1p52, 0x1p52, 0x1p52};
    if (kind == COST_INTU) {
        /* the same integers as COST_INT with fewer operations: (2 S1 + W) / (2 W) is positive
         * and below 2**30 + 1, so truncated to int32 it is floored */
        v4d r = __builtin_convertvector(__builtin_convertvector(d1 / (dW + dW), v4i), v4d);
        *out = d2 - r * ((d1 - dW) - r * dW);
    } else if (kind == COST_INT) {
        v4d x = (two * d1 + dW) / (two * dW);
        v4d r = (x + big) - big;
        r -= (v4d)((v4l)one & (r > x));
        *out = d2 - r * (two * d1 - r * dW);
    } else if (kind == COST_RINV) {
        *out = d2 - d1 * d1 * rv;
    } else {
        *out = d2 - d1 * d1 / dW;
    }
}

/* the costs of segments (s, t_j] for the four end points of a vector (sums wt, s1t, s2t) */
static inline __attribute__((always_inline)) void cost4(int kind, const Work *w, Py_ssize_t s,
                                                        v4d wt, v4d s1t, v4d s2t, v4d rv,
                                                        v4d *out)
{
    const v4d ws = {w->W[s], w->W[s], w->W[s], w->W[s]};
    const v4d as = {w->S1[s], w->S1[s], w->S1[s], w->S1[s]};
    const v4d bs = {w->S2[s], w->S2[s], w->S2[s], w->S2[s]};
    vcost(kind, wt - ws, s1t - as, s2t - bs, rv, out);
}

/* the cost of segment (s, t] as cost4 computes it (and as seg_cost does, but for COST_RINV) */
static inline double cost1(int kind, const Work *w, Py_ssize_t s, Py_ssize_t t)
{
    if (kind == COST_RINV) {
        double d1 = w->S1[t] - w->S1[s];
        return (w->S2[t] - w->S2[s]) - d1 * d1 * w->rinv[w->rn - t + s];
    }
    return seg_cost(w, s, t);
}

static inline int cost_kind(const Work *w)
{
    return w->integer ? COST_INT : w->rinv ? COST_RINV : COST_FLOAT;
}

/* Small problems (n <= TAB_MAX, and n <= TAB_PER_K * K) keep every cost(s, t) in a table (see
 * tab_at), filled a block of four end points at a time; each layer is then one sweep_tab() that
 * loads four end points' costs in one read instead of computing each with a division (O(n^2)
 * evaluations in all, four per vector operation). The table holds exactly the computed costs
 * (same arithmetic, no contraction; the integer centroid floor((2 S1 + W) / (2 W)) is the same
 * integer whichever way it is taken), so the optimum and its ties are the same as without it.
 * On MobileNetV2's int8 rows (about 80 codes each) the table and its sweep take 0.66x the time
 * of the column-major table with four-lane sweeps they replaced, which was 1.5x faster than the
 * scalar sweep before it; past about 300 values the n^2 table costs more than it saves. */
#define TAB_MAX 256
#define TAB_PER_K 24

static inline __attribute__((always_inline)) void fill_kind(int kind, Work *w, Py_ssize_t n)
{
    const double *W = w->W, *P1 = w->S1, *S2 = w->S2;
    const v4d inf = {INFINITY, INFINITY, INFINITY, INFINITY};
    if (kind == COST_INTU) { /* 2 S1 + W, in Ecur (unused until layers()) */
        for (Py_ssize_t i = 0; i <= n; i++) w->Ecur[i] = 2 * w->S1[i] + W[i];
        P1 = w->Ecur;
    }
    for (Py_ssize_t t0 = 0; t0 <= n; t0 += 4) {
        const v4l tv = {t0, t0 + 1, t0 + 2, t0 + 3};
        v4d wt, pt, s2t;
        for (int j = 0; j < 4; j++) {
            Py_ssize_t t = t0 + j <= n ? t0 + j : n;
            wt[j] = W[t];
            pt[j] = P1[t];
            s2t[j] = S2[t];
        }
        double *blk = w->tab + tab_blk(t0 >> 2);
        Py_ssize_t whole = t0 + 3 <= n ? t0 : 0; /* starts below this: every lane a segment */
        Py_ssize_t last = t0 + 2 < n ? t0 + 2 : n - 1; /* (starts past it: no lane a segment) */
        Py_ssize_t s = 0;
        for (; s <= last; s++) {
            const v4d ws = {W[s], W[s], W[s], W[s]}, ps = {P1[s], P1[s], P1[s], P1[s]};
            const v4d bs = {S2[s], S2[s], S2[s], S2[s]};
            v4d rv = {0, 0, 0, 0}, v;
            if (kind == COST_RINV) { /* 1 / (t0 + j - s), reversed from memory */
                memcpy(&rv, w->rinv + w->rn + s - t0 - 3, sizeof rv);
                rv = __builtin_shuffle(rv, (v4l){3, 2, 1, 0});
            }
            vcost(kind, wt - ws, pt - ps, s2t - bs, rv, &v);
            if (s >= whole) {
                const v4l sv = {s, s, s, s}, nv = {n, n, n, n};
                v4l ok = (sv < tv) & (tv <= nv);
                v = (v4d)(((v4l)v & ok) | ((v4l)inf & ~ok));
            }
            memcpy(blk + 4 * s, &v, sizeof v);
        }
        for (; s <= t0 + 6; s++) memcpy(blk + 4 * s, &inf, sizeof inf);
    }
}

SCAN_CLONES
static void fill_table(Work *w, Py_ssize_t n)
{
    int kind = cost_kind(w);
    if (kind == COST_INT && w->vmax < 0x1p30)
        fill_kind(COST_INTU, w, n);
    else if (kind == COST_INT)
        fill_kind(COST_INT, w, n);
    else if (kind == COST_RINV)
        fill_kind(COST_RINV, w, n);
    else
        fill_kind(COST_FLOAT, w, n);
}

/* leftmost argmin over s in [lo, hi] of E[s] + cost(s, t), four candidates at a time, the costs
 * computed from the problem's prefix sums (the same values as cost1) */
static inline __attribute__((always_inline)) Py_ssize_t scan_kind(int kind, const double *E,
                                                                  const Work *w, Py_ssize_t t,
                                                                  Py_ssize_t lo, Py_ssize_t hi,
                                                                  double *best_out)
{
    const double *W = w->W, *S1 = w->S1, *S2 = w->S2;
    const double *R = kind == COST_RINV ? w->rinv + (w->rn - t) : NULL;
    double best = INFINITY;
    Py_ssize_t bs = lo, s = lo;
    v4d bv = {INFINITY, INFINITY, INFINITY, INFINITY};
    v4l bi = {lo, lo, lo, lo}, idx = {lo, lo + 1, lo + 2, lo + 3};
    const v4l four = {4, 4, 4, 4};
    const v4d wt = {W[t], W[t], W[t], W[t]}, s1t = {S1[t], S1[t], S1[t], S1[t]};
    const v4d s2t = {S2[t], S2[t], S2[t], S2[t]};
    for (; s + 3 <= hi; s += 4) {
        v4d e, v, ws, a, b, rv = {0, 0, 0, 0};
        memcpy(&e, E + s, sizeof e);
        memcpy(&ws, W + s, sizeof ws);
        memcpy(&a, S1 + s, sizeof a);
        memcpy(&b, S2 + s, sizeof b);
        if (kind == COST_RINV) memcpy(&rv, R + s, sizeof rv);
        vcost(kind, wt - ws, s1t - a, s2t - b, rv, &v);
        v = e + v;
        v4l m = v < bv;
        bv = (v4d)(((v4l)v & m) | ((v4l)bv & ~m));
        bi = (idx & m) | (bi & ~m);
        idx += four;
    }
    for (int j = 0; j < 4; j++) {
        if (bv[j] < best || (bv[j] == best && bi[j] < bs)) {
            best = bv[j];
            bs = (Py_ssize_t)bi[j];
        }
    }
    for (; s <= hi; s++) {
        double v = E[s] + cost1(kind, w, s, t);
        if (v < best) {
            best = v;
            bs = s;
        }
    }
    *best_out = best;
    return bs;
}

SCAN_CLONES
static Py_ssize_t scan(const double *E, const Work *w, Py_ssize_t t, Py_ssize_t lo,
                       Py_ssize_t hi, double *best_out)
{
    int kind = cost_kind(w);
    if (kind == COST_INT) return scan_kind(COST_INT, E, w, t, lo, hi, best_out);
    if (kind == COST_RINV) return scan_kind(COST_RINV, E, w, t, lo, hi, best_out);
    return scan_kind(COST_FLOAT, E, w, t, lo, hi, best_out);
}

#define SCAN_MIN 7 /* candidate ranges at least this wide go to scan() */

/* one node of the divide and conquer: E_q(mid) and its leftmost optimal s within [sl, sr] (costs
 * computed: problems with a cost table sweep whole layers instead) */
static Py_ssize_t dc_eval(const Layer *L, Py_ssize_t mid, Py_ssize_t sl, Py_ssize_t sr)
{
    Py_ssize_t lo = sl > L->smin ? sl : L->smin;
    Py_ssize_t hi = sr < mid - 1 ? sr : mid - 1;
    if (L->Aprev && mid <= L->prev_hi && L->Aprev[mid] > lo)
        lo = L->Aprev[mid];
    double best = INFINITY; /* (not address-taken: stays in a register in the loop) */
    Py_ssize_t bs = lo;
    const Work *w = L->w;
    if (hi - lo >= SCAN_MIN) {
        double got;
        bs = scan(L->Eprev, w, mid, lo, hi, &got);
        best = got;
    } else {
        int kind = cost_kind(w);
        for (Py_ssize_t s = lo; s <= hi; s++) {
            double v = L->Eprev[s] + cost1(kind, w, s, mid);
            bs = v < best ? s : bs;
            best = v < best ? v : best;
        }
    }
    L->Ecur[mid] = best;
    L->Acur[mid] = (int32_t)bs;
    return bs;
}

#define LEAF 32        /* divide and conquer nodes of at most this many end points ... */
#define LEAF_WIDTH 128 /* ... and candidates this wide go to sweep() */

/* best of E[s] + cost over s in [lo, hi] for the four end points t0 .. t0 + 3 (leftmost on ties;
 * a lane skips s >= its t), two candidates per step in two accumulators. Lanes past ``last``
 * (the block's last end point) compute with t0's sums and are not used. */
static inline __attribute__((always_inline)) void leaf4(int kind, const Work *w, const double *E,
                                                        Py_ssize_t lo, Py_ssize_t hi,
                                                        Py_ssize_t t0, Py_ssize_t last,
                                                        v4d *bv_out, v4l *bi_out)
{
    const v4d inf = {INFINITY, INFINITY, INFINITY, INFINITY};
    const v4l tv = {t0, t0 + 1, t0 + 2, t0 + 3};
    v4d wt, s1t, s2t;
    if (t0 + 3 <= last) {
        memcpy(&wt, w->W + t0, sizeof wt);
        memcpy(&s1t, w->S1 + t0, sizeof s1t);
        memcpy(&s2t, w->S2 + t0, sizeof s2t);
    } else {
        for (int j = 0; j < 4; j++) {
            Py_ssize_t t = t0 + j <= last ? t0 + j : t0;
            wt[j] = w->W[t];
            s1t[j] = w->S1[t];
            s2t[j] = w->S2[t];
        }
    }
    const v4l l4 = {lo, lo, lo, lo};
    v4d bv[2] = {inf, inf};
    v4l bi[2] = {l4, l4};
    for (Py_ssize_t s = lo; s <= hi; s += 2) {
        for (int u = 0; u < 2; u++) {
            Py_ssize_t c = s + u <= hi ? s + u : s; /* odd count: the last one twice */
            v4d rv = {0, 0, 0, 0}, v;
            if (kind == COST_RINV) { /* 1 / (t0 + j - c), reversed from memory */
                memcpy(&rv, w->rinv + w->rn + c - t0 - 3, sizeof rv);
                rv = __builtin_shuffle(rv, (v4l){3, 2, 1, 0});
            }
            cost4(kind, w, c, wt, s1t, s2t, rv, &v);
            const v4l sv = {c, c, c, c};
            const v4d es = {E[c], E[c], E[c], E[c]};
            v = es + v;
            v4l ok = sv < tv;
            v = (v4d)(((v4l)v & ok) | ((v4l)inf & ~ok));
            v4l m = v < bv[u];
            bv[u] = (v4d)(((v4l)v & m) | ((v4l)bv[u] & ~m));
            bi[u] = (sv & m) | (bi[u] & ~m);
        }
    }
    /* merge: the smaller value, the smaller index on ties */
    v4l m = (bv[1] < bv[0]) | ((bv[1] == bv[0]) & (bi[1] < bi[0]));
    *bv_out = (v4d)(((v4l)bv[1] & m) | ((v4l)bv[0] & ~m));
    *bi_out = (bi[1] & m) | (bi[0] & ~m);
}

static inline __attribute__((always_inline)) void sweep_kind(int kind, const Layer *L,
                                                             Py_ssize_t tl, Py_ssize_t tr,
                                                             Py_ssize_t sl, Py_ssize_t sr)
{
    Py_ssize_t lo0 = sl > L->smin ? sl : L->smin;
    Py_ssize_t up = sr; /* the optimum of the group to the right: a bound for every t left of it */
    for (Py_ssize_t t0 = tl + ((tr - tl) & ~(Py_ssize_t)3); t0 >= tl; t0 -= 4) {
        Py_ssize_t lo = lo0;
        if (L->Aprev && t0 <= L->prev_hi && L->Aprev[t0] > lo) lo = L->Aprev[t0];
        Py_ssize_t hi = up < t0 + 2 ? up : t0 + 2; /* (t0 + 2: the last lane's t - 1) */
        v4d bv;
        v4l bi;
        leaf4(kind, L->w, L->Eprev, lo, hi, t0, tr, &bv, &bi);
        if (t0 + 3 <= tr) {
            memcpy(L->Ecur + t0, &bv, sizeof bv);
            for (int j = 0; j < 4; j++) L->Acur[t0 + j] = (int32_t)bi[j];
        } else {
            for (int j = 0; t0 + j <= tr; j++) {
                L->Ecur[t0 + j] = bv[j];
                L->Acur[t0 + j] = (int32_t)bi[j];
            }
        }
        up = bi[0];
    }
}

/* Knuth's sweep over the end points t in [tl, tr], whose optimal s lie in [sl, sr], four end
 * points at a time (one per vector lane), from the right: a group's candidates run from the
 * Knuth bound opt_{q-1}(t0) of its first end point to the optimum of the group on its right
 * (opt_q is monotone), and every lane takes every candidate of that common range, so there are
 * no data-dependent branches but the range's ends. Candidates outside a lane's own window are
 * (in exact arithmetic) never its leftmost optimum. This finishes the divide and conquer's
 * nodes (costs computed); problems with a cost table sweep whole layers in sweep_tab(). */
SCAN_CLONES
static void sweep(const Layer *L, Py_ssize_t tl, Py_ssize_t tr, Py_ssize_t sl, Py_ssize_t sr)
{
    int kind = cost_kind(L->w);
    if (kind == COST_INT)
        sweep_kind(COST_INT, L, tl, tr, sl, sr);
    else if (kind == COST_RINV)
        sweep_kind(COST_RINV, L, tl, tr, sl, sr);
    else
        sweep_kind(COST_FLOAT, L, tl, tr, sl, sr);
}

/* sweep() over a whole layer of a problem with a cost table, two table blocks (eight end
 * points, two vectors) at a time. The candidates are read, not computed, so what a group costs
 * is mostly its fixed part (the bounds, the merge, the stores), which eight lanes share: 0.7x
 * the time of four lanes on MobileNetV2's int8 rows; twelve or sixteen are slower again (the
 * windows grow), and so are blocks of eight (groups aligned to 8 waste more lanes). The
 * candidates go four at a time, the ones past hi replaced by hi (taking one again changes
 * nothing), so most groups (windows of 3 to 8) run one or two fixed steps. Lanes outside
 * [tl, tr] are computed but not kept. */
#define TAB_STEP 4
SCAN_CLONES
static void sweep_tab(const Layer *L, Py_ssize_t tl, Py_ssize_t tr, Py_ssize_t sl, Py_ssize_t sr)
{
    const v4d inf = {INFINITY, INFINITY, INFINITY, INFINITY};
    const double *E = L->Eprev;
    Py_ssize_t lo0 = sl > L->smin ? sl : L->smin;
    Py_ssize_t up = sr;
    for (Py_ssize_t t0 = (tr & ~(Py_ssize_t)3) - 4; t0 + 7 >= tl; t0 -= 8) {
        Py_ssize_t a = t0 > tl ? t0 : tl, lo = lo0; /* a: the group's first kept end point */
        if (L->Aprev && a <= L->prev_hi && L->Aprev[a] > lo) lo = L->Aprev[a];
        Py_ssize_t hi = up < t0 + 6 ? up : t0 + 6; /* (t0 + 6: the last lane's t - 1) */
        /* (t0 < 0: the first block's lanes are all before tl, and read from block 0; the
         * first block has +inf for its lanes' candidates past t0 + 2) */
        const double *blk[2] = {L->tab + tab_blk(t0 >= 0 ? t0 >> 2 : 0),
                                L->tab + tab_blk((t0 >> 2) + 1)};
        const v4l l4 = {lo, lo, lo, lo};
        v4d bv[2] = {inf, inf};
        v4l bi[2] = {l4, l4};
        Py_ssize_t s = lo;
        do {
            for (int u = 0; u < TAB_STEP; u++) {
                Py_ssize_t c = s + u < hi ? s + u : hi;
                const v4l sv = {c, c, c, c};
                const v4d es = {E[c], E[c], E[c], E[c]};
                for (int h = 0; h < 2; h++) {
                    v4d v;
                    memcpy(&v, blk[h] + 4 * c, sizeof v);
                    v = es + v;
                    v4l m = v < bv[h];
                    bv[h] = (v4d)(((v4l)v & m) | ((v4l)bv[h] & ~m));
                    bi[h] = (sv & m) | (bi[h] & ~m);
                }
            }
            s += TAB_STEP;
        } while (s <= hi);
        for (int h = 0; h < 2; h++) {
            Py_ssize_t th = t0 + 4 * h;
            if (th >= tl && th + 3 <= tr) {
                v4i b32 = __builtin_convertvector(bi[h], v4i);
                memcpy(L->Ecur + th, &bv[h], sizeof bv[h]);
                memcpy(L->Acur + th, &b32, sizeof b32);
                continue;
            }
            for (int j = 0; j < 4; j++) { /* (a fixed count: the lanes stay in registers) */
                if (th + j < tl || th + j > tr) continue;
                L->Ecur[th + j] = bv[h][j];
                L->Acur[th + j] = (int32_t)bi[h][j];
            }
        }
        up = bi[0][0]; /* (lane 0 is kept but in the last group) */
    }
}

static void dc(const Layer *L, Py_ssize_t tl, Py_ssize_t tr, Py_ssize_t sl, Py_ssize_t sr)
{
    while (tl <= tr) {
        if (tr - tl < LEAF && sr - sl < LEAF_WIDTH) {
            sweep(L, tl, tr, sl, sr);
            return;
        }
        Py_ssize_t mid = (tl + tr) >> 1;
        Py_ssize_t bs = dc_eval(L, mid, sl, sr);
        if (tr - tl < 1) break;
        dc(L, tl, mid - 1, sl, bs);
        tl = mid + 1;
        sl = bs;
    }
}

/* Big layers are split over threads: the top nodes are evaluated here, then the halves
 * below them run at once (they write disjoint entries and read only the previous layer). */
#define PAR_MIN 16384 /* end points per layer from which a layer is split */
static int dc_depth = 0; /* split levels: up to 2**dc_depth threads (set_threads) */

#ifndef _WIN32
#include <pthread.h>

typedef struct {
    const Layer *L;
    Py_ssize_t tl, tr, sl, sr;
    int depth;
} DcArgs;

static void dc_split(const Layer *L, Py_ssize_t tl, Py_ssize_t tr, Py_ssize_t sl, Py_ssize_t sr,
                     int depth);

static void *dc_thread(void *p)
{
    DcArgs *a = p;
    dc_split(a->L, a->tl, a->tr, a->sl, a->sr, a->depth);
    return NULL;
}

static void dc_split(const Layer *L, Py_ssize_t tl, Py_ssize_t tr, Py_ssize_t sl, Py_ssize_t sr,
                     int depth)
{
    if (depth <= 0 || tr - tl < PAR_MIN) {
        dc(L, tl, tr, sl, sr);
        return;
    }
    Py_ssize_t mid = (tl + tr) >> 1;
    Py_ssize_t bs = dc_eval(L, mid, sl, sr);
    DcArgs left = {L, tl, mid - 1, sl, bs, depth - 1};
    pthread_t th;
    if (pthread_create(&th, NULL, dc_thread, &left) != 0) {
        dc_split(L, tl, mid - 1, sl, bs, 0);
        dc_split(L, mid + 1, tr, bs, sr, depth - 1);
        return;
    }
    dc_split(L, mid + 1, tr, bs, sr, depth - 1);
    pthread_join(th, NULL);
}
#else
static void dc_split(const Layer *L, Py_ssize_t tl, Py_ssize_t tr, Py_ssize_t sl, Py_ssize_t sr,
                     int depth)
{
    (void)depth;
    dc(L, tl, tr, sl, sr);
}
#endif

/* Layers 1..Q over end points t <= tmax_q (all layers cover t up to n when full). Layer q's
 * values for t in [q, hi_q] end in w->Eprev after each step; A rows 2..Q are filled. With
 * ``keep`` non-NULL, layer q's values are copied to keep[q * (n + 1) ...]. */
static void layers(Work *w, Py_ssize_t n, int Q, int full, double *keep)
{
    /* layer 1 */
    Py_ssize_t hi1 = full ? n : n - Q + 1;
    for (Py_ssize_t t = 0; t <= n; t++) w->Eprev[t] = INFINITY;
    if (w->use_tab) { /* (start 0, from the table) */
        for (Py_ssize_t t = 1; t <= hi1; t++)
            w->Eprev[t] = w->tab[tab_at(0, t)];
    } else
        for (Py_ssize_t t = 1; t <= hi1; t++) w->Eprev[t] = seg_cost(w, 0, t);
    if (keep) memcpy(keep + (n + 1), w->Eprev, (n + 1) * sizeof(double));
    Py_ssize_t prev_hi = hi1;
    for (int q = 2; q <= Q; q++) {
        Py_ssize_t lo = q, hi = full ? n : n - Q + q;
        int32_t *Acur = w->A + (Py_ssize_t)q * (n + 1);
        if (!w->use_tab) /* (a table's sweep writes every entry the next layer reads) */
            for (Py_ssize_t t = 0; t <= n; t++) w->Ecur[t] = INFINITY;
        Layer L = {w, w->Eprev, w->Ecur, Acur,
                   q > 2 ? w->A + (Py_ssize_t)(q - 1) * (n + 1) : NULL, prev_hi, q - 1};
        L.tab = w->use_tab ? w->tab : NULL;
        if (lo <= hi && w->use_tab)
            sweep_tab(&L, lo, hi, q - 1, hi - 1);
        else if (lo <= hi)
            dc_split(&L, lo, hi, q - 1, hi - 1, dc_depth);
        double *tmp = w->Eprev;
        w->Eprev = w->Ecur;
        w->Ecur = tmp;
        if (keep) memcpy(keep + (Py_ssize_t)q * (n + 1), w->Eprev, (n + 1) * sizeof(double));
        prev_hi = hi;
    }
}

/* starts of the q clusters ending at t (A rows filled by layers), into out[0..q-1] */
static void backtrack(const Work *w, Py_ssize_t n, int q, Py_ssize_t t, int64_t *out)
{
    for (int layer = q; layer >= 2; layer--) {
        Py_ssize_t s = w->A[(Py_ssize_t)layer * (n + 1) + t];
        out[layer - 1] = s;
        t = s;
    }
    if (q >= 1) out[0] = 0;
}

/* The buffers one call holds, released together (in reverse) on every way out. */
typedef struct {
    Py_buffer b[8];
    int n;
} Bufs;

static void bufs_release(Bufs *B)
{
    while (B->n > 0) PyBuffer_Release(&B->b[--B->n]);
}

/* the end of a call: the buffers released, then None, or NULL with MemoryError if ``nomem`` */
static PyObject *bufs_done(Bufs *B, int nomem)
{
    bufs_release(B);
    if (nomem) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* a C-contiguous buffer of ``count`` items of ``itemsize`` bytes (count < 0: any whole number
 * of items, stored in *count_out when given); NULL with an exception set otherwise */
static void *bufs_get(Bufs *B, PyObject *o, int writable, Py_ssize_t itemsize, Py_ssize_t count,
                      const char *name, Py_ssize_t *count_out)
{
    Py_buffer *b = &B->b[B->n];
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return NULL;
    B->n++;
    if (count < 0 ? b->len % itemsize != 0 : b->len != itemsize * count) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, not %s %zd-byte items", name, b->len,
                     count < 0 ? "whole" : "the expected", itemsize);
        return NULL;
    }
    if (count_out) *count_out = b->len / itemsize;
    return b->buf;
}

static int check_problems(const int64_t *ps, const int64_t *pl, Py_ssize_t P, Py_ssize_t nvals,
                          int K, int strict, Py_ssize_t *nmax)
{
    *nmax = 0;
    for (Py_ssize_t i = 0; i < P; i++) {
        if (ps[i] < 0 || pl[i] < 0 || ps[i] + pl[i] > nvals || (strict && pl[i] <= K)) {
            PyErr_Format(PyExc_ValueError, "problem %zd out of range", i);
            return -1;
        }
        if (pl[i] >= INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "problem too large");
            return -1;
        }
        if (pl[i] > *nmax) *nmax = pl[i];
    }
    return 0;
}

/* value i of a float64 buffer, or of a float32 one when ``single`` (exact either way) */
static inline double value_at(const void *X, int single, Py_ssize_t i)
{
    return single ? (double)((const float *)X)[i] : ((const double *)X)[i];
}

/* the row arguments of rows() and assign(): ``ox`` R x N values (float64, or float32 when
 * ``single``), the clusters of each
 * row (``cent`` and ``last`` R x K float64, ``ncl`` R int64; written by rows(), read by
 * assign()); R, or -1 with an exception set */
static Py_ssize_t get_rows(Bufs *B, PyObject *ox, int single, Py_ssize_t N, int K,
                           PyObject *ocen, PyObject *olast, PyObject *oncl, int write_clusters,
                           const void **X, double **C, double **L, int64_t **NC)
{
    if (K < 1 || N < 1) {
        PyErr_SetString(PyExc_ValueError, "K and N must be >= 1");
        return -1;
    }
    Py_ssize_t total = 0;
    if (!(*X = bufs_get(B, ox, 0, single ? 4 : 8, -1, "values", &total))) return -1;
    Py_ssize_t R = total / N;
    if (R * N != total) {
        PyErr_SetString(PyExc_ValueError, "values: not a whole number of rows of N values");
        return -1;
    }
    if (!(*C = bufs_get(B, ocen, write_clusters, 8, R * K, "cent", NULL))) return -1;
    if (!(*L = bufs_get(B, olast, write_clusters, 8, R * K, "last", NULL))) return -1;
    if (!(*NC = bufs_get(B, oncl, write_clusters, 8, R, "ncl", NULL))) return -1;
    return R;
}

/* the K cluster starts of one problem of n > K sorted distinct points (K >= 2) */
static void solve_one(Work *w, const double *vals, const double *wts, Py_ssize_t n, int K,
                      int64_t *out)
{
    prefix(w, vals, wts, n, 1);
    w->rinv = NULL;
    if (!w->integer && w->W[n] == (double)n) { /* every weight 1: W[t] - W[s] = t - s */
        if (n + 8 > w->rcap) {
            void *p = realloc(w->rbuf, (n + 8) * sizeof(double));
            if (p) { w->rbuf = p; w->rcap = n + 8; }
        }
        if (n + 8 <= w->rcap) {
            w->rinv = w->rbuf + 4;
            for (Py_ssize_t j = -4; j < 0; j++) w->rinv[j] = 0;
            for (Py_ssize_t j = 0; j < n; j++) w->rinv[j] = 1.0 / (double)(n - j);
            for (Py_ssize_t j = n; j < n + 4; j++) w->rinv[j] = 0;
            w->rn = n;
        }
    }
    w->use_tab = n <= TAB_MAX && n <= (Py_ssize_t)TAB_PER_K * K && tab_reserve(w, n) == 0;
    if (w->use_tab) fill_table(w, n);
    layers(w, n, K - 1, 0, NULL);
    w->use_tab = 0;
    double best; /* last layer: only t = n */
    Py_ssize_t bs = scan(w->Eprev, w, n, K - 1, n - 1, &best);
    out[K - 1] = bs;
    backtrack(w, n, K - 1, bs, out);
}

/* A row's scratch in rows() and int_rows(): its distinct values and their weights (up to cap),
 * and its clusters' starts, centroids and largest values (K). */
typedef struct {
    double *vals, *wts, *c, *l;
    int64_t *st;
} RowBufs;

static void rowbufs_free(RowBufs *b)
{
    free(b->vals); free(b->wts); free(b->c); free(b->l); free(b->st);
}

/* 0, or -1 when out of memory (what was allocated is freed by rowbufs_free either way) */
static int rowbufs_get(RowBufs *b, Py_ssize_t cap, int K)
{
    b->vals = malloc((cap ? cap : 1) * sizeof(double));
    b->wts = malloc((cap ? cap : 1) * sizeof(double));
    b->c = malloc(K * sizeof(double));
    b->l = malloc(K * sizeof(double));
    b->st = malloc((size_t)(K + 1) * sizeof(int64_t));
    return b->vals && b->wts && b->c && b->l && b->st ? 0 : -1;
}

/* the K clusters of m > K sorted distinct points: their starts st[0..K] (st[K] = m), centroids
 * c (the rounded mean of an integer problem, else the mean) and largest values l */
static void cluster_row(Work *w, const double *vals, const double *wts, Py_ssize_t m, int K,
                        int64_t *st, double *c, double *l)
{
    if (K == 1)
        st[0] = 0;
    else
        solve_one(w, vals, wts, m, K, st);
    st[K] = m;
    for (int j = 0; j < K; j++) {
        Py_ssize_t a = st[j], b = st[j + 1];
        double W = 0, S = 0, first = vals[a];
        for (Py_ssize_t i = a; i < b; i++) {
            W += wts[i];
            S += wts[i] * (vals[i] - first);
        }
        if (w->integer) /* exact: integer sums below 2**53 */
            c[j] = first + floor((2 * S + W) / (2 * W));
        else
            c[j] = first + S / W;
        l[j] = vals[b - 1];
    }
}

/* The integer types int_rows() reads and writes: 1, 2 or 4 bytes, signed or not (a buffer's
 * struct format). */
enum { CODE_I8, CODE_U8, CODE_I16, CODE_U16, CODE_I32, CODE_U32 };

/* a C-contiguous buffer of codes (see above), its type in *type and its length in *count;
 * NULL with an exception set otherwise */
static void *bufs_get_codes(Bufs *B, PyObject *o, int writable, const char *name, int *type,
                            Py_ssize_t *count)
{
    Py_buffer *b = &B->b[B->n];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, b, flags) < 0) return NULL;
    B->n++;
    const char *f = b->format ? b->format : "B";
    if (*f == '@' || *f == '=') f++;
    static const char codes[] = "bBhHiI";
    const char *at = f[0] && !f[1] ? strchr(codes, f[0]) : NULL;
    if (!at || b->itemsize != (Py_ssize_t)1 << ((at - codes) / 2)) {
        PyErr_Format(PyExc_ValueError, "%s: not 8, 16 or 32-bit integers (format %s)", name, f);
        return NULL;
    }
    *type = (int)(at - codes);
    *count = b->len / b->itemsize;
    return b->buf;
}

#define CODE_CASES(T, BODY)                                                   \
    switch (T) {                                                              \
    case CODE_I8: { typedef int8_t code_t; BODY; break; }                    \
    case CODE_U8: { typedef uint8_t code_t; BODY; break; }                   \
    case CODE_I16: { typedef int16_t code_t; BODY; break; }                  \
    case CODE_U16: { typedef uint16_t code_t; BODY; break; }                 \
    case CODE_I32: { typedef int32_t code_t; BODY; break; }                  \
    default: { typedef uint32_t code_t; BODY; break; }                       \
    }

/* codes [i0, i0 + n) of X (of ``type``) less lo, into v, and the smallest and largest of them
 * (less lo) into *a and *b; returns 0, or -1 when one is outside [0, span) (then *bad holds
 * it). The loops have no branches: vectorised, min and max in the codes' own type. */
static int row_codes(const void *X, int type, Py_ssize_t i0, Py_ssize_t n, Py_ssize_t lo,
                     Py_ssize_t span, int32_t *v, Py_ssize_t *a, Py_ssize_t *b, long long *bad)
{
    long long mn = 0, mx = 0;
    CODE_CASES(type, {
        const code_t *x = (const code_t *)X + i0;
        code_t cmin = x[0];
        code_t cmax = x[0];
        for (Py_ssize_t i = 1; i < n; i++) {
            cmin = x[i] < cmin ? x[i] : cmin;
            cmax = x[i] > cmax ? x[i] : cmax;
        }
        mn = (long long)cmin;
        mx = (long long)cmax;
        if (mn < lo || mx - lo >= span) {
            *bad = mn < lo ? mn : mx;
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) v[i] = (int32_t)((long long)x[i] - lo);
    })
    *a = (Py_ssize_t)(mn - lo);
    *b = (Py_ssize_t)(mx - lo);
    return 0;
}

/* out[i0 .. i0 + n) (of ``type``) = lut[v[i]] (codes less lo in v; lut holds codes) */
static void put_row(void *O, int type, Py_ssize_t i0, Py_ssize_t n, const int32_t *lut,
                    const int32_t *v)
{
    CODE_CASES(type, {
        code_t *o = (code_t *)O + i0;
        for (Py_ssize_t i = 0; i < n; i++) o[i] = (code_t)lut[v[i]];
    })
}

/* int_rows(codes, N, K, lo, span, out): every row of ``codes`` (R x N integers of 8, 16 or 32
 * bits, every code in [lo, lo + span)) clustered exactly into at most K integer centroids
 * (rounded means), written to ``out`` (the same type and shape). A row's distinct codes come
 * from its histogram (no sort) and the centroids go back through a lookup table; a row with at
 * most K distinct codes comes back unchanged. Every code must fit in int32. */
static PyObject *py_int_rows(PyObject *self, PyObject *args)
{
    PyObject *ox, *oout;
    Py_ssize_t N, lo, span;
    int K;
    if (!PyArg_ParseTuple(args, "OninnO", &ox, &N, &K, &lo, &span, &oout)) return NULL;
    if (K < 1 || N < 1 || span < 1 || span > (1 << 24) || lo < INT32_MIN ||
        lo + span - 1 > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "K and N must be >= 1, 1 <= span <= 2**24 and the "
                                          "codes within int32");
        return NULL;
    }
    Bufs B = {.n = 0};
    Py_ssize_t total = 0, ntot = 0;
    int type, otype;
    const void *X = bufs_get_codes(&B, ox, 0, "codes", &type, &total);
    void *O = X ? bufs_get_codes(&B, oout, 1, "out", &otype, &ntot) : NULL;
    if (!O) goto fail;
    if (otype != type || ntot != total) {
        PyErr_SetString(PyExc_ValueError, "out: not the codes' type and length");
        goto fail;
    }
    Py_ssize_t R = total / N;
    if (R * N != total) {
        PyErr_SetString(PyExc_ValueError, "codes: not a whole number of rows of N values");
        goto fail;
    }
    Work w;
    memset(&w, 0, sizeof w);
    w.integer = 1;
    Py_ssize_t cap = N < span ? N : span; /* distinct codes of a row, at most */
    RowBufs rb;
    int bad = rowbufs_get(&rb, cap + 1, K) < 0; /* (+1: the compaction writes one past) */
    double *vals = rb.vals, *wts = rb.wts, *c = rb.c, *l = rb.l;
    /* two histograms, of the even and the odd values: repeated codes then make two chains of
     * increments through memory, not one */
    int64_t *st = rb.st, *hist = calloc(2 * span, sizeof(int64_t)), *hist2 = hist + span;
    int32_t *lut = malloc(span * sizeof(int32_t)), *x = malloc(N * sizeof(int32_t));
    bad = bad || !hist || !lut || !x || work_reserve(&w, cap, K) < 0;
    long long outside = 0;
    int range = 0; /* a code outside [lo, lo + span) */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < R && !bad; r++) {
        Py_ssize_t a, b; /* the row's smallest and largest code, less lo */
        if (row_codes(X, type, r * N, N, lo, span, x, &a, &b, &outside) < 0) {
            range = 1;
            break;
        }
        Py_ssize_t i = 0;
        for (; i + 1 < N; i += 2) {
            hist[x[i]]++;
            hist2[x[i + 1]]++;
        }
        if (i < N) hist[x[i]]++;
        Py_ssize_t m = 0;
        for (Py_ssize_t v = a; v <= b; v++) { /* (no branch: which codes occur is random) */
            int64_t cnt = hist[v] + hist2[v];
            vals[m] = (double)v; /* (written and kept when cnt > 0) */
            wts[m] = (double)cnt;
            m += cnt != 0;
            hist[v] = hist2[v] = 0;
        }
        if (m <= K) {
            for (Py_ssize_t v = a; v <= b; v++) lut[v] = (int32_t)(v + lo);
        } else {
            cluster_row(&w, vals, wts, m, K, st, c, l);
            for (int j = 0; j < K; j++)
                for (Py_ssize_t i = st[j]; i < st[j + 1]; i++)
                    lut[(Py_ssize_t)vals[i]] = (int32_t)(c[j] + lo);
        }
        put_row(O, type, r * N, N, lut, x);
    }
    Py_END_ALLOW_THREADS
    rowbufs_free(&rb);
    free(hist);
    free(lut);
    free(x);
    work_free(&w);
    if (range && !bad) {
        PyErr_Format(PyExc_ValueError, "codes: %lld is outside [%zd, %zd)", outside, lo,
                     lo + span);
        goto fail;
    }
    return bufs_done(&B, bad);
fail:
    bufs_release(&B);
    return NULL;
}

/* rows(sorted, N, K, integer, cent, last, ncl[, single]): every row of ``sorted`` (R x N
 * float64, or float32 when ``single``; each row ascending) clustered exactly into at most K
 * clusters. Per row: ``ncl`` clusters, their
 * centroids ``cent`` (R x K; the rounded mean floor(mean + 0.5) for integer rows, else the
 * mean) and the largest value of each (``last``, R x K). A row with at most K distinct values
 * gets them as its own centroids (it comes back unchanged). */
static PyObject *py_rows(PyObject *self, PyObject *args)
{
    PyObject *osrt, *ocen, *olast, *oncl;
    Py_ssize_t N;
    int K, integer, single = 0;
    if (!PyArg_ParseTuple(args, "OnipOOO|p", &osrt, &N, &K, &integer, &ocen, &olast, &oncl,
                          &single))
        return NULL;
    Bufs B = {.n = 0};
    const void *X;
    double *C, *L;
    int64_t *NC;
    Py_ssize_t R = get_rows(&B, osrt, single, N, K, ocen, olast, oncl, 1, &X, &C, &L, &NC);
    if (R < 0) goto fail;
    Work w;
    memset(&w, 0, sizeof w);
    w.integer = integer;
    RowBufs rb;
    int bad = rowbufs_get(&rb, N, K) < 0 || work_reserve(&w, N, K) < 0;
    double *vals = rb.vals, *wts = rb.wts;
    int64_t *st = rb.st;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < R && !bad; r++) {
        double *c = C + r * K, *l = L + r * K;
        Py_ssize_t m = 0;
        for (Py_ssize_t i = 0; i < N; i++) {
            double v = value_at(X, single, r * N + i);
            if (m && v == vals[m - 1]) {
                wts[m - 1] += 1;
            } else {
                vals[m] = v;
                wts[m++] = 1;
            }
        }
        if (m <= K) {
            for (Py_ssize_t j = 0; j < m; j++) c[j] = l[j] = vals[j];
            NC[r] = m;
            continue;
        }
        cluster_row(&w, vals, wts, m, K, st, c, l);
        NC[r] = K;
    }
    Py_END_ALLOW_THREADS
    rowbufs_free(&rb);
    work_free(&w);
    return bufs_done(&B, bad);
fail:
    bufs_release(&B);
    return NULL;
}

/* assign(x, N, K, cent, last, ncl, out[, single]): out[r, i] = the centroid of the first cluster
 * of row r whose largest value is >= x[r, i] (x: R x N float64, or float32 when ``single``, in
 * any order; out: R x N float64) */
static PyObject *py_assign(PyObject *self, PyObject *args)
{
    PyObject *ox, *ocen, *olast, *oncl, *oout;
    Py_ssize_t N;
    int K, single = 0;
    if (!PyArg_ParseTuple(args, "OniOOOO|p", &ox, &N, &K, &ocen, &olast, &oncl, &oout, &single))
        return NULL;
    Bufs B = {.n = 0};
    const void *X;
    double *C, *L, *O;
    int64_t *NC;
    Py_ssize_t R = get_rows(&B, ox, single, N, K, ocen, olast, oncl, 0, &X, &C, &L, &NC);
    if (R < 0 || !(O = bufs_get(&B, oout, 1, 8, R * N, "out", NULL))) goto fail;
    for (Py_ssize_t r = 0; r < R; r++) {
        if (NC[r] < 1 || NC[r] > K) {
            PyErr_Format(PyExc_ValueError, "row %zd: bad cluster count", r);
            goto fail;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < R; r++) {
        const double *c = C + r * K, *l = L + r * K;
        double *o = O + r * N;
        Py_ssize_t nc = NC[r];
        for (Py_ssize_t i = 0; i < N; i++) {
            double v = value_at(X, single, r * N + i);
            /* the first cluster whose largest value is >= v (the last one is): a binary
             * search without data-dependent branches (the answer stays in [p, p + len)) */
            const double *p = l;
            for (Py_ssize_t len = nc; len > 1;) {
                Py_ssize_t half = len >> 1;
                p = p[half - 1] < v ? p + half : p;
                len -= half;
            }
            o[i] = c[p - l];
        }
    }
    Py_END_ALLOW_THREADS
    return bufs_done(&B, 0);
fail:
    bufs_release(&B);
    return NULL;
}

/* the problem arguments of solve() and side(): sorted values and their weights (float64), and
 * each problem's start and length (int64); 0, or -1 with an exception set */
static int get_problems(Bufs *B, PyObject *ov, PyObject *ow, PyObject *ops, PyObject *opl,
                        const double **vals, const double **wts, const int64_t **ps,
                        const int64_t **pl, Py_ssize_t *nvals, Py_ssize_t *P)
{
    if (!(*vals = bufs_get(B, ov, 0, 8, -1, "vals", nvals))) return -1;
    if (!(*wts = bufs_get(B, ow, 0, 8, *nvals, "wts", NULL))) return -1;
    if (!(*ps = bufs_get(B, ops, 0, 8, -1, "pstart", P))) return -1;
    if (!(*pl = bufs_get(B, opl, 0, 8, *P, "plen", NULL))) return -1;
    return 0;
}

static PyObject *py_solve(PyObject *self, PyObject *args)
{
    PyObject *ov, *ow, *ops, *opl, *oout;
    int K, integer;
    if (!PyArg_ParseTuple(args, "OOOOipO", &ov, &ow, &ops, &opl, &K, &integer, &oout))
        return NULL;
    if (K < 2) {
        PyErr_SetString(PyExc_ValueError, "K must be >= 2");
        return NULL;
    }
    Bufs B = {.n = 0};
    Py_ssize_t nvals = 0, P = 0, nmax = 0;
    const double *vals, *wts;
    const int64_t *ps, *pl;
    int64_t *out;
    if (get_problems(&B, ov, ow, ops, opl, &vals, &wts, &ps, &pl, &nvals, &P) < 0 ||
        !(out = bufs_get(&B, oout, 1, 8, P * K, "out", NULL)) ||
        check_problems(ps, pl, P, nvals, K, 1, &nmax) < 0)
        goto fail;
    Work w;
    memset(&w, 0, sizeof w);
    w.integer = integer;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    if (work_reserve(&w, nmax, K) < 0) {
        bad = 1;
    } else {
        for (Py_ssize_t i = 0; i < P; i++)
            solve_one(&w, vals + ps[i], wts + ps[i], pl[i], K, out + i * K);
    }
    Py_END_ALLOW_THREADS
    work_free(&w);
    return bufs_done(&B, bad);
fail:
    bufs_release(&B);
    return NULL;
}

static PyObject *py_side(PyObject *self, PyObject *args)
{
    /* with ``mirror``, problem i is the points pstart[i], pstart[i] - 1, ... negated */
    PyObject *ov, *ow, *ops, *opl, *oF, *oT, *oS;
    int K, integer, mirror;
    if (!PyArg_ParseTuple(args, "OOOOippOOO", &ov, &ow, &ops, &opl, &K, &integer, &mirror, &oF,
                          &oT, &oS))
        return NULL;
    if (K < 1) {
        PyErr_SetString(PyExc_ValueError, "K must be >= 1");
        return NULL;
    }
    Bufs B = {.n = 0};
    Py_ssize_t nvals = 0, P = 0, nmax = 0;
    const double *vals, *wts;
    const int64_t *ps, *pl;
    double *F;
    int64_t *T, *S;
    if (get_problems(&B, ov, ow, ops, opl, &vals, &wts, &ps, &pl, &nvals, &P) < 0 ||
        !(F = bufs_get(&B, oF, 1, 8, P * (K + 1), "F", NULL)) ||
        !(T = bufs_get(&B, oT, 1, 8, P * (K + 1), "T", NULL)) ||
        !(S = bufs_get(&B, oS, 1, 8, P * (K + 1) * (K + 1), "S", NULL)))
        goto fail;
    /* mirrored problems run backwards from pstart: check them as [pstart - plen + 1, pstart] */
    for (Py_ssize_t i = 0; i < P; i++) {
        Py_ssize_t a = mirror ? ps[i] - pl[i] + 1 : ps[i];
        if (pl[i] < 0 || a < 0 || a + pl[i] > nvals || pl[i] >= INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "problem %zd out of range", i);
            goto fail;
        }
        if (pl[i] > nmax) nmax = pl[i];
    }
    Work w;
    memset(&w, 0, sizeof w);
    w.integer = integer;
    int bad = 0;
    double *keep = NULL, *tail = NULL;
    Py_BEGIN_ALLOW_THREADS
    keep = malloc((size_t)(K + 1) * (nmax + 1) * sizeof(double));
    tail = malloc((size_t)(nmax + 1) * sizeof(double));
    if (!keep || !tail || work_reserve(&w, nmax, K) < 0) {
        bad = 1;
    } else {
        int sign = mirror ? -1 : 1;
        for (Py_ssize_t i = 0; i < P; i++) {
            Py_ssize_t n = pl[i];
            const double *x = vals + ps[i], *wt = wts + ps[i];
            double *Fi = F + i * (K + 1);
            int64_t *Ti = T + i * (K + 1), *Si = S + i * (K + 1) * (K + 1);
            for (Py_ssize_t j = 0; j < (K + 1) * (K + 1); j++) Si[j] = -1;
            /* tail(t): the points t.. at centroid 0, sum of w x^2 (exact for integer codes) */
            tail[n] = 0;
            for (Py_ssize_t t = n - 1; t >= 0; t--) {
                double v = sign * x[sign * t];
                tail[t] = tail[t + 1] + wt[sign * t] * v * v;
            }
            Fi[0] = tail[0];
            Ti[0] = 0;
            for (int q = 1; q <= K; q++) {
                Fi[q] = INFINITY;
                Ti[q] = 0;
            }
            if (n == 0) continue;
            prefix(&w, x, wt, n, sign);
            int Q = K < n ? K : (int)n;
            layers(&w, n, Q, 1, keep);
            for (int q = 1; q <= Q; q++) {
                const double *E = keep + (Py_ssize_t)q * (n + 1);
                double best = INFINITY;
                Py_ssize_t bt = q;
                for (Py_ssize_t t = q; t <= n; t++) {
                    double v = E[t] + tail[t];
                    if (v < best) {
                        best = v;
                        bt = t;
                    }
                }
                Fi[q] = best;
                Ti[q] = bt;
                backtrack(&w, n, q, bt, Si + (Py_ssize_t)q * (K + 1));
            }
        }
    }
    Py_END_ALLOW_THREADS
    free(keep);
    free(tail);
    work_free(&w);
    return bufs_done(&B, bad);
fail:
    bufs_release(&B);
    return NULL;
}

/* distinct 4-byte values by an open-addressing hash set of SMALL_SET slots: the count, or -1
 * as soon as more than SMALL_SET / 2 distinct values turn up (or no memory) */
#define SMALL_SET (1 << 17)
static long long count_small(const uint32_t *src, Py_ssize_t n, int is_float)
{
    uint32_t *keys = malloc(SMALL_SET * sizeof(uint32_t));
    unsigned char *used = calloc(SMALL_SET, 1);
    long long count = 0;
    if (!keys || !used) {
        count = -1;
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t v = src[i];
        if (is_float && v == 0x80000000u) v = 0;
        uint32_t h = (v * 2654435761u) >> 15; /* 17 bits */
        while (used[h] && keys[h] != v) h = (h + 1) & (SMALL_SET - 1);
        if (!used[h]) {
            if (++count > SMALL_SET / 2) {
                count = -1;
                goto done;
            }
            used[h] = 1;
            keys[h] = v;
        }
    }
done:
    free(keys);
    free(used);
    return count;
}

/* count32(buf, is_float): the number of distinct 4-byte values in ``buf`` (float32 bit patterns
 * when is_float, with -0.0 counted as 0.0; NaN must not occur). A small hash set first (a
 * clustered tensor has few values); past 65,536 values an LSD radix sort of a copy (three passes
 * of 11 bits), then a count of the changes. */
static PyObject *py_count32(PyObject *self, PyObject *args)
{
    PyObject *ob;
    int is_float;
    if (!PyArg_ParseTuple(args, "Op", &ob, &is_float)) return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(ob, &b, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    Py_ssize_t n = b.len / 4;
    if (b.len != n * 4) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "count32: size is not a multiple of 4 bytes");
        return NULL;
    }
    long long count = 0;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    count = count_small(b.buf, n, is_float);
    if (count < 0) { /* many distinct values: sort */
    count = 0;
    uint32_t *a = malloc((n ? n : 1) * sizeof(uint32_t));
    uint32_t *t = malloc((n ? n : 1) * sizeof(uint32_t));
    size_t *h = calloc(3 * 2048, sizeof(size_t));
    if (!a || !t || !h) {
        bad = 1;
    } else {
        const uint32_t *src = b.buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t v = src[i];
            if (is_float && v == 0x80000000u) v = 0;
            a[i] = v;
            h[v & 2047]++;
            h[2048 + ((v >> 11) & 2047)]++;
            h[4096 + (v >> 22)]++;
        }
        for (int d = 0; d < 3; d++) {
            size_t *hd = h + 2048 * d, sum = 0;
            for (int j = 0; j < 2048; j++) {
                size_t c = hd[j];
                hd[j] = sum;
                sum += c;
            }
            int shift = 11 * d;
            for (Py_ssize_t i = 0; i < n; i++) t[hd[(a[i] >> shift) & 2047]++] = a[i];
            uint32_t *x = a;
            a = t;
            t = x;
        }
        if (n) count = 1;
        for (Py_ssize_t i = 1; i < n; i++) count += a[i] != a[i - 1];
    }
    free(a);
    free(t);
    free(h);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (bad) return PyErr_NoMemory();
    return PyLong_FromLongLong(count);
}

/* a value's cell of a uniform grid of nc cells from lo, inv_h cells per unit (clipped; NaN: 0) */
static inline Py_ssize_t grid_cell(double x, double lo, double inv_h, Py_ssize_t nc)
{
    double f = (x - lo) * inv_h;
    Py_ssize_t c = f > 0 ? (Py_ssize_t)f : 0;
    return c < nc ? c : nc - 1;
}

/* grid_map(x, lo, inv_h, table, out): out[i] = table[the cell of x[i]] (table: float64 per cell) */
static PyObject *py_grid_map(PyObject *self, PyObject *args)
{
    PyObject *ox, *otab, *oout;
    double lo, inv_h;
    if (!PyArg_ParseTuple(args, "OddOO", &ox, &lo, &inv_h, &otab, &oout)) return NULL;
    Bufs B = {.n = 0};
    Py_ssize_t n = 0, nc = 0;
    const double *x = bufs_get(&B, ox, 0, 8, -1, "values", &n);
    const double *T = x ? bufs_get(&B, otab, 0, 8, -1, "table", &nc) : NULL;
    double *O = T ? bufs_get(&B, oout, 1, 8, n, "out", NULL) : NULL;
    if (!O) goto fail;
    if (nc < 1) {
        PyErr_SetString(PyExc_ValueError, "grid_map: no cells");
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) O[i] = T[grid_cell(x[i], lo, inv_h, nc)];
    Py_END_ALLOW_THREADS
    return bufs_done(&B, 0);
fail:
    bufs_release(&B);
    return NULL;
}

/* grid(x, lo, inv_h, mu, W, S1, S2, D): every value's cell of a uniform grid,
 * floor((x - lo) * inv_h) clipped to [0, ncells - 1], and per cell (all float64 buffers of
 * ncells entries, overwritten): the count W, the sums S1 of x - mu and S2 of (x - mu)^2, and D,
 * the sum over the cell's values of max(x - mu - S1 / W, 0) (deviations above the cell's mean) */
static PyObject *py_grid(PyObject *self, PyObject *args)
{
    PyObject *ox, *oW, *oS1, *oS2, *oD;
    double lo, inv_h, mu;
    if (!PyArg_ParseTuple(args, "OdddOOOO", &ox, &lo, &inv_h, &mu, &oW, &oS1, &oS2, &oD))
        return NULL;
    Bufs B = {.n = 0};
    Py_ssize_t n = 0, nc = 0;
    const double *x = bufs_get(&B, ox, 0, 8, -1, "values", &n);
    double *W = x ? bufs_get(&B, oW, 1, 8, -1, "W", &nc) : NULL;
    double *S1 = W ? bufs_get(&B, oS1, 1, 8, nc, "S1", NULL) : NULL;
    double *S2 = S1 ? bufs_get(&B, oS2, 1, 8, nc, "S2", NULL) : NULL;
    double *D = S2 ? bufs_get(&B, oD, 1, 8, nc, "D", NULL) : NULL;
    if (!D) goto fail;
    if (nc < 1) {
        PyErr_SetString(PyExc_ValueError, "grid: no cells");
        goto fail;
    }
    double *acc = calloc(4 * nc, sizeof(double)); /* per cell: W, S1, S2, D side by side */
    if (!acc) {
        bufs_release(&B);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        double *a = acc + 4 * grid_cell(x[i], lo, inv_h, nc), v = x[i] - mu;
        a[0] += 1;
        a[1] += v;
        a[2] += v * v;
    }
    for (Py_ssize_t c = 0; c < nc; c++) { /* the cell's mean, in D's place for now */
        double *a = acc + 4 * c;
        a[3] = a[0] > 0 ? a[1] / a[0] : 0;
    }
    for (Py_ssize_t c = 0; c < nc; c++) D[c] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t c = grid_cell(x[i], lo, inv_h, nc);
        double d = x[i] - mu - acc[4 * c + 3];
        D[c] += (d + fabs(d)) * 0.5; /* max(d, 0) exactly, with no branch (d > 0 is unpredictable)
                                      * and no call (fmax() is one) */
    }
    for (Py_ssize_t c = 0; c < nc; c++) {
        W[c] = acc[4 * c];
        S1[c] = acc[4 * c + 1];
        S2[c] = acc[4 * c + 2];
    }
    Py_END_ALLOW_THREADS
    free(acc);
    return bufs_done(&B, 0);
fail:
    bufs_release(&B);
    return NULL;
}

/* grid_reach(cum, idx, D, h, t): max over atoms j of min over p = 1, 2, 4, ... of
 * 4 p h D[j] + 4 D[j]^2 t / M_j(p), where M_j(p) = cum[min(i + p, nc)] - cum[max(i - p + 1, 0)]
 * counts the values in the cells within p - 1 of atom j's cell i = idx[j] (cum: nc + 1 prefix
 * counts of the grid's cells). See kmeans._grid_lower_bound. */
static PyObject *py_grid_reach(PyObject *self, PyObject *args)
{
    PyObject *ocum, *oidx, *oD;
    double h, t;
    if (!PyArg_ParseTuple(args, "OOOdd", &ocum, &oidx, &oD, &h, &t)) return NULL;
    Bufs B = {.n = 0};
    Py_ssize_t ncum = 0, m = 0;
    const double *cum = bufs_get(&B, ocum, 0, 8, -1, "cum", &ncum);
    const int64_t *idx = cum ? bufs_get(&B, oidx, 0, 8, -1, "idx", &m) : NULL;
    const double *D = idx ? bufs_get(&B, oD, 0, 8, m, "D", NULL) : NULL;
    if (!D) goto fail;
    Py_ssize_t nc = ncum - 1;
    for (Py_ssize_t j = 0; j < m; j++) {
        if (idx[j] < 0 || idx[j] >= nc) {
            PyErr_SetString(PyExc_ValueError, "grid_reach: atom outside the grid");
            goto fail;
        }
    }
    double G = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < m; j++) {
        double d = D[j], best = INFINITY;
        if (!(d > 0)) continue;
        Py_ssize_t i = idx[j];
        for (Py_ssize_t p = 1;; p *= 2) {
            double a = 4 * (double)p * h * d;
            if (a >= best) break; /* larger windows only add more */
            Py_ssize_t r = i + p < nc ? i + p : nc, l = i - p + 1 > 0 ? i - p + 1 : 0;
            double M = cum[r] - cum[l], v = a + 4 * d * d * t / M;
            if (v < best) best = v;
            if (best <= G || p >= nc) break; /* (the min can only fall: it cannot raise G) */
        }
        if (best > G) G = best;
    }
    Py_END_ALLOW_THREADS
    bufs_release(&B);
    return PyFloat_FromDouble(G);
fail:
    bufs_release(&B);
    return NULL;
}

static PyObject *py_set_threads(PyObject *self, PyObject *args)
{
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    int d = 0;
    while ((1 << (d + 1)) <= n && d < 4) d++;
    dc_depth = d;
    return PyLong_FromLong(1L << d);
}

static PyMethodDef methods[] = {
    {"solve", py_solve, METH_VARARGS, "Exact K-clustering of many sorted weighted problems."},
    {"side", py_side, METH_VARARGS, "One side of zero-kept problems: best cost per q."},
    {"rows", py_rows, METH_VARARGS, "Exact clustering of sorted rows: centroids and extents."},
    {"int_rows", py_int_rows, METH_VARARGS, "Exact clustering of integer rows, written back."},
    {"assign", py_assign, METH_VARARGS, "Replace every value by its cluster's centroid."},
    {"grid", py_grid, METH_VARARGS, "Per-cell sums of a uniform grid over the values."},
    {"grid_map", py_grid_map, METH_VARARGS, "Every value replaced by its grid cell's entry."},
    {"grid_reach", py_grid_reach, METH_VARARGS, "The certificate's worst split-atom charge."},
    {"set_threads", py_set_threads, METH_VARARGS, "Threads for one big problem (a power of 2)."},
    {"count32", py_count32, METH_VARARGS, "Number of distinct 4-byte values (float32 aware)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dp", NULL, -1, methods};

#ifndef DP_SOURCE_SHA256
#define DP_SOURCE_SHA256 "unknown"
#endif

PyMODINIT_FUNC PyInit__dp(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "SOURCE_SHA256", DP_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
