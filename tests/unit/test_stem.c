/* test_stem.c: the direct kernels for one-input-channel convolutions (nn/stem.c, MedicalNet's stem) against the
 * loop nests, for every instruction set the CPU has (AVX-512F, AVX2+FMA).
 *
 * (a) forward and backward-weights on the kernels, backward-data on the GEMM path, against mn_conv3d_forward_ref /
 *     mn_conv3d_backward_ref: the stem itself (1->64 k7 s2 p3), odd extents, strides 1, 2 and 3 and unequal per
 *     dimension, padding 0, larger than the kernel's half and wider than an item's window, kernels 1x2x3 and 5x3x1,
 *     an output row longer than one item (x extent > 48 outputs), channel counts that leave a tail after the
 *     register blocks (16, 48, 80, 24 and 40 on AVX2), batch 1, 2 and 3, with and without bias.  y is prefilled with NaN (must be overwritten),
 *     dx, dw and db accumulate onto random values; relative error below 1e-4 with a floor of 1% of the largest
 *     reference value (as test_conv3d);
 * (b) mn_conv3d_pass_algo names the path ("stem" forward and backward-weights, the GEMM path for backward-data);
 *     layers the kernels do not take (two input channels, dilation, cout not a multiple of the vector width) keep
 *     the GEMM path and still match; MEDNET_CONV_ALGO=gemm turns the kernels off;
 * (c) 1 and 2 threads give bitwise equal y and dw (fixed item chunks, summed in order);
 * (d) with the kernels turned off (MN_STEM_ISA_NONE) the stem takes the GEMM path and agrees with the kernels to
 *     fp32 tolerance; forcing an instruction set the CPU lacks is refused.
 */
#include <math.h>
#include <string.h>

#include "mednet/conv3d.h"
#include "mednet/threads.h"
#include "nn/stem.h"
#include "test_util.h"

#define TOL 1e-4

static double g_worst;

static double cmp(const float *a, const float *b, size_t n)
{
    double big = 0;
    for (size_t i = 0; i < n; i++) big = fmax(big, fabs(b[i]));
    return mn_test_max_relerr(a, b, n, fmax(1e-6, 0.01 * big));
}

static mn_conv3d mk(int cin, int cout, int kd, int kh, int kw, int sd, int sh, int sw, int pd, int ph, int pw, int dil)
{
    mn_conv3d l;
    memset(&l, 0, sizeof l);
    l.cin = cin;
    l.cout = cout;
    const int k[3] = {kd, kh, kw}, s[3] = {sd, sh, sw}, p[3] = {pd, ph, pw};
    for (int i = 0; i < 3; i++) {
        l.k[i] = k[i];
        l.s[i] = s[i];
        l.p[i] = p[i];
        l.dil[i] = dil;
    }
    return l;
}

/* All three passes of l against the loop nests; expect: the forward path's name ("stem", or a GEMM-path name). With
 * out != NULL, y and dw are also copied there (ny + nw floats) for (c) and (d). */
static void check(const char *name, mn_conv3d l, mn_shape in, int bias, const char *expect, uint64_t seed,
                  float *out)
{
    mn_test_rng rng = {seed};
    mn_shape os;
    if (mn_conv3d_out_shape(&l, &in, &os) != MN_OK) {
        TEST_EXPECT(0, "%s: out_shape failed", name);
        return;
    }
    const size_t nx = mn_shape_numel(&in), ny = mn_shape_numel(&os),
                 nw = (size_t)l.cout * l.cin * l.k[0] * l.k[1] * l.k[2];
    const int K = l.cout;
    /* One block: x dx dxr | y yr dy | w dw dwr | b db dbr | workspace. */
    float *buf = mn_test_alloc(3 * (nx + ny + nw + (size_t)K) + mn_conv3d_workspace_floats(&l, &in));
    float *x = buf, *dx = x + nx, *dxr = dx + nx, *y = dxr + nx, *yr = y + ny, *dy = yr + ny, *w = dy + ny;
    float *dw = w + nw, *dwr = dw + nw, *b = dwr + nw, *db = b + K, *dbr = db + K, *ws = dbr + K;
    mn_test_fill(&rng, x, nx, 1.0f);
    mn_test_fill(&rng, w, nw, 0.5f);
    mn_test_fill(&rng, b, K, 1.0f);
    mn_test_fill(&rng, dy, ny, 1.0f);
    mn_test_fill(&rng, dx, nx, 1.0f);
    memcpy(dxr, dx, nx * sizeof *dx);
    mn_test_fill(&rng, dw, nw, 1.0f);
    memcpy(dwr, dw, nw * sizeof *dw);
    mn_test_fill(&rng, db, K, 1.0f);
    memcpy(dbr, db, K * sizeof *db);
    for (size_t i = 0; i < ny; i++) y[i] = NAN;
    l.w = w;
    l.b = bias ? b : NULL;
    const char *fwd = mn_conv3d_pass_algo(&l, &in, MN_CONV_PASS_FWD);
    const char *bwd_w = mn_conv3d_pass_algo(&l, &in, MN_CONV_PASS_BWD_WEIGHTS);
    const char *bwd_d = mn_conv3d_pass_algo(&l, &in, MN_CONV_PASS_BWD_DATA);
    TEST_EXPECT(!strcmp(fwd, expect) && !strcmp(bwd_w, expect),
                "%s: forward '%s', backward-weights '%s', expected '%s'", name, fwd, bwd_w, expect);
    TEST_EXPECT(strcmp(bwd_d, "stem") != 0 && strcmp(bwd_d, "invalid") != 0, "%s: backward-data runs '%s'", name,
                bwd_d);
    mn_conv3d r = l;
    int ok = mn_conv3d_forward(&l, &in, x, y, ws) == MN_OK && mn_conv3d_forward_ref(&r, &in, x, yr) == MN_OK;
    l.dw = dw;
    l.db = bias ? db : NULL;
    r.dw = dwr;
    r.db = bias ? dbr : NULL;
    ok = ok && mn_conv3d_backward(&l, &in, x, dy, dx, ws) == MN_OK &&
         mn_conv3d_backward_ref(&r, &in, x, dy, dxr) == MN_OK;
    TEST_EXPECT(ok, "%s: a call failed", name);
    const double ey = cmp(y, yr, ny), ex = cmp(dx, dxr, nx), ew = cmp(dw, dwr, nw), eb = cmp(db, dbr, K);
    /* a NaN in any of them fails the case (fmax would drop it) */
    const double e = ey != ey || ex != ex || ew != ew || eb != eb ? NAN : fmax(fmax(ey, ex), fmax(ew, eb));
    printf("  %-58s %-6s y %.2e dx %.2e dw %.2e db %.2e\n", name, fwd, ey, ex, ew, eb);
    TEST_EXPECT(e < TOL, "%s: worst rel err %.3g (y %.3g dx %.3g dw %.3g db %.3g)", name, e, ey, ex, ew, eb);
    if (e > g_worst || e != e) g_worst = e;
    if (out) {
        memcpy(out, y, ny * sizeof *y);
        memcpy(out + ny, dw, nw * sizeof *dw);
    }
    free(buf);
}

/* (a) and (b) on the instruction set in use (vector width vl). */
static void check_isa(int vl)
{
    const int tail = vl == 16 ? 80 : 40; /* leaves a one-vector tail after the register blocks */
    char name[96];
    check("stem 1->64 k7 s2 p3 32^3 n2 bias", mk(1, 64, 7, 7, 7, 2, 2, 2, 3, 3, 3, 1),
          (mn_shape){2, 1, 32, 32, 32}, 1, "stem", 11, NULL);
    check("1->16 k7 s2 p3 9x8x7 n1 (output smaller than a block)", mk(1, 16, 7, 7, 7, 2, 2, 2, 3, 3, 3, 1),
          (mn_shape){1, 1, 9, 8, 7}, 0, "stem", 12, NULL);
    snprintf(name, sizeof name, "1->%d k3 s1 p1 5x6x131 n3 bias (x rows of 3 items)", tail);
    check(name, mk(1, tail, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1), (mn_shape){3, 1, 5, 6, 131}, 1, "stem", 13, NULL);
    check("1->48 k(1,2,3) s(1,2,3) p0 7x9x20 n2", mk(1, 48, 1, 2, 3, 1, 2, 3, 0, 0, 0, 1),
          (mn_shape){2, 1, 7, 9, 20}, 1, "stem", 14, NULL);
    check("1->32 k(5,3,1) s(3,1,2) p(4,2,0) 11x5x13 n1 (pad >= half kernel)",
          mk(1, 32, 5, 3, 1, 3, 1, 2, 4, 2, 0, 1), (mn_shape){1, 1, 11, 5, 13}, 0, "stem", 15, NULL);
    check("1->16 k1 p(0,0,60) 2x2x3 n2 (padding wider than a window)", mk(1, 16, 1, 1, 1, 1, 1, 1, 0, 0, 60, 1),
          (mn_shape){2, 1, 2, 2, 3}, 1, "stem", 22, NULL);
    snprintf(name, sizeof name, "1->%d k7 s2 p3 6x10x101 n1 bias", vl);
    check(name, mk(1, vl, 7, 7, 7, 2, 2, 2, 3, 3, 3, 1), (mn_shape){1, 1, 6, 10, 101}, 1, "stem", 16, NULL);
    /* (b) layers the kernels leave to the GEMM path. */
    check("2->64 k7 s2 p3 12^3 (two input channels)", mk(2, 64, 7, 7, 7, 2, 2, 2, 3, 3, 3, 1),
          (mn_shape){1, 2, 12, 12, 12}, 1, "dense", 17, NULL);
    check("1->64 k3 p2 dil2 10^3 (dilated)", mk(1, 64, 3, 3, 3, 1, 1, 1, 2, 2, 2, 2), (mn_shape){1, 1, 10, 10, 10}, 0, "taps",
          18, NULL);
    snprintf(name, sizeof name, "1->%d k3 p1 9^3 (cout not a multiple of %d)", vl + 4, vl);
    check(name, mk(1, vl + 4, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1), (mn_shape){1, 1, 9, 9, 9}, 0, "dense", 19, NULL);
    setenv("MEDNET_CONV_ALGO", "gemm", 1);
    check("stem 1->64 with MEDNET_CONV_ALGO=gemm", mk(1, 64, 7, 7, 7, 2, 2, 2, 3, 3, 3, 1),
          (mn_shape){1, 1, 16, 16, 16}, 1, "dense", 20, NULL);
    unsetenv("MEDNET_CONV_ALGO");
}

int main(void)
{
    if (mn_threads_init(2) != MN_OK) return 2;
    const int isa0 = mn_stem_isa();
    printf("test_stem: BLIS kernels %s, 2 threads, stem kernels %s\n", mn_blis_arch(), mn_stem_isa_name(isa0));
    /* A CPU with neither set runs the GEMM path everywhere: (c) and (d) still check it. */
    const char *path0 = isa0 != MN_STEM_ISA_NONE ? "stem" : "dense";
    const int isas[2] = {MN_STEM_ISA_AVX512, MN_STEM_ISA_AVX2};
    int tested = 0;
    for (int i = 0; i < 2; i++) {
        if (mn_stem_set_isa(isas[i]) < 0) {
            printf("(the CPU lacks %s: not tested)\n", mn_stem_isa_name(isas[i]));
            continue;
        }
        printf("(a), (b) on %s:\n", mn_stem_isa_name(isas[i]));
        check_isa(isas[i] == MN_STEM_ISA_AVX512 ? 16 : 8);
        tested++;
    }
    TEST_EXPECT(tested > 0 || isa0 == MN_STEM_ISA_NONE, "no instruction set could be tested");
    mn_stem_set_isa(isa0);

    printf("(c) thread count, (d) kernels off:\n");
    const mn_conv3d stem = mk(1, 64, 7, 7, 7, 2, 2, 2, 3, 3, 3, 1);
    const mn_shape in = {2, 1, 24, 26, 28};
    const size_t n = (size_t)2 * 64 * 12 * 13 * 14 + (size_t)64 * 343;
    float *a = mn_test_alloc(n), *b = mn_test_alloc(n), *c = mn_test_alloc(n);
    check("stem 1->64 24x26x28 n2, 2 threads", stem, in, 1, path0, 21, a);
    if (mn_threads_init(1) != MN_OK) return 2;
    check("stem 1->64 24x26x28 n2, 1 thread", stem, in, 1, path0, 21, b);
    TEST_EXPECT(!memcmp(a, b, n * sizeof *a), "stem: y and dw differ between 1 and 2 threads");
    printf("  y and dw bitwise equal on 1 and 2 threads\n");
    TEST_EXPECT(mn_stem_set_isa(MN_STEM_ISA_NONE) >= 0, "turning the kernels off refused");
    check("stem 1->64 24x26x28 n2, kernels off", stem, in, 1, "dense", 21, c);
    const double e = cmp(c, a, n);
    printf("  GEMM path vs kernels: rel err %.2e\n", e);
    TEST_EXPECT(e < TOL, "GEMM path and kernels disagree: %.3g", e);
    mn_stem_set_isa(isa0);
    if (isa0 != MN_STEM_ISA_AVX512)
        TEST_EXPECT(mn_stem_set_isa(MN_STEM_ISA_AVX512) < 0, "forcing AVX-512 on a CPU without it was accepted");
    TEST_EXPECT(mn_stem_set_isa(99) < 0, "an unknown instruction set was accepted");
    free(a);
    free(b);
    free(c);
    printf("worst relative error vs loop nests: %.3g (tol %.0e)\n", g_worst, TOL);
    return mn_test_finish("test_stem");
}
