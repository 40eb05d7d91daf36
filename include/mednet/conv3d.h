/* conv3d.h: 3-D convolution and transposed convolution on NCDHW float32.
 *
 * Forward, backward-data and backward-weights run on BLIS sgemm through vol2col/col2vol; a 1x1x1 convolution with
 * stride 1 and no padding skips vol2col.  Every fast routine has a `_ref` twin (the direct loop nest) used by the
 * tests.  Layers allocate nothing per call: the caller passes a workspace of mn_conv3d_workspace_floats() floats,
 * sized once at setup (the model takes the maximum over its layers).
 *
 * Weights follow PyTorch's layout: conv (cout, cin, kd, kh, kw); transposed conv (cin, cout, kd, kh, kw).
 * Parameters and gradients are views into the model's flat buffers.
 */
#ifndef MEDNET_CONV3D_H
#define MEDNET_CONV3D_H

#include "mednet/error.h"
#include "mednet/tensor.h"

/* The three passes of a convolution, indexing mn_conv3d.algo. */
enum { MN_CONV_PASS_FWD, MN_CONV_PASS_BWD_DATA, MN_CONV_PASS_BWD_WEIGHTS, MN_CONV_NPASS };

/* How a pass is computed: the GEMM path (pointwise/dense/taps, chosen by geometry), 3-D Winograd F(2x2x2, 3x3x3)
 * or F(4x4x4, 3x3x3) (stride-1 3x3x3 convolutions, any padding and dilation) or the channel-blocked direct kernels
 * (several input channels, output channels a multiple of the CPU's vector width; backward-data only at stride 1:
 * see mn_conv3d_pass_algo).  A pass whose algorithm cannot run the layer takes the GEMM path. */
typedef enum mn_conv_algo {
    MN_CONV_ALGO_GEMM = 0,
    MN_CONV_ALGO_WINOGRAD = 1,
    MN_CONV_ALGO_DIRECT = 2,
    MN_CONV_ALGO_WINOGRAD4 = 3
} mn_conv_algo;

/* A 3-D convolution: y[n,k] = b[k] + sum_c w[k,c] (*) x[n,c]. Index order of k/s/p/dil is (d, h, w). */
typedef struct mn_conv3d {
    int cin, cout;
    int k[3], s[3], p[3], dil[3];  /* kernel, stride, zero padding, dilation: all >= 1 except p >= 0 */
    float *w, *b;                  /* (cout, cin, kd, kh, kw), (cout) or NULL for no bias */
    float *dw, *db;                /* same shapes; NULL: parameter gradients not wanted (frozen) */
    unsigned char algo[MN_CONV_NPASS]; /* mn_conv_algo per pass; zero-initialised = GEMM; see choose_algo */
} mn_conv3d;

/* Output shape for input `in`; MN_ERR_SHAPE (naming the layer geometry) if in->c != cin or the output is empty. */
mn_err mn_conv3d_out_shape(const mn_conv3d *l, const mn_shape *in, mn_shape *out);

/* Workspace (floats) needed by forward and backward for input shape `in`: the GEMM path's, and Winograd's when
 * l->algo asks for it on some pass or mn_conv3d_choose_algo may pick it (MEDNET_CONV_ALGO auto or winograd, or
 * the default rule choosing it for some pass). */
size_t mn_conv3d_workspace_floats(const mn_conv3d *l, const mn_shape *in);

/* y (out shape) is overwritten.  ws: workspace of at least mn_conv3d_workspace_floats floats. Not thread-safe on
 * one workspace; internally multi-threaded through BLIS/OpenMP. */
mn_err mn_conv3d_forward(const mn_conv3d *l, const mn_shape *in, const float *x, float *y, float *ws);

/* Backward: accumulates dx += dL/dx when dx != NULL, and dw += dL/dw, db += dL/db when l->dw / l->db != NULL.
 * x is the forward input, dy the gradient of the output. */
mn_err mn_conv3d_backward(const mn_conv3d *l, const mn_shape *in, const float *x, const float *dy, float *dx,
                          float *ws);

/* Direct loop-nest twins with the same contracts (no workspace). */
mn_err mn_conv3d_forward_ref(const mn_conv3d *l, const mn_shape *in, const float *x, float *y);
mn_err mn_conv3d_backward_ref(const mn_conv3d *l, const mn_shape *in, const float *x, const float *dy, float *dx);

/* Dense FLOPs of one forward pass (2 * MACs, padded taps included); backward-data and backward-weights cost the
 * same each.  For benchmarks. */
double mn_conv3d_flops(const mn_conv3d *l, const mn_shape *in);

/* Which GEMM-side path mn_conv3d_forward/backward take for input shape `in`: "pointwise" (1x1x1, stride 1, no
 * padding: no unfolding), "stem" (one input channel, no dilation: direct kernels for forward and backward-weights
 * on CPUs with AVX2+FMA or AVX-512F, unless MEDNET_CONV_ALGO=gemm), "dense" (vol2col of every tap), "taps" (only
 * the taps that read inside the volume: large padding and dilation on small volumes) or "invalid".  For tests and
 * benchmarks. */
const char *mn_conv3d_algo(const mn_conv3d *l, const mn_shape *in);

/* The algorithm one pass (MN_CONV_PASS_*) runs with: "winograd", "winograd4" or "direct" (the channel-blocked direct
 * kernels, nn/direct.h) when l->algo[pass] says so and the layer can (otherwise the GEMM path runs), else the
 * mn_conv3d_algo name (for backward-data of a "stem" layer, the GEMM path's name); "invalid" for a bad pass or
 * geometry. */
const char *mn_conv3d_pass_algo(const mn_conv3d *l, const mn_shape *in, int pass);

/* The default choice (MEDNET_CONV_ALGO unset or "rule"): a fixed function of the geometry, the pass, the thread count
 * (mn_threads_count) and the CPU's instruction set, the same in every process that runs with as many threads on the
 * same kind of CPU.  Winograd F(4x4x4, 3x3x3) for every pass of a stride-1 3x3x3 layer with dilation at most
 * MN_WINO4_RULE_MAX_DILATION, both channel counts at least MN_WINO4_RULE_MIN_CHANNELS, every output extent at least
 * MN_WINO4_RULE_MIN_EXTENT and at least MN_WINO4_RULE_MIN_TILES tiles of 4^3 outputs over the batch (measured against
 * the direct kernels on every pass, 1 and 2 threads, batch 1 and 2: 10-31% faster on MedicalNet's 64-channel layers at
 * 16^3 and 28^3, 128 channels at 14^3 and the dilation-2 stage at 14^3; slower with fewer tiles, where the transformed
 * weights are used for too few products (8^3 at batch 2), and on the dilation-4 stage, where the direct kernels skip
 * half the taps as padding).  Else the direct kernels when they can run the pass (nn/direct.h: forward and
 * backward-weights at any stride, backward-data at stride 1), the kernel is larger than 1x1x1, every output extent is
 * at least MN_DIRECT_RULE_MIN_EXTENT, and no dilation exceeds MN_DIRECT_RULE_MAX_DILATION or every output extent is at
 * least MN_DIRECT_RULE_DILATED_MIN_EXTENT (measured: they win or tie on every pass of layers 1-3 and the head, on the
 * stride-2 3x3x3 first convolution of layer2 (forward and backward-weights 1.3-2.1x faster than the GEMM path at 112^3,
 * 1 and 2 threads, batch 1 and 2), and on the dilation-4 stage at 14^3, and lose to the tap path at dilation 4 on 8^3;
 * the 1x1x1 shortcuts, strided or not, lose; outputs under 8^3 keep their earlier paths, so the model tests' tiny
 * volumes do not depend on these kernels' rounding).  Otherwise Winograd when the layer can run it (see
 * mn_conv3d_pass_algo), the dilation is 1 or 2 (the same in every dimension), the smallest output extent is >=
 * MN_WINO_RULE_MIN_EXTENT and both channel counts are >= MN_WINO_RULE_MIN_CHANNELS (forward:
 * MN_WINO_RULE_MIN_CHANNELS_FWD); the GEMM path otherwise (and for a bad pass).  With 2 or more threads the backward
 * passes of an undilated layer whose smallest output extent is >= MN_WINO_RULE_MT_GEMM_BWD_EXTENT take the GEMM path.
 * Thresholds from per-layer measurements over the 3x3x3 shapes of resnet10/18/50 with the conv_seg head at 64^3 and
 * 112^3 on 1 and 2 threads (bench_conv3d --sweep): Winograd wins on the 64- and 128-channel layers at 8^3 and up and on
 * the dilation-2 stage (layer3) on every pass, on the head's 32->32 only forward, and loses on the dilation-4 stage; on
 * 2 threads the GEMM path ties or wins on layer1's backward passes at 28^3. */
#define MN_WINO4_RULE_MAX_DILATION 2
#define MN_WINO4_RULE_MIN_CHANNELS 64
#define MN_WINO4_RULE_MIN_EXTENT 8
#define MN_WINO4_RULE_MIN_TILES 64
#define MN_DIRECT_RULE_MIN_EXTENT 8
#define MN_DIRECT_RULE_MAX_DILATION 2
#define MN_DIRECT_RULE_DILATED_MIN_EXTENT 12
#define MN_WINO_RULE_MIN_CHANNELS 64
#define MN_WINO_RULE_MIN_CHANNELS_FWD 32
#define MN_WINO_RULE_MIN_EXTENT 8
#define MN_WINO_RULE_MT_GEMM_BWD_EXTENT 20
mn_conv_algo mn_conv3d_rule_algo(const mn_conv3d *l, const mn_shape *in, int pass);

/* The same rule for a given thread count. */
mn_conv_algo mn_conv3d_rule_algo_threads(const mn_conv3d *l, const mn_shape *in, int pass, int threads);

/* Set l->algo for input shape `in` by measurement: each pass the layer needs (backward-weights only when
 * l->dw != NULL) is timed on the GEMM path and with Winograd and the direct kernels where they can run it (one
 * warm-up, best of two, on private random operands: the layer's parameters and gradients are not touched) and the
 * fastest is kept.  Layers neither can run get GEMM without timing.  Only with MEDNET_CONV_ALGO=auto: unset (or
 * rule) applies mn_conv3d_rule_algo without timing, because a timed choice can differ between processes and a
 * resumed run must match an uninterrupted one bit for bit; gemm keeps the GEMM path everywhere; winograd and direct
 * take Winograd or the direct kernels wherever they can run; another value is MN_ERR_ARG.  ws: a workspace of
 * ws_floats >= mn_conv3d_workspace_floats floats (contents destroyed).  Allocates the timing operands for the
 * duration of the call.  Not collective: ranks may choose differently, which changes rounding, not results beyond
 * fp32 tolerance. */
mn_err mn_conv3d_choose_algo(mn_conv3d *l, const mn_shape *in, float *ws, size_t ws_floats);

/* Transposed 3-D convolution (the adjoint of mn_conv3d with the same geometry), as torch.nn.ConvTranspose3d with
 * output_padding `op`: out = (in - 1)*s - 2p + dil*(k - 1) + op + 1. */
typedef struct mn_convt3d {
    int cin, cout;
    int k[3], s[3], p[3], dil[3], op[3];
    float *w, *b;   /* (cin, cout, kd, kh, kw), (cout) or NULL */
    float *dw, *db; /* same shapes or NULL */
} mn_convt3d;

mn_err mn_convt3d_out_shape(const mn_convt3d *l, const mn_shape *in, mn_shape *out);
size_t mn_convt3d_workspace_floats(const mn_convt3d *l, const mn_shape *in);
mn_err mn_convt3d_forward(const mn_convt3d *l, const mn_shape *in, const float *x, float *y, float *ws);
mn_err mn_convt3d_backward(const mn_convt3d *l, const mn_shape *in, const float *x, const float *dy, float *dx,
                           float *ws);
mn_err mn_convt3d_forward_ref(const mn_convt3d *l, const mn_shape *in, const float *x, float *y);
mn_err mn_convt3d_backward_ref(const mn_convt3d *l, const mn_shape *in, const float *x, const float *dy, float *dx);

#endif
