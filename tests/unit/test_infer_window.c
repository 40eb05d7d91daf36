/* test_infer_window.c WORKDIR: the sliding window of mednet infer (mednet/infer.h).
 *   - a predictor that depends only on each voxel's value comes back unchanged through any overlap and blending
 *     (the weights normalise);
 *   - a window that covers the volume gives exactly the single window's prediction (cut to the volume), whatever
 *     the overlap and blending;
 *   - a position-dependent predictor over many windows is written to WORKDIR/window_<blend>.bin, which
 *     test_infer_window.py recomputes with numpy (window starts, weight maps, softmax, blending). */
#include "mednet/infer.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static int g_win[3], g_classes;

/* Softmax over classes of logits l_c(v) = c * x(v) + 0.1 c^2: a function of the voxel's value only. */
static mn_err pointwise(void *ctx, int n, const float *x, float *prob)
{
    (void)ctx;
    size_t wv = (size_t)g_win[0] * g_win[1] * g_win[2];
    for (int s = 0; s < n; s++)
        for (size_t o = 0; o < wv; o++) {
            double l[8], mx = -1e30, sum = 0;
            for (int c = 0; c < g_classes; c++) l[c] = c * x[s * wv + o] + 0.1 * c * c, mx = l[c] > mx ? l[c] : mx;
            for (int c = 0; c < g_classes; c++) sum += exp(l[c] - mx);
            for (int c = 0; c < g_classes; c++) prob[(s * g_classes + c) * wv + o] = (float)(exp(l[c] - mx) / sum);
        }
    return MN_OK;
}

/* Logits depending on the voxel's place in the window: l_c = sin(0.37 c (z + 1) + 0.11 y - 0.05 x) + c x(v).
 * test_infer_window.py has the same formula. */
static mn_err positional(void *ctx, int n, const float *x, float *prob)
{
    (void)ctx;
    size_t wv = (size_t)g_win[0] * g_win[1] * g_win[2];
    for (int s = 0; s < n; s++)
        for (size_t o = 0; o < wv; o++) {
            int xx = (int)(o % (size_t)g_win[2]), y = (int)(o / (size_t)g_win[2] % (size_t)g_win[1]),
                z = (int)(o / ((size_t)g_win[2] * g_win[1]));
            double l[8], mx = -1e30, sum = 0;
            for (int c = 0; c < g_classes; c++) {
                l[c] = sin(0.37 * c * (z + 1) + 0.11 * y - 0.05 * xx) + c * x[s * wv + o];
                mx = l[c] > mx ? l[c] : mx;
            }
            for (int c = 0; c < g_classes; c++) sum += exp(l[c] - mx);
            for (int c = 0; c < g_classes; c++) prob[(s * g_classes + c) * wv + o] = (float)(exp(l[c] - mx) / sum);
        }
    return MN_OK;
}

static float vol[23 * 19 * 17], prob[4 * 23 * 19 * 17], ref[4 * 24 * 24 * 24], pad[24 * 24 * 24];

int main(int argc, char **argv)
{
    const char *work = argc > 1 ? argv[1] : ".";
    mn_test_rng r = {99};
    const int64_t dims[3] = {23, 19, 17}, nv = 23 * 19 * 17;
    for (int64_t i = 0; i < nv; i++) vol[i] = 2 * mn_test_rng_uniform(&r) - 1;
    const char *names[3] = {"gaussian", "linear", "constant"};
    g_classes = 4;

    /* 1. Pointwise predictor: unchanged by the blending. */
    double worst = 0;
    for (int b = 0; b < 3; b++) {
        g_win[0] = 8, g_win[1] = 10, g_win[2] = 6;
        mn_window_config wc = {{8, 10, 6}, 0.4, (mn_blend)b, 3, g_classes};
        int64_t nw = 0;
        TEST_EXPECT(mn_sliding_window(&wc, vol, dims, pointwise, NULL, prob, &nw) == MN_OK, "sliding window failed");
        g_win[0] = 23, g_win[1] = 19, g_win[2] = 17;
        pointwise(NULL, 1, vol, ref);
        for (int64_t i = 0; i < 4 * nv; i++) worst = fmax(worst, fabs(prob[i] - ref[i]));
        TEST_EXPECT(nw == 5 * 3 * 5, "%s: %lld windows, expected 75", names[b], (long long)nw);
    }
    TEST_EXPECT(worst < 2e-6, "pointwise predictor through the blending: worst error %g", worst);
    printf("pointwise predictor through 75 overlapping windows, 3 blendings: worst error %.3g\n", worst);

    /* 2. A window covering the volume: the single window's prediction, cut to the volume. */
    g_win[0] = g_win[1] = g_win[2] = 24;
    memset(pad, 0, sizeof pad);
    for (int z = 0; z < 23; z++)
        for (int y = 0; y < 19; y++)
            for (int x = 0; x < 17; x++) pad[x + 24 * (y + 24 * z)] = vol[x + 17 * (y + 19 * z)];
    positional(NULL, 1, pad, ref);
    worst = 0;
    for (int b = 0; b < 3; b++) {
        mn_window_config wc = {{24, 24, 24}, 0.75, (mn_blend)b, 2, g_classes};
        int64_t nw = 0;
        TEST_EXPECT(mn_sliding_window(&wc, vol, dims, positional, NULL, prob, &nw) == MN_OK, "sliding window failed");
        TEST_EXPECT(nw == 1, "covering window: %lld windows", (long long)nw);
        for (int c = 0; c < g_classes; c++)
            for (int z = 0; z < 23; z++)
                for (int y = 0; y < 19; y++)
                    for (int x = 0; x < 17; x++)
                        worst = fmax(worst, fabs(prob[c * nv + x + 17 * (y + 19 * z)] -
                                                 ref[c * 24 * 24 * 24 + x + 24 * (y + 24 * z)]));
    }
    TEST_EXPECT(worst < 1e-6, "covering window vs single pass: worst error %g", worst);
    printf("window covering the volume vs a single pass (3 blendings): worst error %.3g\n", worst);

    /* 3. Position-dependent predictor over many windows, for the numpy reimplementation. */
    g_win[0] = 8, g_win[1] = 10, g_win[2] = 6;
    for (int b = 0; b < 3; b++) {
        mn_window_config wc = {{8, 10, 6}, 0.4, (mn_blend)b, 5, g_classes};
        TEST_EXPECT(mn_sliding_window(&wc, vol, dims, positional, NULL, prob, NULL) == MN_OK, "sliding window failed");
        char path[1200];
        snprintf(path, sizeof path, "%s/window_%s.bin", work, names[b]);
        FILE *f = fopen(path, "wb");
        int32_t hdr[8] = {23, 19, 17, 8, 10, 6, g_classes, b};
        double ov = 0.4;
        TEST_EXPECT(f && fwrite(hdr, sizeof hdr, 1, f) == 1 && fwrite(&ov, sizeof ov, 1, f) == 1 &&
                        fwrite(vol, sizeof(float), (size_t)nv, f) == (size_t)nv &&
                        fwrite(prob, sizeof(float), (size_t)(4 * nv), f) == (size_t)(4 * nv),
                    "cannot write %s", path);
        if (f) fclose(f);
    }
    int64_t st[16];
    int n = mn_window_starts(23, 8, 0.4, st);
    TEST_EXPECT(n == 5 && st[0] == 0 && st[1] == 4 && st[n - 1] == 15, "starts of 23 / 8 / 0.4: %d, last %lld", n, (long long)st[n - 1]);
    TEST_EXPECT(mn_window_starts(5, 8, 0.5, st) == 1 && st[0] == 0, "a short axis has one window");
    return mn_test_finish("test_infer_window");
}
