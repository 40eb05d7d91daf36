/* window.c: sliding-window prediction with blending (rules in mednet/infer.h).
 *
 * The engine knows nothing of models: it cuts windows (zero-padded past the volume's end), hands them to a
 * predictor in batches, and accumulates weight * probability and weight per voxel in float accumulators of the
 * volume's size (classes + 1 floats per voxel: float is exact enough for weights in (0, 1] and the few windows that
 * overlap a voxel, and keeps the largest buffer at half the size of double).  Windows are visited in a fixed order
 * (D, then H, then W starts), so the result is deterministic.
 */
#include "mednet/infer.h"

#include "mednet/mem.h"

#include <math.h>
#include <string.h>

int mn_window_starts(int64_t len, int window, double overlap, int64_t *starts)
{
    if (len <= window) {
        if (starts) starts[0] = 0;
        return 1;
    }
    double step = (double)window * (1.0 - overlap);
    if (step < 1) step = 1;
    int n = (int)ceil((double)(len - window) / step) + 1;
    for (int i = 0; starts && i < n; i++)
        starts[i] = (int64_t)llround((double)i * (double)(len - window) / (double)(n - 1));
    return n;
}

void mn_window_weights(const int window[3], mn_blend blend, float *w)
{
    double axis[3][1024];
    for (int a = 0; a < 3; a++) {
        double mx = 0;
        for (int x = 0; x < window[a] && x < 1024; x++) {
            double v = 1;
            if (blend == MN_BLEND_GAUSSIAN) {
                double c = 0.5 * (window[a] - 1), s = window[a] / 8.0, d = x - c;
                v = exp(-d * d / (2 * s * s));
            } else if (blend == MN_BLEND_LINEAR) {
                v = 1 - fabs(2 * (x + 0.5) / window[a] - 1);
            }
            axis[a][x] = v;
            if (v > mx) mx = v;
        }
        for (int x = 0; x < window[a] && x < 1024; x++) axis[a][x] /= mx;
    }
    size_t o = 0;
    for (int z = 0; z < window[0]; z++)
        for (int y = 0; y < window[1]; y++)
            for (int x = 0; x < window[2]; x++, o++) {
                float v = (float)(axis[0][z] * axis[1][y] * axis[2][x]);
                w[o] = v > 1e-30f ? v : 1e-30f;
            }
}

/* Copy the window at `start` of vol into x, zero past the volume's end. */
static void cut(const float *vol, const int64_t dims[3], const int64_t start[3], const int win[3], float *x)
{
    size_t o = 0;
    for (int z = 0; z < win[0]; z++)
        for (int y = 0; y < win[1]; y++) {
            int64_t vz = start[0] + z, vy = start[1] + y;
            for (int xx = 0; xx < win[2]; xx++, o++) {
                int64_t vx = start[2] + xx;
                x[o] = vz < dims[0] && vy < dims[1] && vx < dims[2] ? vol[vx + dims[2] * (vy + dims[1] * vz)] : 0;
            }
        }
}

/* Accumulate one window's probabilities (classes, win) into acc (classes, dims) and its weights into wsum. */
static void add(const float *p, const float *w, const int64_t dims[3], const int64_t start[3], const int win[3],
                int classes, float *acc, float *wsum)
{
    const size_t wv = (size_t)win[0] * win[1] * win[2];
    const int64_t nv = dims[0] * dims[1] * dims[2];
    size_t o = 0;
    for (int z = 0; z < win[0]; z++)
        for (int y = 0; y < win[1]; y++)
            for (int x = 0; x < win[2]; x++, o++) {
                int64_t vz = start[0] + z, vy = start[1] + y, vx = start[2] + x;
                if (vz >= dims[0] || vy >= dims[1] || vx >= dims[2]) continue;
                int64_t i = vx + dims[2] * (vy + dims[1] * vz);
                wsum[i] += w[o];
                for (int c = 0; c < classes; c++) acc[c * nv + i] += w[o] * p[c * wv + o];
            }
}

mn_err mn_sliding_window(const mn_window_config *c, const float *vol, const int64_t dims[3], mn_window_fn fn,
                         void *ctx, float *prob, int64_t *nwindows)
{
    for (int a = 0; a < 3; a++)
        MN_CHECK(c->window[a] > 0 && c->window[a] <= 1024 && dims[a] > 0, MN_ERR_ARG,
                 "sliding window: window %d and volume %lld along axis %d", c->window[a], (long long)dims[a], a);
    MN_CHECK(c->overlap >= 0 && c->overlap < 1 && c->batch >= 1 && c->classes >= 1, MN_ERR_ARG,
             "sliding window: overlap %g (expected [0, 1)), batch %d, classes %d", c->overlap, c->batch, c->classes);
    int64_t *starts[3] = {NULL, NULL, NULL};
    int ns[3];
    const size_t wv = (size_t)c->window[0] * c->window[1] * c->window[2];
    const int64_t nv = dims[0] * dims[1] * dims[2];
    float *w = NULL, *x = NULL, *p = NULL, *wsum = NULL;
    int64_t(*pos)[3] = NULL;
    mn_err e = MN_OK;
    for (int a = 0; a < 3 && !e; a++) {
        ns[a] = mn_window_starts(dims[a], c->window[a], c->overlap, NULL);
        e = mn_malloc(sizeof(int64_t) * (size_t)ns[a], "window starts", (void **)&starts[a]);
        if (!e) mn_window_starts(dims[a], c->window[a], c->overlap, starts[a]);
    }
    if (!e) e = mn_malloc(sizeof(float) * wv, "window weights", (void **)&w);
    if (!e) e = mn_malloc(sizeof(float) * wv * (size_t)c->batch, "window batch", (void **)&x);
    if (!e) e = mn_malloc(sizeof(float) * wv * (size_t)c->batch * (size_t)c->classes, "window probabilities",
                          (void **)&p);
    if (!e) e = mn_calloc(sizeof(float) * (size_t)nv, "window weight sums", (void **)&wsum);
    if (!e) e = mn_malloc(sizeof *pos * (size_t)c->batch, "window positions", (void **)&pos);
    if (!e) {
        mn_window_weights(c->window, c->blend, w);
        memset(prob, 0, sizeof(float) * (size_t)nv * (size_t)c->classes);
    }
    int64_t total = (int64_t)ns[0] * ns[1] * ns[2], done = 0;
    while (!e && done < total) {
        int n = 0;
        for (; n < c->batch && done + n < total; n++) {
            int64_t k = done + n;
            pos[n][0] = starts[0][k / ((int64_t)ns[1] * ns[2])];
            pos[n][1] = starts[1][k / ns[2] % ns[1]];
            pos[n][2] = starts[2][k % ns[2]];
            cut(vol, dims, pos[n], c->window, x + (size_t)n * wv);
        }
        e = fn(ctx, n, x, p);
        for (int i = 0; i < n && !e; i++)
            add(p + (size_t)i * c->classes * wv, w, dims, pos[i], c->window, c->classes, prob, wsum);
        done += n;
    }
    if (!e)
        for (int64_t i = 0; i < nv; i++) {
            float inv = 1.0f / wsum[i];
            for (int cl = 0; cl < c->classes; cl++) prob[cl * nv + i] *= inv;
        }
    if (nwindows) *nwindows = total;
    for (int a = 0; a < 3; a++) mn_free(&starts[a]);
    mn_free(&w);
    mn_free(&x);
    mn_free(&p);
    mn_free(&wsum);
    mn_free(&pos);
    MN_CHECK(!e, e, "called from sliding window");
    return MN_OK;
}
