/* vol2col.h (private): unfold a 3-D volume into GEMM columns and fold it back.
 *
 * For a convolution with kernel k, stride s, zero padding p and dilation dil (all (d, h, w)) mapping an input
 * of c channels and extent in[] to an output of extent out[], the column matrix has
 * rows = c * k0*k1*k2 (channel-major, then kd, kh, kw: PyTorch's weight order) and one column per output voxel:
 *
 *   col[(ch*kvol + (a*k1 + b)*k2 + e) * ldc + (oz*out1 + oy)*out2 + ox]
 *       = x[ch, oz*s0 - p0 + a*dil0, oy*s1 - p1 + b*dil1, ox*s2 - p2 + e*dil2]   (0 outside the volume)
 *
 * Batched calls handle nb samples: sample i reads x + i*x_nstride and writes col + i*col_nstride.  Setting
 * col_nstride = out voxels and ldc = nb * out voxels places the samples side by side, so one GEMM covers the batch.
 * Both directions are parallel with OpenMP; col2vol splits the work by (sample, channel) so that no two threads
 * ever add into the same voxel.
 */
#ifndef MN_NN_VOL2COL_H
#define MN_NN_VOL2COL_H

#include <stddef.h>

typedef struct mn_vgeom {
    int c;                        /* channels of the volume */
    int in[3];                    /* volume extent (d, h, w) */
    int out[3];                   /* output (column) extent (d, h, w) */
    int k[3], s[3], p[3], dil[3]; /* kernel, stride, padding, dilation */
} mn_vgeom;

/* Rows of the column matrix: c * kd*kh*kw. */
static inline size_t mn_vgeom_rows(const mn_vgeom *g)
{
    return (size_t)g->c * (size_t)g->k[0] * (size_t)g->k[1] * (size_t)g->k[2];
}

/* Columns per sample: output voxels. */
static inline size_t mn_vgeom_cols(const mn_vgeom *g)
{
    return (size_t)g->out[0] * (size_t)g->out[1] * (size_t)g->out[2];
}

/* Fill the column matrix (overwrites every entry of the rows x cols block of each sample). */
void mn_vol2col(const mn_vgeom *g, int nb, const float *x, size_t x_nstride, float *col, size_t ldc,
                size_t col_nstride);

/* The adjoint: x[...] += every column entry that vol2col would have read from there (accumulates). */
void mn_col2vol(const mn_vgeom *g, int nb, const float *col, size_t ldc, size_t col_nstride, float *x,
                size_t x_nstride);

/* ---- tap-box unfolding: skipping the taps that only ever read padding ----------------------------------------
 *
 * Tap t = (a, b, e) reads inside the volume exactly for the outputs of one box V_t = [lo, hi) in each dimension.
 * With large padding and dilation on small volumes (MedicalNet's dilated stages: dilation 4, padding 4 on 8^3)
 * most of the dense column matrix is zeros (70% there).  The tap layout stores, for one tap at a time, only the
 * columns of its box: block t is a (c x nb*nv[t]) row-major matrix, column i*nv[t] + (box voxel in z, y, x order)
 * for sample i.  All its entries are in-volume copies: no zero fill. */
#define MN_TAPS_MAX 64

typedef struct mn_taps {
    int n;                        /* number of taps (kd*kh*kw, at most MN_TAPS_MAX) */
    int lo[MN_TAPS_MAX][3];       /* box of outputs that tap t reads inside the volume: [lo, hi) per dim */
    int hi[MN_TAPS_MAX][3];
    size_t nv[MN_TAPS_MAX];       /* voxels of the box (0 if empty) */
    size_t total, maxnv;          /* sum and maximum of nv */
} mn_taps;

/* Fill the tap boxes of geometry g.  Returns 0 (and leaves tp unusable) if the kernel has more than MN_TAPS_MAX
 * taps. */
int mn_taps_plan(const mn_vgeom *g, mn_taps *tp);

/* Fill block t: blk (c x nb*nv[t], row-major) gets the in-volume entries of tap t's rows of the column matrix
 * (overwrites).  The caller unfolds, multiplies and folds back one tap at a time with a block small enough to stay in
 * the L3 cache. */
void mn_vol2col_tap(const mn_vgeom *g, const mn_taps *tp, int t, int nb, const float *x, size_t x_nstride,
                    float *blk);

/* The adjoint of mn_vol2col_tap: x += block t's entries at the voxels they were read from. */
void mn_col2vol_tap(const mn_vgeom *g, const mn_taps *tp, int t, int nb, const float *blk, float *x,
                    size_t x_nstride);

/* Rows of a channels-last (nb*P x k) matrix src (P = output voxels) at the voxels of tap t's box, in block column
 * order: dst[j*k + :] = src[(i*P + voxel)*k + :] (gather), or the reverse with += (scatter_add). */
void mn_taps_gather_rows(const mn_vgeom *g, const mn_taps *tp, int t, int nb, const float *src, int k, float *dst);
void mn_taps_scatter_add_rows(const mn_vgeom *g, const mn_taps *tp, int t, int nb, const float *src, int k,
                              float *dst);

/* Batch layout helpers.  A "packed" batch of nb samples with ch channels of P voxels is a (ch x nb*P) row-major
 * matrix: packed[c*nb*P + i*P + v] = nchw[i*ch*P + c*P + v].  It lets one GEMM cover several small volumes. */

/* dst (packed, len voxels per sample and channel) = src (NC..., channel stride cstride >= len, sample stride
 * ch*cstride): dst[c*nb*len + i*len + v] = src[(i*ch + c)*cstride + v].  cstride > len packs a slab of planes. */
void mn_batch_pack(const float *src, int nb, int ch, size_t len, size_t cstride, float *dst);

/* dst (NC...) = src (packed) + bias[c] (bias may be NULL); accumulate != 0 adds into dst instead (bias ignored). */
void mn_batch_unpack(const float *src, int nb, int ch, size_t P, const float *bias, int accumulate, float *dst);

/* Transpose an (nr x nc) row-major matrix src into the (nc x nr) matrix dst with row stride ldd >= nr:
 * dst[c*ldd + r] = src[r*nc + c] + bias[c] (bias may be NULL), or dst[...] += src[...] when accumulate != 0 (bias
 * ignored).  Cache-blocked, OpenMP parallel over column blocks of dst (no two threads write the same element). */
void mn_transpose(const float *src, size_t nr, size_t nc, const float *bias, int accumulate, float *dst, size_t ldd);

/* y[i, c, :] += bias[c] for nb samples of ch channels of P voxels. */
void mn_bias_add(float *y, int nb, int ch, size_t P, const float *bias);

/* db[c] += sum over samples and voxels of dy[i, c, :] (summed in double). */
void mn_bias_grad(const float *dy, int nb, int ch, size_t P, float *db);

/* Convolution weights tap-major: w2[t][k][c] = w[k][c][t] for w (K, C, kvol), one (K x C) row-major matrix per tap.
 * OpenMP parallel over k. */
void mn_weights_tap_major(const float *w, int K, int C, int kvol, float *w2);

#endif
