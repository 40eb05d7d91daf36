/* conv3d.c: 3-D convolution on NCDHW float32 as vol2col + BLIS sgemm, and its direct loop-nest twin.
 *
 * Per group of samples (see below), with rows = cin*kvol, P = output voxels, W the (cout x rows) weight matrix
 * and col the (rows x nb*P) unfolded input:
 *   forward           Ycl = col^T * W^T, then transposed into NCDHW (+ bias)   (nb*P x cout, k = rows)
 *   backward-weights  dWt = col * dY^T, then dW += dWt^T                        (rows x cout, k = nb*P)
 *   backward-data     dcol = W^T * dY, then col2vol                              (rows x nb*P, k = cout)
 * Transposed operands are strides, not copies (nn/gemm.h).  Why the forward result is computed channels-last and
 * the weight gradient transposed: BLIS's skx sgemm micro-kernel is 32x12 and column-preferring, and it flips a
 * product to suit it; computed directly, Y (cout x P, row-major) and dW (cout x rows) put the small cout on the
 * 12-wide side, and the 64-channel layers ran at 40-50% of peak.  With cout on the 32-wide side they run 1.4-2x
 * faster (measured on the layer1 and stem shapes); the extra transpose moves cout*P (resp. cout*rows) floats,
 * rows (resp. P) times less than the GEMM's work.  The column buffer is reused by backward-weights and
 * backward-data in turn.
 *
 * Batching: small volumes (the dilated stages run on 8^3 = 512 voxels) make skinny GEMMs, so several samples
 * are unfolded side by side and share one GEMM.  The group size is the smallest count that gives about
 * MN_CONV_GEMM_COLS columns (stem and layer1 volumes are big enough alone; layer4 takes the whole batch).  A packed
 * group's output gradient is copied into a (cout x nb*P) staging block (the same block holds the channels-last
 * forward result): one extra pass over a tensor that is rows times smaller than the GEMM work.  Rejected: one
 * GEMM per sample everywhere (k = 512 for the backward-weights product of layer4 runs well below BLIS peak) and
 * packing the whole batch (workspace grows with N for no gain once a GEMM has a few thousand columns).
 *
 * Tap path: with dilation 2-4 and equal padding on 8^3 volumes (MedicalNet's layer3/layer4), 42-70% of the dense
 * column matrix is padding.  When the in-volume share is below MN_CONV_TAPS_FRAC, each tap t gets only the columns
 * of its valid output box (vol2col.h) and one GEMM with k = cin against a tap-major copy of the weights W_t:
 *   forward           Ycl[box_t] += block_t^T * W_t^T    (scatter-add of channels-last rows)
 *   backward-weights  dW_t (cout x cin) = dY_t^T * block_t^T, added into dw by a permutation pass
 *   backward-data     dblock_t = W_t^T * dY_t, then col2vol of the blocks
 * where dY_t gathers the box's rows of the channels-last dY.  The permutations of w and dw cost one pass over the
 * weights each; the layer4 convs then run 2.5x faster than dense (dense-FLOP rate above the sgemm rate, as
 * oneDNN's does by the same skipping).  The taps are processed one at a time (unfold block t, its GEMMs, fold it
 * back), so the workspace holds one block, not the whole tap-box matrix: the block (at most cin x 2*14^3 floats,
 * 11 MiB for layer4 at input 112^3) is still in L3 when BLIS packs it and when col2vol reads it back.
 *
 * A 1x1x1 convolution with stride 1 and no padding needs no unfolding: x itself is the column matrix (one GEMM per
 * sample, no workspace).  A strided 1x1x1 convolution goes through vol2col, which is then a cheap strided gather.
 *
 * The _ref twins are the direct loop nests, accumulating in double; they allocate nothing and exist for tests.
 */
#include "mednet/conv3d.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "mednet/prof.h"
#include "nn/direct.h"
#include "nn/gemm.h"
#include "nn/stem.h"
#include "nn/vol2col.h"
#include "nn/winograd.h"
#include "nn/winograd4.h"

/* Target columns per GEMM when several small samples are packed together (see the note above). */
#define MN_CONV_GEMM_COLS 8192

/* "3" when all three extents agree, else "3x3x1". */
static void fmt3(char *buf, size_t n, const int v[3])
{
    if (v[0] == v[1] && v[1] == v[2])
        snprintf(buf, n, "%d", v[0]);
    else
        snprintf(buf, n, "%dx%dx%d", v[0], v[1], v[2]);
}

/* The layer's geometry for error messages: "conv3d 64->128 k3 s2 p1 dil2". */
static void conv_desc(const char *kind, int cin, int cout, const int k[3], const int s[3], const int p[3],
                      const int dil[3], char *buf, size_t n)
{
    char ks[40], ss[40], ps[40], ds[40];
    fmt3(ks, sizeof ks, k);
    fmt3(ss, sizeof ss, s);
    fmt3(ps, sizeof ps, p);
    fmt3(ds, sizeof ds, dil);
    snprintf(buf, n, "%s %d->%d k%s s%s p%s dil%s", kind, cin, cout, ks, ss, ps, ds);
}

/* Output extents of a convolution; 0 if some extent would be empty.  No messages. */
static int conv_out_ext(const int ext[3], const int k[3], const int s[3], const int p[3], const int dil[3],
                        int out[3])
{
    for (int i = 0; i < 3; i++) {
        long num = (long)ext[i] + 2L * p[i] - (long)dil[i] * (k[i] - 1) - 1;
        if (num < 0 || s[i] < 1) return 0;
        out[i] = (int)(num / s[i] + 1);
    }
    return 1;
}

/* Validate the layer's hyper-parameters and the input shape; fill the output shape. */
static mn_err conv_check(const mn_conv3d *l, const mn_shape *in, mn_shape *out)
{
    MN_CHECK(l != NULL && in != NULL, MN_ERR_ARG, "conv3d: NULL layer or input shape");
    char d[256], sh[64];
    conv_desc("conv3d", l->cin, l->cout, l->k, l->s, l->p, l->dil, d, sizeof d);
    MN_CHECK(l->cin > 0 && l->cout > 0, MN_ERR_ARG, "%s: channel counts must be > 0", d);
    for (int i = 0; i < 3; i++)
        MN_CHECK(l->k[i] >= 1 && l->s[i] >= 1 && l->dil[i] >= 1 && l->p[i] >= 0, MN_ERR_ARG,
                 "%s: kernel, stride and dilation must be >= 1 and padding >= 0 (dim %d: k=%d s=%d p=%d dil=%d)", d,
                 i, l->k[i], l->s[i], l->p[i], l->dil[i]);
    MN_CHECK(mn_shape_valid(in), MN_ERR_SHAPE, "%s: invalid input shape %s", d, mn_shape_str(in, sh));
    MN_CHECK(in->c == l->cin, MN_ERR_SHAPE, "%s: input %s has %d channels, expected %d", d, mn_shape_str(in, sh),
             in->c, l->cin);
    const int ext[3] = {in->d, in->h, in->w};
    int o[3];
    MN_CHECK(conv_out_ext(ext, l->k, l->s, l->p, l->dil, o), MN_ERR_SHAPE,
             "%s: input %s is smaller than the dilated kernel (%d+2*%d < %d in d, %d+2*%d < %d in h or %d+2*%d < %d "
             "in w): empty output",
             d, mn_shape_str(in, sh), in->d, l->p[0], l->dil[0] * (l->k[0] - 1) + 1, in->h, l->p[1],
             l->dil[1] * (l->k[1] - 1) + 1, in->w, l->p[2], l->dil[2] * (l->k[2] - 1) + 1);
    *out = (mn_shape){in->n, l->cout, o[0], o[1], o[2]};
    /* GEMM dimensions are ints (BLIS dim_t is wider, our wrapper is not): batch*voxels and cin*kvol must fit. */
    MN_CHECK((double)in->n * mn_shape_voxels(in) <= INT_MAX && (double)in->n * mn_shape_voxels(out) <= INT_MAX &&
                 (double)l->cin * l->k[0] * l->k[1] * l->k[2] <= INT_MAX,
             MN_ERR_SHAPE, "%s: input %s is too large (batch x voxels or cin x kernel volume exceeds 2^31)", d,
             mn_shape_str(in, sh));
    return MN_OK;
}

static int conv_is_direct(const mn_conv3d *l)
{
    for (int i = 0; i < 3; i++)
        if (l->k[i] != 1 || l->s[i] != 1 || l->p[i] != 0) return 0;
    return 1;
}

/* Samples per GEMM for volumes of `cols` output voxels. */
static int conv_group(int n, size_t cols)
{
    size_t g = (MN_CONV_GEMM_COLS + cols - 1) / cols;
    if (g < 1) g = 1;
    if (g > (size_t)n) g = (size_t)n;
    return (int)g;
}

/* Column-matrix floats per slab of the dense path: the output is processed a few z-planes at a time so that the
 * unfolded slab (written by vol2col, packed by BLIS, or written by the GEMM and folded by col2vol) stays in the
 * 32 MiB L3 instead of going to memory and back; measured 1.3x on the stem and layer1 forward. */
#define MN_CONV_SLAB_FLOATS ((size_t)2 << 20)

/* Output z-planes per slab for a group of nb samples. */
static int conv_slab(const mn_vgeom *g, int nb)
{
    const size_t per_plane = mn_vgeom_rows(g) * (size_t)nb * (size_t)g->out[1] * (size_t)g->out[2];
    size_t nz = MN_CONV_SLAB_FLOATS / (per_plane ? per_plane : 1);
    if (nz < 1) nz = 1;
    if (nz > (size_t)g->out[0]) nz = (size_t)g->out[0];
    return (int)nz;
}

/* Geometry of output planes [z0, z0+nz) (clipped): the same input volume with the padding shifted by z0*stride,
 * so vol2col/col2vol need no slab logic.  Returns the slab's voxels. */
static size_t conv_slab_geom(const mn_vgeom *g, int z0, int nz, mn_vgeom *gs)
{
    *gs = *g;
    gs->out[0] = z0 + nz <= g->out[0] ? nz : g->out[0] - z0;
    gs->p[0] = g->p[0] - z0 * g->s[0];
    return (size_t)gs->out[0] * g->out[1] * g->out[2];
}

/* Columns of the largest slab of the dense path over the groups of N samples (G per group, the last one may be
 * smaller and then gets more planes per slab): the column matrix and the staging block hold one slab, not the
 * whole group (273 MiB for the stem at input 112^3 before slabs were sized; 8 MiB now). */
static size_t conv_slab_max_cols(const mn_vgeom *g, int N, int G)
{
    const size_t plane = (size_t)g->out[1] * (size_t)g->out[2];
    const int nbs[2] = {G, N % G};
    size_t best = 0;
    for (int i = 0; i < 2; i++) {
        if (nbs[i] <= 0) continue;
        const size_t c = (size_t)nbs[i] * (size_t)conv_slab(g, nbs[i]) * plane;
        if (c > best) best = c;
    }
    return best;
}

static void conv_vgeom(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, mn_vgeom *g)
{
    *g = (mn_vgeom){.c = l->cin, .in = {in->d, in->h, in->w}, .out = {out->d, out->h, out->w}};
    for (int i = 0; i < 3; i++) {
        g->k[i] = l->k[i];
        g->s[i] = l->s[i];
        g->p[i] = l->p[i];
        g->dil[i] = l->dil[i];
    }
}

/* Use the tap-box layout (vol2col.h) when the taps that read inside the volume cover less than this fraction of
 * the dense column matrix.  Below it the smaller GEMMs and the gather/scatter of output rows are cheaper than the
 * multiplications by padding they avoid (measured on the dilated ResNet stages: 0.30 and 0.58 of dense at 8^3;
 * at 14^3 (input 112^3) layer4 is 0.53 and layer3 (dilation 2) 0.74, where taps run layer3 1.25x faster than
 * dense: 196 vs 249 ms for its two convs' three passes); above it (ordinary 3x3x3 convs with padding 1: 0.77 on
 * 8^3, 0.88 on 16^3) one dense GEMM wins. */
#define MN_CONV_TAPS_FRAC 0.75

/* 1 (and fills tp) if geometry g should run on the tap-box layout. */
static int conv_use_taps(const mn_vgeom *g, mn_taps *tp)
{
    if (!mn_taps_plan(g, tp)) return 0;
    return (double)tp->total < MN_CONV_TAPS_FRAC * (double)tp->n * (double)mn_vgeom_cols(g);
}

/* dw[k][c][t] += dwt2[t][k][c] for the taps with a non-empty box: the inverse of mn_weights_tap_major, with the
 * same access pattern (row dw[k] in L2, contiguous rows of dwt2).  Writing the strided tile from BLIS directly
 * (C with strides kvol and C*kvol) was measured 2x slower than this extra pass. */
static void add_dw_from_tap_major(const float *dwt2, const mn_taps *tp, int K, int C, float *dw)
{
    const int kvol = tp->n;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; k++)
        for (int t = 0; t < kvol; t++) {
            if (!tp->nv[t]) continue;
            const float *src = dwt2 + ((size_t)t * K + k) * C;
            float *dst = dw + (size_t)k * C * kvol + t;
            for (int c = 0; c < C; c++) dst[(size_t)c * kvol] += src[c];
        }
}

/* Workspace of the tap path: one tap's block, channels-last output, one tap's rows, tap-major weights and their
 * gradient. */
static size_t taps_workspace(const mn_taps *tp, int C, int K, int G, size_t P)
{
    return (size_t)C * G * tp->maxnv + (size_t)K * G * P + (size_t)K * G * tp->maxnv + 2 * (size_t)C * tp->n * K;
}

/* Forward on the tap-box layout: per tap, Ycl[box rows] += block_t^T * W_t^T, then transpose into NCDHW + bias. */
static mn_err conv_forward_taps(const mn_conv3d *l, const mn_vgeom *g, const mn_taps *tp, int N, const float *x,
                                float *y, float *ws)
{
    const int C = l->cin, K = l->cout;
    const size_t P = mn_vgeom_cols(g), Pin = (size_t)g->in[0] * g->in[1] * g->in[2];
    const int G = conv_group(N, P);
    float *colt = ws, *stage = colt + (size_t)C * G * tp->maxnv, *tmp = stage + (size_t)K * G * P;
    float *w2 = tmp + (size_t)K * G * tp->maxnv;
    mn_weights_tap_major(l->w, K, C, tp->n, w2);
    for (int n0 = 0; n0 < N; n0 += G) {
        const int nb = N - n0 < G ? N - n0 : G;
        memset(stage, 0, sizeof(float) * (size_t)nb * P * K);
        for (int t = 0; t < tp->n; t++) {
            if (!tp->nv[t]) continue;
            const int nt = (int)((size_t)nb * tp->nv[t]);
            const float *w2t = w2 + (size_t)t * K * C;
            /* One tap's block at a time: unfolded right before BLIS packs it, so it is read back from L3. */
            mn_vol2col_tap(g, tp, t, nb, x + (size_t)n0 * C * Pin, (size_t)C * Pin, colt);
            if (tp->nv[t] == P) {
                /* The box is the whole output: block rows are stage rows. */
                MN_CALL(mn_gemm(nt, K, C, 1.0f, colt, 1, nt, w2t, 1, C, 1.0f, stage, K, 1));
            } else {
                MN_CALL(mn_gemm(nt, K, C, 1.0f, colt, 1, nt, w2t, 1, C, 0.0f, tmp, K, 1));
                mn_taps_scatter_add_rows(g, tp, t, nb, tmp, K, stage);
            }
        }
        float *yn = y + (size_t)n0 * K * P;
        for (int i = 0; i < nb; i++)
            mn_transpose(stage + (size_t)i * P * K, P, (size_t)K, l->b, 0, yn + (size_t)i * K * P, P);
    }
    return MN_OK;
}

/* Backward on the tap-box layout (bias gradient done by the caller). */
static mn_err conv_backward_taps(const mn_conv3d *l, const mn_vgeom *g, const mn_taps *tp, int N, const float *x,
                                 const float *dy, float *dx, float *ws)
{
    const int C = l->cin, K = l->cout;
    const size_t P = mn_vgeom_cols(g), Pin = (size_t)g->in[0] * g->in[1] * g->in[2];
    const int G = conv_group(N, P);
    float *colt = ws, *stage = colt + (size_t)C * G * tp->maxnv, *tmp = stage + (size_t)K * G * P;
    float *w2 = tmp + (size_t)K * G * tp->maxnv, *dwt2 = w2 + (size_t)C * tp->n * K;
    mn_prof_refine(MN_PROF_CONV_BWD_DATA);
    if (dx) mn_weights_tap_major(l->w, K, C, tp->n, w2);
    for (int n0 = 0; n0 < N; n0 += G) {
        const int nb = N - n0 < G ? N - n0 : G;
        /* dY of the group channels-last: stage[(i*P + v)*K + k]. */
        for (int i = 0; i < nb; i++)
            mn_transpose(dy + (size_t)(n0 + i) * K * P, (size_t)K, P, NULL, 0, stage + (size_t)i * P * K, (size_t)K);
        for (int t = 0; t < tp->n; t++) {
            if (!tp->nv[t]) continue;
            const int nt = (int)((size_t)nb * tp->nv[t]);
            /* Tap by tap: the block is unfolded, used, overwritten by its gradient and folded back while it is in
             * L3 (a whole-layer column matrix is 150 MiB for layer4 at 14^3 and went to memory and back twice). */
            mn_prof_refine(MN_PROF_CONV_BWD_WEIGHTS);
            if (l->dw) mn_vol2col_tap(g, tp, t, nb, x + (size_t)n0 * C * Pin, (size_t)C * Pin, colt);
            /* dY at the box's voxels, (nt x K) row-major. */
            const float *dyt = stage;
            if (tp->nv[t] != P) {
                mn_taps_gather_rows(g, tp, t, nb, stage, K, tmp);
                dyt = tmp;
            }
            /* dW_t (K x C) = dY_t^T * block_t^T, summed over groups, added into dw at the end. */
            if (l->dw)
                MN_CALL(mn_gemm(K, C, nt, 1.0f, dyt, 1, K, colt, 1, nt, n0 ? 1.0f : 0.0f, dwt2 + (size_t)t * K * C,
                                C, 1));
            mn_prof_refine(MN_PROF_CONV_BWD_DATA);
            if (dx) {
                MN_CALL(mn_gemm(C, nt, K, 1.0f, w2 + (size_t)t * K * C, 1, C, dyt, 1, K, 0.0f, colt, nt, 1));
                mn_col2vol_tap(g, tp, t, nb, colt, dx + (size_t)n0 * C * Pin, (size_t)C * Pin);
            }
        }
    }
    mn_prof_refine(MN_PROF_CONV_BWD_WEIGHTS);
    if (l->dw) add_dw_from_tap_major(dwt2, tp, K, C, l->dw);
    return MN_OK;
}

mn_err mn_conv3d_out_shape(const mn_conv3d *l, const mn_shape *in, mn_shape *out)
{
    MN_CHECK(out != NULL, MN_ERR_ARG, "conv3d: NULL output shape");
    MN_CALL(conv_check(l, in, out));
    return MN_OK;
}

size_t mn_conv3d_workspace_floats(const mn_conv3d *l, const mn_shape *in)
{
    if (!l || !in || !mn_shape_valid(in) || l->cin <= 0 || l->cout <= 0 || conv_is_direct(l)) return 0;
    const int ext[3] = {in->d, in->h, in->w};
    int o[3];
    if (!conv_out_ext(ext, l->k, l->s, l->p, l->dil, o)) return 0;
    const size_t P = (size_t)o[0] * o[1] * o[2];
    const size_t rows = (size_t)l->cin * l->k[0] * l->k[1] * l->k[2];
    const int g = conv_group(in->n, P);
    mn_vgeom vg;
    const mn_shape out = {in->n, l->cout, o[0], o[1], o[2]};
    conv_vgeom(l, in, &out, &vg);
    mn_taps tp;
    size_t ws;
    if (conv_use_taps(&vg, &tp)) {
        ws = taps_workspace(&tp, l->cin, l->cout, g, P);
    } else {
        const size_t cols = conv_slab_max_cols(&vg, in->n, g);
        ws = rows * cols + (size_t)l->cout * cols + rows * l->cout;
    }
    /* Winograd's and the direct kernels' shares when the layer asks for them or mn_conv3d_choose_algo may pick
     * them. */
    const int env = mn_wino_env_force();
    const int any = env == MN_CONV_ENV_AUTO || env == MN_CONV_ENV_BAD;
    int wino_possible = any || env == MN_CONV_ALGO_WINOGRAD, direct_possible = any || env == MN_CONV_ALGO_DIRECT;
    int wino4_possible = any || env == MN_CONV_ALGO_WINOGRAD4;
    for (int i = 0; i < MN_CONV_NPASS; i++) {
        const int rule = env == MN_CONV_ENV_RULE ? (int)mn_conv3d_rule_algo(l, in, i) : -1;
        wino_possible |= l->algo[i] == MN_CONV_ALGO_WINOGRAD || rule == MN_CONV_ALGO_WINOGRAD;
        direct_possible |= l->algo[i] == MN_CONV_ALGO_DIRECT || rule == MN_CONV_ALGO_DIRECT;
        wino4_possible |= l->algo[i] == MN_CONV_ALGO_WINOGRAD4 || rule == MN_CONV_ALGO_WINOGRAD4;
    }
    const size_t wino = wino_possible ? mn_wino_workspace_floats(l, in) : 0, stem = mn_stem_workspace_floats(l, in);
    const size_t direct = direct_possible ? mn_direct_workspace_floats(l, in) : 0;
    const size_t wino4 = wino4_possible ? mn_wino4_workspace_floats(l, in) : 0;
    if (ws < wino) ws = wino;
    if (ws < wino4) ws = wino4;
    if (ws < direct) ws = direct;
    return ws > stem ? ws : stem;
}

/* The GEMM path's name for the geometry: direct, dense, taps or invalid. */
static const char *conv_gemm_algo(const mn_conv3d *l, const mn_shape *in)
{
    if (!l || !in || !mn_shape_valid(in) || l->cin <= 0 || l->cout <= 0 || in->c != l->cin) return "invalid";
    const int ext[3] = {in->d, in->h, in->w};
    int o[3];
    if (!conv_out_ext(ext, l->k, l->s, l->p, l->dil, o)) return "invalid";
    if (conv_is_direct(l)) return "pointwise";
    mn_vgeom vg;
    const mn_shape out = {in->n, l->cout, o[0], o[1], o[2]};
    conv_vgeom(l, in, &out, &vg);
    mn_taps tp;
    return conv_use_taps(&vg, &tp) ? "taps" : "dense";
}

const char *mn_conv3d_algo(const mn_conv3d *l, const mn_shape *in)
{
    return mn_stem_eligible(l, in) ? "stem" : conv_gemm_algo(l, in);
}

const char *mn_conv3d_pass_algo(const mn_conv3d *l, const mn_shape *in, int pass)
{
    if (!l || pass < 0 || pass >= MN_CONV_NPASS) return "invalid";
    if (l->algo[pass] == MN_CONV_ALGO_WINOGRAD && mn_wino_eligible(l, in)) return "winograd";
    if (l->algo[pass] == MN_CONV_ALGO_WINOGRAD4 && mn_wino4_eligible(l, in)) return "winograd4";
    if (l->algo[pass] == MN_CONV_ALGO_DIRECT && mn_direct_eligible(l, in, pass)) return "direct";
    return pass == MN_CONV_PASS_BWD_DATA ? conv_gemm_algo(l, in) : mn_conv3d_algo(l, in);
}

double mn_conv3d_flops(const mn_conv3d *l, const mn_shape *in)
{
    const int ext[3] = {in->d, in->h, in->w};
    int o[3];
    if (!conv_out_ext(ext, l->k, l->s, l->p, l->dil, o)) return 0.0;
    return 2.0 * in->n * l->cout * ((double)o[0] * o[1] * o[2]) * l->cin * l->k[0] * l->k[1] * l->k[2];
}

mn_err mn_conv3d_forward(const mn_conv3d *l, const mn_shape *in, const float *x, float *y, float *ws)
{
    mn_shape out;
    MN_CALL(conv_check(l, in, &out));
    MN_CHECK(x != NULL && y != NULL && l->w != NULL, MN_ERR_ARG, "conv3d %d->%d forward: NULL x, y or weights",
             l->cin, l->cout);
    const int N = in->n, C = l->cin, K = l->cout;
    const size_t Pin = mn_shape_voxels(in), P = mn_shape_voxels(&out);
    if (conv_is_direct(l)) {
        /* x_n is already the (C x P) column matrix. */
        for (int n = 0; n < N; n++)
            MN_CALL(mn_gemm(K, (int)P, C, 1.0f, l->w, C, 1, x + (size_t)n * C * Pin, (ptrdiff_t)Pin, 1, 0.0f,
                            y + (size_t)n * K * P, (ptrdiff_t)P, 1));
        if (l->b) mn_bias_add(y, N, K, P, l->b);
        return MN_OK;
    }
    MN_CHECK(ws != NULL, MN_ERR_ARG, "conv3d %d->%d forward: NULL workspace (need %zu floats)", C, K,
             mn_conv3d_workspace_floats(l, in));
    if (l->algo[MN_CONV_PASS_FWD] == MN_CONV_ALGO_WINOGRAD && mn_wino_eligible(l, in))
        return mn_wino_forward(l, in, &out, x, y, ws);
    if (l->algo[MN_CONV_PASS_FWD] == MN_CONV_ALGO_WINOGRAD4 && mn_wino4_eligible(l, in))
        return mn_wino4_forward(l, in, &out, x, y, ws);
    if (l->algo[MN_CONV_PASS_FWD] == MN_CONV_ALGO_DIRECT && mn_direct_eligible(l, in, MN_CONV_PASS_FWD))
        return mn_direct_forward(l, in, &out, x, y, ws);
    if (mn_stem_eligible(l, in)) return mn_stem_forward(l, in, &out, x, y, ws);
    mn_vgeom g;
    conv_vgeom(l, in, &out, &g);
    mn_taps tp;
    if (conv_use_taps(&g, &tp)) return conv_forward_taps(l, &g, &tp, N, x, y, ws);
    const int rows = (int)mn_vgeom_rows(&g);
    const int G = conv_group(N, P);
    const size_t plane = (size_t)out.h * out.w, cols = conv_slab_max_cols(&g, N, G);
    float *col = ws, *stage = ws + (size_t)rows * cols;
    for (int n0 = 0; n0 < N; n0 += G) {
        const int nb = N - n0 < G ? N - n0 : G;
        const int nz = conv_slab(&g, nb);
        for (int z0 = 0; z0 < out.d; z0 += nz) {
            mn_vgeom gs;
            const size_t sv = conv_slab_geom(&g, z0, nz, &gs), ld = (size_t)nb * sv;
            mn_vol2col(&gs, nb, x + (size_t)n0 * C * Pin, (size_t)C * Pin, col, ld, sv);
            /* Channels-last product (nb*sv x K) = col^T W^T, transposed into the slab of y with the bias. */
            MN_CALL(mn_gemm((int)ld, K, rows, 1.0f, col, 1, (ptrdiff_t)ld, l->w, 1, rows, 0.0f, stage, K, 1));
            for (int i = 0; i < nb; i++)
                mn_transpose(stage + (size_t)i * sv * K, sv, (size_t)K, l->b, 0,
                             y + (size_t)(n0 + i) * K * P + (size_t)z0 * plane, P);
        }
    }
    return MN_OK;
}

/* Backward-data alone, after another path has done the parameter gradients. */
static mn_err conv_backward_data_only(const mn_conv3d *l, const mn_shape *in, const float *x, const float *dy,
                                      float *dx, float *ws)
{
    mn_conv3d d = *l;
    d.dw = NULL;
    d.db = NULL;
    return mn_conv3d_backward(&d, in, x, dy, dx, ws);
}

mn_err mn_conv3d_backward(const mn_conv3d *l, const mn_shape *in, const float *x, const float *dy, float *dx,
                          float *ws)
{
    mn_shape out;
    MN_CALL(conv_check(l, in, &out));
    MN_CHECK(dy != NULL && l->w != NULL, MN_ERR_ARG, "conv3d %d->%d backward: NULL dy or weights", l->cin,
             l->cout);
    MN_CHECK(x != NULL || l->dw == NULL, MN_ERR_ARG, "conv3d %d->%d backward: dw wanted but x is NULL", l->cin,
             l->cout);
    const int N = in->n, C = l->cin, K = l->cout;
    const size_t Pin = mn_shape_voxels(in), P = mn_shape_voxels(&out);
    if (l->db) mn_bias_grad(dy, N, K, P, l->db);
    if (!dx && !l->dw) return MN_OK;
    if (conv_is_direct(l)) {
        for (int n = 0; n < N; n++) {
            const float *dyn = dy + (size_t)n * K * P;
            mn_prof_refine(MN_PROF_CONV_BWD_WEIGHTS);
            if (l->dw)
                MN_CALL(mn_gemm(K, C, (int)P, 1.0f, dyn, (ptrdiff_t)P, 1, x + (size_t)n * C * Pin, 1,
                                (ptrdiff_t)Pin, 1.0f, l->dw, C, 1));
            mn_prof_refine(MN_PROF_CONV_BWD_DATA);
            if (dx)
                MN_CALL(mn_gemm(C, (int)P, K, 1.0f, l->w, 1, C, dyn, (ptrdiff_t)P, 1, 1.0f, dx + (size_t)n * C * Pin,
                                (ptrdiff_t)Pin, 1));
        }
        return MN_OK;
    }
    MN_CHECK(ws != NULL, MN_ERR_ARG, "conv3d %d->%d backward: NULL workspace (need %zu floats)", C, K,
             mn_conv3d_workspace_floats(l, in));
    /* The passes chosen for the direct kernels or Winograd F(4,3) run here, the rest by a second call. */
    const int w4 = (l->algo[MN_CONV_PASS_BWD_WEIGHTS] == MN_CONV_ALGO_WINOGRAD4 ||
                    l->algo[MN_CONV_PASS_BWD_DATA] == MN_CONV_ALGO_WINOGRAD4) &&
                   mn_wino4_eligible(l, in);
    const int w4_w = w4 && l->dw && l->algo[MN_CONV_PASS_BWD_WEIGHTS] == MN_CONV_ALGO_WINOGRAD4;
    const int w4_d = w4 && dx && l->algo[MN_CONV_PASS_BWD_DATA] == MN_CONV_ALGO_WINOGRAD4;
    const int direct_w = w4_w || (l->dw && l->algo[MN_CONV_PASS_BWD_WEIGHTS] == MN_CONV_ALGO_DIRECT &&
                                  mn_direct_eligible(l, in, MN_CONV_PASS_BWD_WEIGHTS));
    const int direct_d = w4_d || (dx && l->algo[MN_CONV_PASS_BWD_DATA] == MN_CONV_ALGO_DIRECT &&
                                  mn_direct_eligible(l, in, MN_CONV_PASS_BWD_DATA));
    if (direct_w || direct_d) {
        if (direct_w) {
            mn_prof_refine(MN_PROF_CONV_BWD_WEIGHTS);
            MN_CALL(w4_w ? mn_wino4_backward_weights(l, in, &out, x, dy, ws)
                         : mn_direct_backward_weights(l, in, &out, x, dy, ws));
        }
        if (direct_d) {
            mn_prof_refine(MN_PROF_CONV_BWD_DATA);
            MN_CALL(w4_d ? mn_wino4_backward_data(l, in, &out, dy, dx, ws)
                         : mn_direct_backward_data(l, in, &out, dy, dx, ws));
        }
        if ((direct_w || !l->dw) && (direct_d || !dx)) return MN_OK;
        mn_conv3d rest = *l;
        rest.db = NULL;
        if (direct_w) rest.dw = NULL;
        return mn_conv3d_backward(&rest, in, x, dy, direct_d ? NULL : dx, ws);
    }
    /* Winograd hook: the passes it was chosen for run here, the rest below on the GEMM path. */
    if (mn_wino_eligible(l, in)) {
        if (dx && l->dw && l->algo[MN_CONV_PASS_BWD_DATA] == MN_CONV_ALGO_WINOGRAD &&
            l->algo[MN_CONV_PASS_BWD_WEIGHTS] == MN_CONV_ALGO_WINOGRAD)
            return mn_wino_backward(l, in, &out, x, dy, dx, ws);
        if (dx && l->algo[MN_CONV_PASS_BWD_DATA] == MN_CONV_ALGO_WINOGRAD) {
            mn_prof_refine(MN_PROF_CONV_BWD_DATA);
            MN_CALL(mn_wino_backward_data(l, in, &out, dy, dx, ws));
            dx = NULL;
        }
        if (l->dw && l->algo[MN_CONV_PASS_BWD_WEIGHTS] == MN_CONV_ALGO_WINOGRAD) {
            mn_prof_refine(MN_PROF_CONV_BWD_WEIGHTS);
            MN_CALL(mn_wino_backward_weights(l, in, &out, x, dy, ws));
            return dx ? conv_backward_data_only(l, in, x, dy, dx, ws) : MN_OK;
        }
        if (!dx && !l->dw) return MN_OK;
    }
    if (l->dw && mn_stem_eligible(l, in)) {
        mn_prof_refine(MN_PROF_CONV_BWD_WEIGHTS);
        MN_CALL(mn_stem_backward_weights(l, in, &out, x, dy, ws));
        return dx ? conv_backward_data_only(l, in, x, dy, dx, ws) : MN_OK;
    }
    mn_vgeom g;
    conv_vgeom(l, in, &out, &g);
    mn_taps tp;
    if (conv_use_taps(&g, &tp)) return conv_backward_taps(l, &g, &tp, N, x, dy, dx, ws);
    const int rows = (int)mn_vgeom_rows(&g);
    const int G = conv_group(N, P);
    const size_t plane = (size_t)out.h * out.w, cols = conv_slab_max_cols(&g, N, G);
    float *col = ws, *stage = ws + (size_t)rows * cols, *dwt = stage + (size_t)K * cols;
    for (int n0 = 0; n0 < N; n0 += G) {
        const int nb = N - n0 < G ? N - n0 : G;
        const int nz = conv_slab(&g, nb);
        for (int z0 = 0; z0 < out.d; z0 += nz) {
            mn_vgeom gs;
            const size_t sv = conv_slab_geom(&g, z0, nz, &gs), ld = (size_t)nb * sv;
            /* dY of the group's slab as a (K x nb*sv) matrix: the tensor itself (row stride P) for one sample,
             * else a packed copy. */
            const float *dyg = dy + (size_t)n0 * K * P + (size_t)z0 * plane;
            size_t ldy = P;
            if (nb > 1) {
                mn_batch_pack(dyg, nb, K, sv, P, stage);
                dyg = stage;
                ldy = ld;
            }
            mn_prof_refine(MN_PROF_CONV_BWD_WEIGHTS);
            if (l->dw) {
                mn_vol2col(&gs, nb, x + (size_t)n0 * C * Pin, (size_t)C * Pin, col, ld, sv);
                /* dW^T (rows x K) += col dY^T, accumulated over groups and slabs, added to dW at the end. */
                MN_CALL(mn_gemm(rows, K, (int)ld, 1.0f, col, (ptrdiff_t)ld, 1, dyg, 1, (ptrdiff_t)ldy,
                                (n0 || z0) ? 1.0f : 0.0f, dwt, K, 1));
            }
            mn_prof_refine(MN_PROF_CONV_BWD_DATA);
            if (dx) {
                MN_CALL(mn_gemm(rows, (int)ld, K, 1.0f, l->w, 1, rows, dyg, (ptrdiff_t)ldy, 1, 0.0f, col,
                                (ptrdiff_t)ld, 1));
                mn_col2vol(&gs, nb, col, ld, sv, dx + (size_t)n0 * C * Pin, (size_t)C * Pin);
            }
        }
    }
    mn_prof_refine(MN_PROF_CONV_BWD_WEIGHTS);
    if (l->dw) mn_transpose(dwt, (size_t)rows, (size_t)K, NULL, 1, l->dw, (size_t)rows);
    return MN_OK;
}

/* ---- direct loop nests -------------------------------------------------------------------------------------- */

mn_err mn_conv3d_forward_ref(const mn_conv3d *l, const mn_shape *in, const float *x, float *y)
{
    mn_shape out;
    MN_CALL(conv_check(l, in, &out));
    MN_CHECK(x != NULL && y != NULL && l->w != NULL, MN_ERR_ARG, "conv3d_ref: NULL x, y or weights");
    const int C = l->cin, K = l->cout;
    const int I0 = in->d, I1 = in->h, I2 = in->w, O0 = out.d, O1 = out.h, O2 = out.w;
    const int k0 = l->k[0], k1 = l->k[1], k2 = l->k[2];
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int n = 0; n < in->n; n++) {
        for (int k = 0; k < K; k++) {
            for (int oz = 0; oz < O0; oz++)
                for (int oy = 0; oy < O1; oy++)
                    for (int ox = 0; ox < O2; ox++) {
                        double acc = l->b ? l->b[k] : 0.0;
                        for (int c = 0; c < C; c++)
                            for (int a = 0; a < k0; a++) {
                                const int iz = oz * l->s[0] - l->p[0] + a * l->dil[0];
                                if (iz < 0 || iz >= I0) continue;
                                for (int b = 0; b < k1; b++) {
                                    const int iy = oy * l->s[1] - l->p[1] + b * l->dil[1];
                                    if (iy < 0 || iy >= I1) continue;
                                    for (int e = 0; e < k2; e++) {
                                        const int ix = ox * l->s[2] - l->p[2] + e * l->dil[2];
                                        if (ix < 0 || ix >= I2) continue;
                                        acc += (double)l->w[(((size_t)k * C + c) * k0 + a) * k1 * k2 + b * k2 + e] *
                                               x[((((size_t)n * C + c) * I0 + iz) * I1 + iy) * I2 + ix];
                                    }
                                }
                            }
                        y[((((size_t)n * K + k) * O0 + oz) * O1 + oy) * O2 + ox] = (float)acc;
                    }
        }
    }
    return MN_OK;
}

/* Output index o with o*s - p + t*dil == i, or -1. */
static inline int src_index(int i, int t, int s, int p, int dil, int O)
{
    const int num = i + p - t * dil;
    if (num < 0 || num % s) return -1;
    return num / s < O ? num / s : -1;
}

mn_err mn_conv3d_backward_ref(const mn_conv3d *l, const mn_shape *in, const float *x, const float *dy, float *dx)
{
    mn_shape out;
    MN_CALL(conv_check(l, in, &out));
    MN_CHECK(dy != NULL && l->w != NULL, MN_ERR_ARG, "conv3d_ref: NULL dy or weights");
    MN_CHECK(x != NULL || l->dw == NULL, MN_ERR_ARG, "conv3d_ref: dw wanted but x is NULL");
    const int N = in->n, C = l->cin, K = l->cout;
    const int I0 = in->d, I1 = in->h, I2 = in->w, O0 = out.d, O1 = out.h, O2 = out.w;
    const int k0 = l->k[0], k1 = l->k[1], k2 = l->k[2];
    const size_t P = mn_shape_voxels(&out);
    if (l->db)
        for (int k = 0; k < K; k++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++)
                for (size_t v = 0; v < P; v++) acc += dy[((size_t)n * K + k) * P + v];
            l->db[k] += (float)acc;
        }
    if (l->dw) {
#pragma omp parallel for collapse(2) schedule(dynamic)
        for (int k = 0; k < K; k++)
            for (int c = 0; c < C; c++)
                for (int a = 0; a < k0; a++)
                    for (int b = 0; b < k1; b++)
                        for (int e = 0; e < k2; e++) {
                            double acc = 0.0;
                            for (int n = 0; n < N; n++)
                                for (int oz = 0; oz < O0; oz++) {
                                    const int iz = oz * l->s[0] - l->p[0] + a * l->dil[0];
                                    if (iz < 0 || iz >= I0) continue;
                                    for (int oy = 0; oy < O1; oy++) {
                                        const int iy = oy * l->s[1] - l->p[1] + b * l->dil[1];
                                        if (iy < 0 || iy >= I1) continue;
                                        for (int ox = 0; ox < O2; ox++) {
                                            const int ix = ox * l->s[2] - l->p[2] + e * l->dil[2];
                                            if (ix < 0 || ix >= I2) continue;
                                            acc += (double)dy[((((size_t)n * K + k) * O0 + oz) * O1 + oy) * O2 + ox] *
                                                   x[((((size_t)n * C + c) * I0 + iz) * I1 + iy) * I2 + ix];
                                        }
                                    }
                                }
                            l->dw[(((size_t)k * C + c) * k0 + a) * k1 * k2 + b * k2 + e] += (float)acc;
                        }
    }
    if (dx) {
#pragma omp parallel for collapse(2) schedule(dynamic)
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++)
                for (int iz = 0; iz < I0; iz++)
                    for (int iy = 0; iy < I1; iy++)
                        for (int ix = 0; ix < I2; ix++) {
                            double acc = 0.0;
                            for (int a = 0; a < k0; a++) {
                                const int oz = src_index(iz, a, l->s[0], l->p[0], l->dil[0], O0);
                                if (oz < 0) continue;
                                for (int b = 0; b < k1; b++) {
                                    const int oy = src_index(iy, b, l->s[1], l->p[1], l->dil[1], O1);
                                    if (oy < 0) continue;
                                    for (int e = 0; e < k2; e++) {
                                        const int ox = src_index(ix, e, l->s[2], l->p[2], l->dil[2], O2);
                                        if (ox < 0) continue;
                                        for (int k = 0; k < K; k++)
                                            acc += (double)l->w[(((size_t)k * C + c) * k0 + a) * k1 * k2 + b * k2 + e] *
                                                   dy[((((size_t)n * K + k) * O0 + oz) * O1 + oy) * O2 + ox];
                                    }
                                }
                            }
                            dx[((((size_t)n * C + c) * I0 + iz) * I1 + iy) * I2 + ix] += (float)acc;
                        }
    }
    return MN_OK;
}
