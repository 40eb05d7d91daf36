/* gradcheck.h: the finite-difference gradient check shared by the layer, loss, convolution and model tests.
 *
 * A case has a loss L = loss(ctx) in double (for a layer: forward, then L = sum r*y with a fixed random r, mn_gc_dot)
 * and up to MN_GC_MAX_TENSORS float tensors to probe, each with its analytic gradient dL/dv.  Two modes:
 * - per index (samples > 0): central differences with step eps on every entry of a tensor of at most `samples`, else
 *   on the first, the last and random ones.  With kink > 0, an entry whose one-sided differences disagree by more
 *   than kink (relative) straddles a ReLU / max-pool kink and is skipped; skipping over half is a failure.
 * - directional (samples == 0): the whole tensor moves along a random +-1 direction (times dscale[j] if given), and
 *   the quotient is compared with sum(g * dir).  Steps are dsteps[k] times the tensor's unit (default its RMS); the
 *   best counts (float32 rounding favours large steps, kinks small ones; a wrong gradient is wrong at every step).
 *   A directional derivative of exactly 0 fails: the tensor is unused.
 * Error per entry (per direction) |fd - an| / max(|fd|, |an|, floor) < tol, floor = max(floor_abs, floor_rel * size
 * of g): max|g| per index, mean|g| * sqrt(n) (a typical +-1 directional derivative) in directional mode.  That is a
 * relative tolerance tol with an absolute one tol * floor, checked entry by entry (no averaging that could hide one
 * wrong entry).  Steps are exact: the quotient divides by the step float32 really made ((float)(v + eps) - v, per
 * element in directional mode), not by the nominal eps, so only the loss's rounding and the truncation error remain.
 * With backward set, the harness computes the gradients: zero every g, loss, backward, backward again, check that
 * they doubled (backward accumulates: rel err < 1e-4, floor 1e-4 of the largest entry), keep the single-pass values.
 * mn_gc_run prints one line (case, worst error and where) and returns the number of failures, each also counted in
 * mn_test_failures.  Values are restored on return; what the loss wrote (y) is from the last perturbed call. */
#ifndef MN_TEST_GRADCHECK_H
#define MN_TEST_GRADCHECK_H

#include <string.h>

#include "mednet/error.h"
#include "test_util.h"

#define MN_GC_MAX_TENSORS 16

typedef struct mn_gc_tensor {
    const char *name;
    float *v, *g;        /* values (perturbed in place) and dL/dv (written only by a case's backward), n each */
    size_t n;
    double unit;         /* directional: steps are multiples of this (0: the RMS of v) */
    const float *dscale; /* directional, optional: per-element scale of the +-1 direction */
} mn_gc_tensor;

typedef struct mn_gc_case {
    const char *name;
    void *ctx;
    double (*loss)(void *ctx);     /* L at the current values (NAN on failure) */
    mn_err (*backward)(void *ctx); /* optional: adds dL/dv into every g */
    mn_gc_tensor t[MN_GC_MAX_TENSORS]; /* up to the first with v == NULL */
    double eps, tol, floor_abs, floor_rel, kink;
    int samples;                   /* per index; 0: directional with ndsteps steps dsteps[] */
    const double *dsteps;
    int ndsteps;
    uint64_t seed;                 /* sampled indices and directions (0: a fixed default) */
} mn_gc_case;

/* One tensor's outcome: worst error, its difference quotient, analytic value and index; samples checked/skipped. */
typedef struct mn_gc_result {
    double err, fd, an;
    size_t idx, m, skipped;
} mn_gc_result;

/* sum r[i] * y[i] in double. */
static inline double mn_gc_dot(const float *r, const float *y, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)r[i] * (double)y[i];
    return s;
}

static inline mn_gc_result mn_gc_sampled(const mn_gc_case *c, const mn_gc_tensor *t, double L0, mn_test_rng *rng)
{
    mn_gc_result res = {0};
    double gmax = 0;
    for (size_t i = 0; i < t->n; i++) gmax = fmax(gmax, fabs(t->g[i]));
    const double floor_ = fmax(c->floor_abs, c->floor_rel * gmax);
    const size_t all = t->n <= (size_t)c->samples;
    res.m = all ? t->n : (size_t)c->samples;
    for (size_t s = 0; s < res.m; s++) {
        size_t i = all ? s : s < 2 ? s * (t->n - 1) : mn_test_rng_u64(rng) % t->n;
        float orig = t->v[i], up = orig + (float)c->eps, dn = orig - (float)c->eps;
        t->v[i] = up;
        double lp = c->loss(c->ctx);
        t->v[i] = dn;
        double lm = c->loss(c->ctx);
        t->v[i] = orig;
        double fp = (lp - L0) / ((double)up - orig), fm = (L0 - lm) / ((double)orig - dn);
        if (c->kink > 0 && mn_test_relerr(fp, fm, floor_) > c->kink) {
            res.skipped++;
            continue;
        }
        double fd = (lp - lm) / ((double)up - dn), e = mn_test_relerr(fd, t->g[i], floor_);
        if (e > res.err || e != e || s == res.skipped) /* s == skipped: the first index checked */
            res = (mn_gc_result){e, fd, t->g[i], i, res.m, res.skipped};
    }
    return res;
}

static inline mn_gc_result mn_gc_directional(const mn_gc_case *c, const mn_gc_tensor *t, mn_test_rng *rng)
{
    float *v0 = mn_test_alloc(t->n), *dir = mn_test_alloc(t->n);
    memcpy(v0, t->v, t->n * sizeof *v0);
    double rms = 0, an = 0, gabs = 0;
    for (size_t j = 0; j < t->n; j++) {
        rms += (double)v0[j] * v0[j];
        dir[j] = ((mn_test_rng_u64(rng) & 1) ? 1.0f : -1.0f) * (t->dscale ? t->dscale[j] : 1.0f);
        an += (double)dir[j] * t->g[j];
        gabs += fabs((double)dir[j] * t->g[j]);
    }
    const double unit = t->unit > 0 ? t->unit : sqrt(rms / (double)t->n);
    const double floor_ = fmax(fmax(c->floor_abs, c->floor_rel * gabs / sqrt((double)t->n)), 1e-30);
    mn_gc_result res = {INFINITY, 0, an, 0, 1, 0};
    for (int k = 0; k < c->ndsteps; k++) {
        /* The analytic side uses the displacement float32 really made, element by element: v0 + step*dir rounds
         * differently per element, by up to 6e-8 |v| / step relative (6e-4 at step 1e-4 of the RMS). */
        double step = c->dsteps[k] * unit, anr = 0;
        for (size_t j = 0; j < t->n; j++) t->v[j] = v0[j] + (float)(step * dir[j]), anr += (double)t->g[j] * t->v[j];
        double lp = c->loss(c->ctx);
        for (size_t j = 0; j < t->n; j++) t->v[j] = v0[j] - (float)(step * dir[j]), anr -= (double)t->g[j] * t->v[j];
        anr /= 2 * step;
        double fd = (lp - c->loss(c->ctx)) / (2 * step), e = mn_test_relerr(fd, anr, floor_);
        if (k == 0 || e < res.err || (res.err != res.err && e == e)) res.err = e, res.fd = fd;
    }
    if (an == 0) res.err = INFINITY;
    memcpy(t->v, v0, t->n * sizeof *v0);
    free(v0);
    free(dir);
    return res;
}

/* Run a case (see the top of this file); returns the number of failures (0: pass). */
static inline int mn_gc_run(const mn_gc_case *c)
{
    mn_test_rng rng = {c->seed ? c->seed : 0x9E3779B97F4A7C15ULL};
    int nt = 0, nfail = 0;
    while (nt < MN_GC_MAX_TENSORS && c->t[nt].v) nt++;
    if (c->backward) { /* gradients by the case's backward, which must accumulate */
        float *g1[MN_GC_MAX_TENSORS];
        for (int k = 0; k < nt; k++) memset(c->t[k].g, 0, c->t[k].n * sizeof(float));
        double l0 = c->loss(c->ctx), acc = 0;
        int ok = l0 == l0 && c->backward(c->ctx) == MN_OK;
        for (int k = 0; k < nt; k++) memcpy(g1[k] = mn_test_alloc(c->t[k].n), c->t[k].g, c->t[k].n * sizeof(float));
        ok = ok && c->backward(c->ctx) == MN_OK;
        for (int k = 0; k < nt; k++) {
            /* A second pass adds each contribution again onto a larger running value: scatter-adds (upsample, col2vol)
             * round differently, up to ~1e-5 where contributions cancel.  Overwriting instead gives 0.5. */
            double gmax = 0;
            for (size_t i = 0; i < c->t[k].n; i++) gmax = fmax(gmax, fabs(g1[k][i]));
            double e = mn_test_max_relerr_s(c->t[k].g, 2.0, g1[k], c->t[k].n, fmax(1e-6, 1e-4 * gmax));
            if (!(e <= acc)) acc = e;
            memcpy(c->t[k].g, g1[k], c->t[k].n * sizeof(float));
            free(g1[k]);
        }
        TEST_EXPECT(ok, "%s: forward or backward failed", c->name);
        TEST_EXPECT(acc < 1e-4, "%s: backward twice is not 2x once (worst rel err %.3g)", c->name, acc);
        nfail += !ok + !(acc < 1e-4);
    }
    mn_gc_result worst = {0};
    const char *wname = "-";
    size_t nsamp = 0, nskip = 0;
    const double L0 = c->samples > 0 ? c->loss(c->ctx) : 0;
    for (int k = 0; k < nt; k++) {
        const mn_gc_tensor *t = &c->t[k];
        mn_gc_result res = c->samples > 0 ? mn_gc_sampled(c, t, L0, &rng) : mn_gc_directional(c, t, &rng);
        int bad = !(res.err < c->tol) || 2 * res.skipped > res.m;
        char at[48] = " along a random direction";
        if (c->samples > 0) snprintf(at, sizeof at, "[%zu]", res.idx);
        TEST_EXPECT(!bad, "%s: d%s%s: fd %+.6e vs analytic %+.6e, rel err %.3g (tol %.3g; %zu of %zu at kinks)",
                    c->name, t->name, at, res.fd, res.an, res.err, c->tol, res.skipped, res.m);
        nfail += bad;
        if (k == 0 || !(res.err <= worst.err)) worst = res, wname = t->name;
        nsamp += res.m, nskip += res.skipped;
    }
    char kinks[48] = "", wat[32] = "";
    if (c->kink > 0) snprintf(kinks, sizeof kinks, ", %zu at kinks skipped", nskip);
    if (c->samples > 0) snprintf(wat, sizeof wat, "[%zu]", worst.idx);
    printf("  %-46s worst rel err %.2e at d%s%s (fd %+.5e vs analytic %+.5e; %zu %s%s)\n", c->name, worst.err, wname,
           wat, worst.fd, worst.an, nsamp, c->samples > 0 ? "sampled" : "tensors, directional", kinks);
    return nfail;
}

#endif
