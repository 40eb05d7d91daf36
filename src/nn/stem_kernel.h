/* stem_kernel.h (private): the forward and backward-weights kernels of stem.c for one instruction set.  stem.c
 * includes this file once per set, with
 *   STEM_SFX      name suffix (avx512, avx2),  STEM_TARGET  the GCC target string,
 *   STEM_VL       floats per vector,           STEM_KV      vectors of output channels per register block
 *   STEM_VT, STEM_LOADU, STEM_STOREU, STEM_SET1, STEM_ZERO, STEM_FMA, STEM_ADD   the vector type and intrinsics
 * defined (intrinsics, not GCC vector arithmetic: -std=c11 turns off FMA contraction, and a separate multiply and
 * add ran the stem forward at 112 GFLOP/s on 1 thread where the fused kernel runs at 174); STEM_R (outputs, or
 * taps, per register block) and stem_geom, stem_item, stem_item_init come from stem.c.
 * Register blocks: forward STEM_R outputs x STEM_KV vectors of channels (AVX-512: 6 x 4 = 24 of 32 registers;
 * AVX2: 6 x 2 = 12 of 16), the weights of one tap loaded once per block, one input value broadcast per output;
 * backward-weights STEM_R taps x STEM_KV vectors, one dy row (channels-last) loaded per output, one input value
 * broadcast per tap.  Channel counts that are not a multiple of STEM_KV vectors finish one vector at a time. */

/* Unrolled block loops keep the accumulators in registers at -O2 too (GCC unrolls them on its own only at -O3). */
#define STEM_UNROLL _Pragma("GCC unroll 8")

#define STEM_CAT_(a, b) a##_##b
#define STEM_CAT(a, b) STEM_CAT_(a, b)

/* ybuf[o][k0 .. k0 + kv*VL) for outputs o < nox (rounded up to STEM_R: the window is zero-padded that far). */
__attribute__((target(STEM_TARGET), always_inline)) static inline void STEM_CAT(fwd_block, STEM_SFX)(
    const stem_item *it, const float *wt, int K, int k0, int kv, int s, float *ybuf)
{
    for (int o0 = 0; o0 < it->nox; o0 += STEM_R) {
        STEM_VT acc[STEM_R][STEM_KV];
        STEM_UNROLL
        for (int r = 0; r < STEM_R; r++)
            STEM_UNROLL
            for (int j = 0; j < kv; j++) acc[r][j] = STEM_ZERO();
        for (int t = 0; t < it->ntap_real; t++) {
            const float *wp = wt + (size_t)it->tap[t] * K + k0;
            const float *xs = it->src[t] + (size_t)o0 * s;
            STEM_VT w[STEM_KV];
            STEM_UNROLL
            for (int j = 0; j < kv; j++) w[j] = STEM_LOADU(wp + j * STEM_VL);
            STEM_UNROLL
            for (int r = 0; r < STEM_R; r++) {
                const STEM_VT b = STEM_SET1(xs[r * s]);
                STEM_UNROLL
                for (int j = 0; j < kv; j++) acc[r][j] = STEM_FMA(w[j], b, acc[r][j]);
            }
        }
        STEM_UNROLL
        for (int r = 0; r < STEM_R; r++)
            STEM_UNROLL
            for (int j = 0; j < kv; j++) STEM_STOREU(ybuf + (size_t)(o0 + r) * K + k0 + j * STEM_VL, acc[r][j]);
    }
}

__attribute__((target(STEM_TARGET))) static void STEM_CAT(stem_fwd, STEM_SFX)(const stem_geom *g, const float *x,
                                                                             const float *wt, const float *bias,
                                                                             float *y)
{
    const int K = g->K;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < g->items; i++) {
        stem_item it;
        float ybuf[(STEM_SEG + STEM_R) * MN_STEM_MAX_COUT];
        stem_item_init(g, x, i, &it);
        int k0 = 0;
        for (; k0 + STEM_KV * STEM_VL <= K; k0 += STEM_KV * STEM_VL)
            STEM_CAT(fwd_block, STEM_SFX)(&it, wt, K, k0, STEM_KV, g->s[2], ybuf);
        for (; k0 < K; k0 += STEM_VL) STEM_CAT(fwd_block, STEM_SFX)(&it, wt, K, k0, 1, g->s[2], ybuf);
        /* Channels-last block to the NCDHW rows, with the bias. */
        const size_t plane = (size_t)g->out[1] * g->out[2], vol = plane * g->out[0];
        float *yo = y + (size_t)it.n * K * vol + (size_t)it.oz * plane + (size_t)it.oy * g->out[2] + it.ox0;
        for (int k = 0; k < K; k++) {
            const float bk = bias ? bias[k] : 0.0f;
            float *yk = yo + (size_t)k * vol;
            for (int o = 0; o < it.nox; o++) yk[o] = ybuf[(size_t)o * K + k] + bk;
        }
    }
}

/* part[tap][k0 .. k0 + kv*VL) += sum over the item's outputs of x(tap) dy, STEM_R taps at a time (the tap list is
 * padded to a multiple of STEM_R with taps that read zeros into the spare slot). */
__attribute__((target(STEM_TARGET), always_inline)) static inline void STEM_CAT(bww_block, STEM_SFX)(
    const stem_item *it, const float *dyt, int K, int k0, int kv, int s, float *part)
{
    for (int t0 = 0; t0 < it->ntap; t0 += STEM_R) {
        STEM_VT acc[STEM_R][STEM_KV];
        STEM_UNROLL
        for (int r = 0; r < STEM_R; r++)
            STEM_UNROLL
            for (int j = 0; j < kv; j++) acc[r][j] = STEM_ZERO();
        const float *src[STEM_R];
        STEM_UNROLL
        for (int r = 0; r < STEM_R; r++) src[r] = it->src[t0 + r];
        for (int o = 0; o < it->nox; o++) {
            STEM_VT d[STEM_KV];
            STEM_UNROLL
            for (int j = 0; j < kv; j++) d[j] = STEM_LOADU(dyt + (size_t)o * K + k0 + j * STEM_VL);
            STEM_UNROLL
            for (int r = 0; r < STEM_R; r++) {
                const STEM_VT b = STEM_SET1(src[r][(size_t)o * s]);
                STEM_UNROLL
                for (int j = 0; j < kv; j++) acc[r][j] = STEM_FMA(d[j], b, acc[r][j]);
            }
        }
        STEM_UNROLL
        for (int r = 0; r < STEM_R; r++) {
            float *pp = part + (size_t)it->tap[t0 + r] * K + k0;
            STEM_UNROLL
            for (int j = 0; j < kv; j++)
                STEM_STOREU(pp + j * STEM_VL, STEM_ADD(STEM_LOADU(pp + j * STEM_VL), acc[r][j]));
        }
    }
}

/* part (STEM_CHUNKS x (taps + 1) x K) = per fixed chunk of items, the weight gradient tap-major. */
__attribute__((target(STEM_TARGET))) static void STEM_CAT(stem_bww, STEM_SFX)(const stem_geom *g, const float *x,
                                                                             const float *dy, float *part)
{
    const int K = g->K;
    const size_t pstride = (size_t)(g->taps + 1) * K;
#pragma omp parallel for schedule(dynamic, 1)
    for (int c = 0; c < STEM_CHUNKS; c++) {
        float *pc = part + (size_t)c * pstride;
        memset(pc, 0, pstride * sizeof *pc);
        const long i0 = g->items * c / STEM_CHUNKS, i1 = g->items * (c + 1) / STEM_CHUNKS;
        float dyt[STEM_SEG * MN_STEM_MAX_COUT];
        for (long i = i0; i < i1; i++) {
            stem_item it;
            stem_item_init(g, x, i, &it);
            const size_t plane = (size_t)g->out[1] * g->out[2], vol = plane * g->out[0];
            const float *dyo = dy + (size_t)it.n * K * vol + (size_t)it.oz * plane + (size_t)it.oy * g->out[2] + it.ox0;
            for (int k = 0; k < K; k++) {
                const float *dk = dyo + (size_t)k * vol;
                for (int o = 0; o < it.nox; o++) dyt[(size_t)o * K + k] = dk[o];
            }
            int k0 = 0;
            for (; k0 + STEM_KV * STEM_VL <= K; k0 += STEM_KV * STEM_VL)
                STEM_CAT(bww_block, STEM_SFX)(&it, dyt, K, k0, STEM_KV, g->s[2], pc);
            for (; k0 < K; k0 += STEM_VL) STEM_CAT(bww_block, STEM_SFX)(&it, dyt, K, k0, 1, g->s[2], pc);
        }
    }
}

#undef STEM_CAT
#undef STEM_CAT_
#undef STEM_UNROLL
