/* direct_kernel.h (private): the register-blocked kernels of direct.c for one instruction set.  direct.c includes
 * this file once per set, with
 *   DC_SFX   name suffix (avx512, avx2),   DC_TARGET  the GCC target string,
 *   DC_VL    floats per vector,            DC_KV      vectors of lane channels per register block (at most),
 *   DC_VT, DC_LOADU, DC_STOREU, DC_SET1, DC_ZERO, DC_FMA, DC_ADD   the vector type and intrinsics
 * defined; dc_geom, dc_fwd_item, dc_bww_item and the DC_* sizes come from direct.c.
 *
 * Each block function is always inlined into a dispatcher that calls it with literal R (outputs or taps per block,
 * 1..DC_R) and KVN (vectors, 1..DC_KV), so every block is a fully unrolled set of R*KVN accumulators in registers
 * (AVX-512: up to 6 x 4 = 24 of 32; AVX2: 6 x 2 = 12 of 16).
 */

/* The block loops must be unrolled for the accumulators to live in registers: GCC does that at -O3 but not at -O2,
 * where the kernels ran 4x slower. */
#define DC_UNROLL _Pragma("GCC unroll 8")

#define DC_CAT_(a, b) a##_##b
#define DC_CAT(a, b) DC_CAT_(a, b)

/* ---- forward (and backward-data) ------------------------------------------------------------------------------
 * ob[r*KB + j*VL ..] (+)= sum over nc reduced channels c and nt taps t of w(c, t)[j] * x(c, t)[r*s]: the weights of
 * one tap are loaded once per block, one input value is broadcast per output.  Each DC_CSUB channels' sum starts
 * from zero and is then added to ob: one sequential sum over all cin*27 terms was 3-6x less accurate than BLIS's,
 * and resnet50's training-mode gradients (test_model_parity) went from within 2x PyTorch float32's error to 4x. */
__attribute__((target(DC_TARGET), always_inline)) static inline void DC_CAT(fwd_blk, DC_SFX)(
    const float *xc, size_t cstride, int nc, const float *wc, size_t wcs, const int *xoff, const int *woff, int nt,
    int s, float *ob, int KB, int first, const int R, const int KVN)
{
    for (int c0 = 0; c0 < nc; c0 += DC_CSUB) {
        const int c1 = nc - c0 < DC_CSUB ? nc : c0 + DC_CSUB;
        DC_VT acc[DC_R][DC_KV];
        DC_UNROLL
        for (int r = 0; r < R; r++)
            DC_UNROLL
            for (int j = 0; j < KVN; j++) acc[r][j] = DC_ZERO();
        for (int c = c0; c < c1; c++) {
            const float *xr = xc + (size_t)c * cstride, *wr = wc + (size_t)c * wcs;
            for (int t = 0; t < nt; t++) {
                const float *xs = xr + xoff[t], *wp = wr + woff[t];
                DC_VT w[DC_KV];
                DC_UNROLL
                for (int j = 0; j < KVN; j++) w[j] = DC_LOADU(wp + j * DC_VL);
                DC_UNROLL
                for (int r = 0; r < R; r++) {
                    const DC_VT b = DC_SET1(xs[r * s]);
                    DC_UNROLL
                    for (int j = 0; j < KVN; j++) acc[r][j] = DC_FMA(w[j], b, acc[r][j]);
                }
            }
        }
        DC_UNROLL
        for (int r = 0; r < R; r++)
            DC_UNROLL
            for (int j = 0; j < KVN; j++) {
                float *o = ob + (size_t)r * KB + j * DC_VL;
                DC_STOREU(o, first && !c0 ? acc[r][j] : DC_ADD(DC_LOADU(o), acc[r][j]));
            }
    }
}

#define DC_FWD_CASE(R_, KV_)                                                                                         \
    case (R_) * 8 + (KV_):                                                                                           \
        DC_CAT(fwd_blk, DC_SFX)(xc, cstride, nc, wc, wcs, xoff, woff, nt, s, ob, KB, first, R_, KV_);                \
        break;
#if DC_KV == 4
#define DC_FWD_R(R_) DC_FWD_CASE(R_, 1) DC_FWD_CASE(R_, 2) DC_FWD_CASE(R_, 3) DC_FWD_CASE(R_, 4)
#else
#define DC_FWD_R(R_) DC_FWD_CASE(R_, 1) DC_FWD_CASE(R_, 2)
#endif

__attribute__((target(DC_TARGET))) static void DC_CAT(fwd_disp, DC_SFX)(const float *xc, size_t cstride, int nc,
                                                                        const float *wc, size_t wcs, const int *xoff,
                                                                        const int *woff, int nt, int s, float *ob,
                                                                        int KB, int first, int R, int kv)
{
    switch (R * 8 + kv) {
        DC_FWD_R(1)
        DC_FWD_R(2)
        DC_FWD_R(3)
        DC_FWD_R(4)
        DC_FWD_R(5)
        DC_FWD_R(6)
    default:
        break;
    }
}
#undef DC_FWD_R
#undef DC_FWD_CASE

__attribute__((target(DC_TARGET))) static void DC_CAT(dc_fwd, DC_SFX)(const dc_geom *g, const float *xp,
                                                                      const float *wt, const float *bias,
                                                                      int accumulate, float *y)
{
#pragma omp parallel for schedule(dynamic, 1)
    for (long i = 0; i < g->items; i++) {
        float obuf[DC_OBUF];
        int xoff[DC_MAXT], woff[DC_MAXT], lx[DC_LISTS][DC_LTAPS], lw[DC_LISTS][DC_LTAPS], ln[DC_LISTS];
        dc_fwd_item it;
        dc_fwd_item_init(g, i, &it);
        const int Ox = g->out[2], KB = it.kv * DC_VL;
        const size_t cstride = g->cstride, wcs = (size_t)g->T * KB;
        if (g->cache_taps)
            for (int oy = it.oy0; oy < it.oy1; oy++)
                for (int b = 0; b < g->nblk; b++) {
                    const int q = (oy - it.oy0) * g->nblk + b;
                    ln[q] = dc_fwd_taps(g, it.oz, oy, g->bx0[b], g->bR[b], KB, lx[q], lw[q]);
                }
        for (int c0 = 0; c0 < g->C; c0 += DC_CB) {
            const int nc = g->C - c0 < DC_CB ? g->C - c0 : DC_CB;
            const float *xc = xp + ((size_t)it.n * g->C + c0) * cstride;
            const float *wc = wt + (size_t)it.k0 * g->C * g->T + c0 * wcs;
            for (int oy = it.oy0; oy < it.oy1; oy++)
                for (int b = 0; b < g->nblk; b++) {
                    const int ox0 = g->bx0[b], R = g->bR[b], q = (oy - it.oy0) * g->nblk + b;
                    const int nt = g->cache_taps ? ln[q] : dc_fwd_taps(g, it.oz, oy, ox0, R, KB, xoff, woff);
                    const int *xo = g->cache_taps ? lx[q] : xoff, *wo = g->cache_taps ? lw[q] : woff;
                    float *ob = obuf + ((size_t)(oy - it.oy0) * Ox + ox0) * KB;
                    if (!nt) {
                        if (!c0) memset(ob, 0, (size_t)R * KB * sizeof *ob);
                        continue;
                    }
                    DC_CAT(fwd_disp, DC_SFX)(xc, cstride, nc, wc, wcs, xo, wo, nt, g->s[2], ob, KB, c0 == 0, R,
                                             it.kv);
                }
        }
        dc_fwd_store(g, &it, obuf, bias, accumulate, y);
    }
}

/* ---- backward-weights -----------------------------------------------------------------------------------------
 * acc[r][j] (the item's dw block at tap r) += sum over nrow output rows and Ox outputs of x(tap r, row, o) dy(row,
 * o)[j] (dy channels-last, K floats per output: the block's lanes), each run of whole rows of at least DC_BWROWS
 * outputs summed from zero and then added (two levels, as the forward): one channels-last dy row segment loaded per
 * output, one input value broadcast per tap. */
__attribute__((target(DC_TARGET), always_inline)) static inline void DC_CAT(bww_blk, DC_SFX)(
    const float *const *xrow, size_t xrs, const float *dyt, int K, int nrow, int Ox, int s, float *const *dacc,
    const int R, const int KVN)
{
    const int chunk = Ox >= DC_BWROWS ? 1 : (DC_BWROWS + Ox - 1) / Ox; /* rows per partial sum */
    for (int row0 = 0; row0 < nrow; row0 += chunk) {
        const int row1 = nrow - row0 < chunk ? nrow : row0 + chunk;
        DC_VT acc[DC_R][DC_KV];
        DC_UNROLL
        for (int r = 0; r < R; r++)
            DC_UNROLL
            for (int j = 0; j < KVN; j++) acc[r][j] = DC_ZERO();
        for (int row = row0; row < row1; row++) {
            const float *dr = dyt + (size_t)row * Ox * K;
            const float *xr[DC_R];
            DC_UNROLL
            for (int r = 0; r < R; r++) xr[r] = xrow[r] + (size_t)row * xrs;
            for (int o = 0; o < Ox; o++) {
                DC_VT d[DC_KV];
                DC_UNROLL
                for (int j = 0; j < KVN; j++) d[j] = DC_LOADU(dr + (size_t)o * K + j * DC_VL);
                DC_UNROLL
                for (int r = 0; r < R; r++) {
                    const DC_VT b = DC_SET1(xr[r][o * s]);
                    DC_UNROLL
                    for (int j = 0; j < KVN; j++) acc[r][j] = DC_FMA(d[j], b, acc[r][j]);
                }
            }
        }
        DC_UNROLL
        for (int r = 0; r < R; r++)
            DC_UNROLL
            for (int j = 0; j < KVN; j++)
                DC_STOREU(dacc[r] + j * DC_VL, DC_ADD(DC_LOADU(dacc[r] + j * DC_VL), acc[r][j]));
    }
}

#define DC_BWW_CASE(R_, KV_)                                                                                         \
    case (R_) * 8 + (KV_):                                                                                           \
        DC_CAT(bww_blk, DC_SFX)(xrow, xrs, dyt, K, nrow, Ox, s, dacc, R_, KV_);                                    \
        break;
#if DC_KV == 4
#define DC_BWW_R(R_) DC_BWW_CASE(R_, 1) DC_BWW_CASE(R_, 2) DC_BWW_CASE(R_, 3) DC_BWW_CASE(R_, 4)
#else
#define DC_BWW_R(R_) DC_BWW_CASE(R_, 1) DC_BWW_CASE(R_, 2)
#endif

__attribute__((target(DC_TARGET))) static void DC_CAT(bww_disp, DC_SFX)(const float *const *xrow, size_t xrs,
                                                                        const float *dyt, int K, int nrow,
                                                                        int Ox, int s, float *const *dacc, int R,
                                                                        int kv)
{
    switch (R * 8 + kv) {
        DC_BWW_R(1)
        DC_BWW_R(2)
        DC_BWW_R(3)
        DC_BWW_R(4)
        DC_BWW_R(5)
        DC_BWW_R(6)
    default:
        break;
    }
}
#undef DC_BWW_R
#undef DC_BWW_CASE

__attribute__((target(DC_TARGET))) static void DC_CAT(dc_bww, DC_SFX)(const dc_geom *g, const float *xp,
                                                                      const float *dyt, float *dw)
{
#pragma omp parallel for schedule(dynamic, 1)
    for (long i = 0; i < g->items; i++) {
        float dacc[DC_BWC * DC_MAXT * DC_KV * DC_VL];
        dc_bww_item it;
        dc_bww_item_init(g, i, &it);
        const int KB = it.kv * DC_VL, T = g->T;
        const size_t P = (size_t)g->out[0] * g->out[1] * g->out[2];
        memset(dacc, 0, (size_t)(it.c1 - it.c0) * T * KB * sizeof *dacc);
        for (int n = 0; n < g->N; n++)
            for (int oz = 0; oz < g->out[0]; oz++)
                for (int c = it.c0; c < it.c1; c++) {
                    dc_bww_group grp[DC_MAXT];
                    const int ng = dc_bww_groups(g, n, c, oz, grp);
                    for (int q = 0; q < ng; q++) {
                        const dc_bww_group *gr = &grp[q];
                        const float *xrow[DC_R];
                        float *da[DC_R];
                        for (int r = 0; r < gr->R; r++) {
                            xrow[r] = xp + gr->xoff[r];
                            da[r] = dacc + ((size_t)(c - it.c0) * T + gr->tap[r]) * KB;
                        }
                        const float *dr = dyt + (size_t)it.k0 * g->N * P + (size_t)n * P * KB +
                                          (((size_t)oz * g->out[1] + gr->oy0) * g->out[2]) * KB;
                        DC_CAT(bww_disp, DC_SFX)(xrow, (size_t)g->s[1] * g->wp, dr, KB,
                                                 gr->oy1 - gr->oy0, g->out[2], g->s[2], da, gr->R, it.kv);
                    }
                }
        dc_bww_store(g, &it, dacc, dw);
    }
}

#undef DC_CAT
#undef DC_CAT_
#undef DC_UNROLL
