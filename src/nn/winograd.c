/* winograd.c: 3-D Winograd F(2x2x2, 3x3x3) for stride-1 3x3x3 convolutions, any padding, any dilation.
 *
 * Per dimension, F(2,3) computes two outputs from four inputs with the transforms (Lavin & Gray)
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
 *   A^T = [1 1 1 0; 0 1 -1 -1],                      y = A^T [(G g) .* (B^T d)].
 * In 3-D the transforms are applied along z, y and x in turn: a 4x4x4 input tile V gives 8 outputs through 64
 * element-wise products with U = (G x G x G) w, and the sum over input channels turns the 64 products of a block
 * of tiles into 64 GEMMs  M_xi (tiles x K) = V_xi (tiles x C) * U_xi (C x K),  xi = 0..63, through BLIS.  That is
 * 64 multiply-adds per 8 outputs instead of 216: 3.4x fewer than the dense GEMM path, paid for by the transforms
 * (each a few vectorised passes over a tile row) and the 8x larger transformed input.
 *
 * Dilation d: the outputs o = q + d*m (one residue q per sub-grid) read only the inputs of one residue, so a
 * dilated convolution is d^3 interleaved undilated ones.  We never copy the sub-grids out: per dimension the tiles
 * are listed group by group (group = output residue q, tiles of two outputs q + 2d*u and q + 2d*u + d), and a tile
 * with first output ob reads the inputs ob - p + d*j, j = 0..3.  Padding p is just an offset in that formula, so
 * any p works, with or without dilation.  The last tile of a group may carry one valid output (odd sub-grid
 * extent); its second output is computed and dropped.  MedicalNet's layer3 (dilation 2, 8^3) becomes 8 sub-grids of
 * 4^3 with 8 tiles each; layer4 (dilation 4, 8^3) 64 sub-grids of 2^3, one tile each, half of it padding.
 *
 * Layouts (one block of tiles: whole tile rows, about MN_WINO_BLOCK_FLOATS of V and M together):
 *   V [64][C][tiles], M [64][K][tiles] (tile index contiguous: the transforms write and read whole tile rows as
 *   vectors), U [64][K][C].  Every GEMM then has unit stride along its m (tile) dimension, the column-major case
 *   BLIS's skx micro-kernel prefers.
 * A tile row (sample n, z-tile, y-tile) is transformed from 16 input rows (4 z x 4 y positions) gathered into
 * zero-padded x-buffers laid out group by group: the inputs of tile t in group g sit at 2t + 2g + j, so the x-pass
 * over a group is a plain stride-2 loop the compiler vectorises.  Output and dy rows use the buffer index 2t + u.
 * Every transform works per channel on a chunk of tile rows (about WG_CHUNK tiles): the x-pass row by row into a
 * small contiguous buffer, the z- and y-passes as vector loops over all the chunk's tiles, which read or write
 * the 64 planes in runs of the chunk's length (transforming z and y on 18-float rows and x last, straight into the
 * planes, ran layer1's passes 5-24% slower).
 *
 * Backward is the adjoint of the same pipeline, on the same tiles:
 *   backward-data     dM = (A x A x A) dy tile;  dV_xi (tiles x C) = dM_xi * U_xi^T;  dx += B-adjoint scatter of dV
 *                     (tiles overlap by two inputs per dimension: the x-pass adds in two non-overlapping sweeps)
 *   backward-weights  dU_xi (C x K) += V_xi^T dM_xi over all blocks;  dw += (G^T x G^T x G^T) dU
 * (the adjoint of the forward map y = A^T[U .* B^T d] in each of its linear arguments), so backward-data needs no
 * flipped kernel and no second tiling of dx.  dU reuses U's buffer; when both backward passes run on this path the
 * dy tiles are transformed twice (cheap next to the GEMMs).
 *
 * Rejected: copying each sub-grid to a dense volume (an extra pass over x and dx per dilated layer, and more
 * workspace); F(4x4x4, 3x3x3) (6^3 = 216 products per 64 outputs, 3.4x -> 8x fewer multiplies but worse fp32
 * conditioning and tiles twice as wide as MedicalNet's 2^3 sub-grids of layer4).
 *
 * Scratch rows live on each thread's stack (at most about 90 KiB); extents are limited to MN_WINO_MAXT tiles per
 * dimension (about 510 voxels undilated) and dilation to MN_WINO_MAXG.  Larger layers take the GEMM path.  Which
 * pass takes this path is decided in conv_choose.c.
 */
#include "nn/winograd.h"
#include "nn/simd_clones.h"

#include <stddef.h>
#include <string.h>

#include "mednet/prof.h"
#include "mednet/threads.h"
#include "nn/gemm.h"

#define MN_WINO_MAXT 256                                  /* tiles per dimension */
#define MN_WINO_MAXG 8                                    /* dilation (groups per dimension) */
#define MN_WINO_MAXL (2 * MN_WINO_MAXT + 2 * MN_WINO_MAXG) /* x-buffer length */
/* V and M of one block together (floats).  With 2 or more threads 16 MiB, about L3 size on the machines we measured;
 * on 1 thread 4 MiB, which ran layer1's passes 10-15% faster there (the V and M planes stay nearer the core) but
 * 5-20% slower on 2 threads (more blocks, each forked over the threads, and a one-block backward that transforms dy
 * once becomes a several-block one that transforms it twice).  The workspace is sized for the larger block, so a
 * change of the thread count after set-up stays within it.  The weight gradient sums the blocks in order, so its
 * last bits depend on the block size and hence on the thread count (forward and backward-data do not). */
#define MN_WINO_BLOCK_FLOATS ((size_t)1 << 22)
#define MN_WINO_BLOCK_FLOATS_1T ((size_t)1 << 20)
static size_t block_floats(void) { return mn_threads_count() >= 2 ? MN_WINO_BLOCK_FLOATS : MN_WINO_BLOCK_FLOATS_1T; }

/* The 64 planes of V, M and U are WG_PAD floats (two cache lines) longer than their contents.  Unpadded plane sizes
 * are powers of two for most layers (C * tiles = 2^15 for layer1 and layer3), so the 64 streams a transform writes
 * fell into one L1 set and every store missed: the transforms ran 3-5x slower than with the padding. */
#define WG_PAD 32
static inline size_t pstride(size_t n) { return n + WG_PAD; }

/* Clone the transforms for AVX2 and AVX-512 where the compiler supports it (simd_clones.h). */
#define MN_WINO_CLONES MN_SIMD_CLONES

/* One dimension's tiling. */
typedef struct wdim {
    int in, out, p, d;
    int nt, ng;                      /* tiles, groups */
    int gq[MN_WINO_MAXG];            /* output residue of group g */
    int gt0[MN_WINO_MAXG + 1];       /* tiles gt0[g] .. gt0[g+1]-1 form group g */
    int goq[MN_WINO_MAXG];           /* outputs in group g: q, q+d, ... < out */
    int glo[MN_WINO_MAXG], ghi[MN_WINO_MAXG]; /* group-local input indices jj in [glo, ghi) are inside 0..in-1 */
    int ob[MN_WINO_MAXT], nv[MN_WINO_MAXT];   /* first output of tile t and its valid outputs (1 or 2) */
    int len;                         /* input buffer length: 2*nt + 2*ng */
} wdim;

typedef struct wplan {
    wdim dim[3];
    int N, C, K;
    int rows, tx; /* tile rows (n, z-tile, y-tile) and tiles per row */
    int rpb;      /* tile rows per block */
} wplan;

/* Tiling of one dimension; 0 when it exceeds the limits. */
static int wdim_init(wdim *w, int in, int out, int p, int d)
{
    if (d > MN_WINO_MAXG || out < 1) return 0;
    w->in = in;
    w->out = out;
    w->p = p;
    w->d = d;
    int t = 0, g = 0;
    for (int q = 0; q < d && q < out; q++, g++) {
        const int oq = (out - q + d - 1) / d, nq = (oq + 1) / 2;
        if (t + nq > MN_WINO_MAXT) return 0;
        w->gq[g] = q;
        w->gt0[g] = t;
        w->goq[g] = oq;
        for (int u = 0; u < nq; u++, t++) {
            w->ob[t] = q + 2 * d * u;
            w->nv[t] = 2 * u + 1 < oq ? 2 : 1;
        }
        /* Input jj of the group is at q - p + d*jj; the valid jj form one range. */
        const int n = 2 * nq + 2;
        int lo = 0, hi = n;
        while (lo < n && q - p + d * lo < 0) lo++;
        while (hi > lo && q - p + d * (hi - 1) >= in) hi--;
        w->glo[g] = lo;
        w->ghi[g] = hi;
    }
    w->ng = g;
    w->gt0[g] = t;
    w->nt = t;
    w->len = 2 * t + 2 * g;
    return 1;
}

static int plan_init(wplan *pl, const mn_conv3d *l, const mn_shape *in, const mn_shape *out, size_t block)
{
    const int ie[3] = {in->d, in->h, in->w}, oe[3] = {out->d, out->h, out->w};
    for (int i = 0; i < 3; i++)
        if (l->k[i] != 3 || l->s[i] != 1 || !wdim_init(&pl->dim[i], ie[i], oe[i], l->p[i], l->dil[i])) return 0;
    pl->N = in->n;
    pl->C = l->cin;
    pl->K = l->cout;
    pl->rows = in->n * pl->dim[0].nt * pl->dim[1].nt;
    pl->tx = pl->dim[2].nt;
    /* Tiles per block: the V+M budget, at least 128 tiles (GEMM m) and one row. */
    size_t tb = block / (64 * ((size_t)pl->C + pl->K));
    if (tb < 128) tb = 128;
    size_t rpb = (tb + pl->tx - 1) / pl->tx;
    pl->rpb = rpb > (size_t)pl->rows ? pl->rows : (int)rpb;
    return 1;
}

static size_t plan_ws(const wplan *pl)
{
    const size_t tb = (size_t)pl->rpb * pl->tx;
    return 64 * (pstride((size_t)pl->C * pl->K) + pstride((size_t)pl->C * tb) + pstride((size_t)pl->K * tb));
}

static mn_shape out_shape(const mn_conv3d *l, const mn_shape *in)
{
    mn_shape o = {in->n, l->cout, 0, 0, 0};
    const int ie[3] = {in->d, in->h, in->w};
    int oe[3];
    for (int i = 0; i < 3; i++) oe[i] = ie[i] + 2 * l->p[i] - l->dil[i] * (l->k[i] - 1);
    o.d = oe[0];
    o.h = oe[1];
    o.w = oe[2];
    return o;
}

int mn_wino_eligible(const mn_conv3d *l, const mn_shape *in)
{
    if (!l || !in || !mn_shape_valid(in) || in->c != l->cin) return 0;
    for (int i = 0; i < 3; i++)
        if (l->k[i] != 3 || l->s[i] != 1 || l->p[i] < 0 || l->dil[i] < 1) return 0;
    const mn_shape out = out_shape(l, in);
    if (out.d < 1 || out.h < 1 || out.w < 1) return 0;
    wplan pl;
    return plan_init(&pl, l, in, &out, MN_WINO_BLOCK_FLOATS);
}

size_t mn_wino_workspace_floats(const mn_conv3d *l, const mn_shape *in)
{
    if (!mn_wino_eligible(l, in)) return 0;
    const mn_shape out = out_shape(l, in);
    wplan pl;
    plan_init(&pl, l, in, &out, MN_WINO_BLOCK_FLOATS); /* the larger block: see MN_WINO_BLOCK_FLOATS */
    return plan_ws(&pl);
}

/* ---- transforms ------------------------------------------------------------------------------------------------ */

/* Row r -> sample, z-tile, y-tile. */
static inline void row_decode(const wplan *pl, int r, int *n, int *tz, int *ty)
{
    const int nz = pl->dim[0].nt, ny = pl->dim[1].nt;
    *n = r / (nz * ny);
    r -= *n * nz * ny;
    *tz = r / ny;
    *ty = r - *tz * ny;
}

/* Gather one input row into the group-ordered, zero-padded x-buffer (length dx->len). row == NULL: zeros. */
static inline void gather_in_row(const wdim *dx, const float *row, float *restrict b)
{
    if (!row) {
        memset(b, 0, (size_t)dx->len * sizeof *b);
        return;
    }
    for (int g = 0; g < dx->ng; g++) {
        float *s = b + 2 * dx->gt0[g] + 2 * g;
        const int n = 2 * (dx->gt0[g + 1] - dx->gt0[g]) + 2, lo = dx->glo[g], hi = dx->ghi[g], d = dx->d;
        const float *src = row + dx->gq[g] - dx->p;
        for (int j = 0; j < lo; j++) s[j] = 0.0f;
        if (d == 1)
            memcpy(s + lo, src + lo, (size_t)(hi - lo) * sizeof *s);
        else
            for (int j = lo; j < hi; j++) s[j] = src[(ptrdiff_t)d * j];
        for (int j = hi > lo ? hi : lo; j < n; j++) s[j] = 0.0f;
    }
}

/* Add the x-buffer back into an input row (adjoint of gather_in_row). */
static inline void scatter_in_row(const wdim *dx, const float *restrict b, float *row)
{
    for (int g = 0; g < dx->ng; g++) {
        const float *s = b + 2 * dx->gt0[g] + 2 * g;
        const int lo = dx->glo[g], hi = dx->ghi[g], d = dx->d;
        float *dst = row + dx->gq[g] - dx->p;
        for (int j = lo; j < hi; j++) dst[(ptrdiff_t)d * j] += s[j];
    }
}

/* Gather an output-sized row (dy) into the buffer indexed 2t + u; invalid outputs are 0. row == NULL: zeros. */
static inline void gather_out_row(const wdim *dx, const float *row, float *restrict b)
{
    for (int g = 0; g < dx->ng; g++) {
        float *s = b + 2 * dx->gt0[g];
        const int n = 2 * (dx->gt0[g + 1] - dx->gt0[g]), oq = row ? dx->goq[g] : 0, d = dx->d;
        const float *src = row ? row + dx->gq[g] : NULL;
        for (int j = 0; j < oq; j++) s[j] = src[(ptrdiff_t)d * j];
        for (int j = oq; j < n; j++) s[j] = 0.0f;
    }
}

/* Write the valid entries of a 2t + u buffer into an output row, plus bias. */
static inline void scatter_out_row(const wdim *dx, const float *restrict b, float bias, float *row)
{
    for (int g = 0; g < dx->ng; g++) {
        const float *s = b + 2 * dx->gt0[g];
        const int oq = dx->goq[g], d = dx->d;
        float *dst = row + dx->gq[g];
        for (int j = 0; j < oq; j++) dst[(ptrdiff_t)d * j] = s[j] + bias;
    }
}

/* Tiles per chunk of the chunked transforms: whole tile rows, at least one, about WG_CHUNK tiles. */
#define WG_CHUNK 128
static inline int chunk_rows(int tx) { return tx >= WG_CHUNK ? 1 : WG_CHUNK / tx; }
/* Row stride of the chunk buffers: an odd number of cache lines, so that their 64 rows fall into different L1 sets
 * (a stride of 256 floats put them into 4 sets and made the transform 1.4x slower than the old one). */
#define WG_XS (MN_WINO_MAXT + 16)

/* V [64][C][tbb] of block rows r0 .. r0+nr-1 from x (N, C, in).  Per channel, a chunk of tile rows at a time: B^T
 * along x first, row by row, into X [16 (jz, jy)][4 (xx)][chunk tiles] (68 KiB on the stack), then B^T along z into
 * T and along y into V, as vector loops over the chunk's tiles that write 64 runs of V. */
MN_WINO_CLONES
static void wino_in(const wplan *pl, const float *x, int r0, int nr, float *V)
{
    const wdim *dz = &pl->dim[0], *dy = &pl->dim[1], *dx = &pl->dim[2];
    const int C = pl->C, tx = pl->tx, rc = chunk_rows(tx);
    const size_t tbb = (size_t)nr * tx, plane = (size_t)dy->in * dx->in, pin = plane * dz->in;
    const size_t xi = pstride((size_t)C * tbb);
#pragma omp parallel for schedule(static) if ((size_t)C * tbb > 4096)
    for (int c = 0; c < C; c++) {
        float rb[MN_WINO_MAXL], X[16][4][WG_XS], T[16][WG_XS];
        for (int q0 = 0; q0 < nr; q0 += rc) {
            const int nq = nr - q0 < rc ? nr - q0 : rc, nt = nq * tx;
            for (int rq = 0; rq < nq; rq++) {
                int n, tz, ty;
                row_decode(pl, r0 + q0 + rq, &n, &tz, &ty);
                const float *xc = x + ((size_t)n * C + c) * pin;
                for (int jz = 0; jz < 4; jz++) {
                    const int iz = dz->ob[tz] - dz->p + dz->d * jz;
                    for (int jy = 0; jy < 4; jy++) {
                        const int iy = dy->ob[ty] - dy->p + dy->d * jy;
                        const int ok = iz >= 0 && iz < dz->in && iy >= 0 && iy < dy->in;
                        float *restrict w0 = X[jz * 4 + jy][0] + rq * tx, *restrict w1 = X[jz * 4 + jy][1] + rq * tx,
                                        *restrict w2 = X[jz * 4 + jy][2] + rq * tx,
                                        *restrict w3 = X[jz * 4 + jy][3] + rq * tx;
                        if (!ok) {
                            for (int t = 0; t < tx; t++) w0[t] = w1[t] = w2[t] = w3[t] = 0.0f;
                            continue;
                        }
                        gather_in_row(dx, xc + (size_t)iz * plane + (size_t)iy * dx->in, rb);
                        /* B^T along x, tile by tile. */
                        for (int g = 0; g < dx->ng; g++) {
                            const float *sg = rb + 2 * g;
                            for (int t = dx->gt0[g]; t < dx->gt0[g + 1]; t++) {
                                const float a = sg[2 * t], b = sg[2 * t + 1], e = sg[2 * t + 2], f = sg[2 * t + 3];
                                w0[t] = a - e;
                                w1[t] = b + e;
                                w2[t] = e - b;
                                w3[t] = b - f;
                            }
                        }
                    }
                }
            }
            /* B^T along z into T, then along y into V row (xz*4 + xy)*4 + xx, per x-component. */
            float *vc = V + (size_t)c * tbb + (size_t)q0 * tx;
            for (int xx = 0; xx < 4; xx++) {
                for (int jy = 0; jy < 4; jy++) {
                    const float *a0 = X[jy][xx], *a1 = X[4 + jy][xx], *a2 = X[8 + jy][xx], *a3 = X[12 + jy][xx];
                    float *restrict o0 = T[jy], *restrict o1 = T[4 + jy], *restrict o2 = T[8 + jy],
                                    *restrict o3 = T[12 + jy];
                    for (int t = 0; t < nt; t++) {
                        o0[t] = a0[t] - a2[t];
                        o1[t] = a1[t] + a2[t];
                        o2[t] = a2[t] - a1[t];
                        o3[t] = a1[t] - a3[t];
                    }
                }
                for (int z = 0; z < 4; z++) {
                    const float *a0 = T[z * 4], *a1 = T[z * 4 + 1], *a2 = T[z * 4 + 2], *a3 = T[z * 4 + 3];
                    float *restrict o0 = vc + (size_t)((z * 4) * 4 + xx) * xi,
                                    *restrict o1 = vc + (size_t)((z * 4 + 1) * 4 + xx) * xi,
                                    *restrict o2 = vc + (size_t)((z * 4 + 2) * 4 + xx) * xi,
                                    *restrict o3 = vc + (size_t)((z * 4 + 3) * 4 + xx) * xi;
                    for (int t = 0; t < nt; t++) {
                        o0[t] = a0[t] - a2[t];
                        o1[t] = a1[t] + a2[t];
                        o2[t] = a2[t] - a1[t];
                        o3[t] = a1[t] - a3[t];
                    }
                }
            }
        }
    }
}

/* dM [64][K][tbb] = (A x A x A) of the dy tiles of block rows r0 .. r0+nr-1.  As wino_in: per channel and chunk
 * of tile rows, A along x row by row into X [4 (uz, uy)][4 (xx)][chunk tiles], then A along z and y as vector loops
 * over the chunk's tiles, writing 64 runs of dM. */
MN_WINO_CLONES
static void wino_dyt(const wplan *pl, const float *dyv, int r0, int nr, float *D)
{
    const wdim *dz = &pl->dim[0], *dy = &pl->dim[1], *dx = &pl->dim[2];
    const int K = pl->K, tx = pl->tx, rc = chunk_rows(tx);
    const size_t tbb = (size_t)nr * tx, plane = (size_t)dy->out * dx->out, pout = plane * dz->out;
    const size_t xi = pstride((size_t)K * tbb);
#pragma omp parallel for schedule(static) if ((size_t)K * tbb > 4096)
    for (int k = 0; k < K; k++) {
        float rb[2 * MN_WINO_MAXT], X[4][4][WG_XS], T[4][2][WG_XS];
        for (int q0 = 0; q0 < nr; q0 += rc) {
            const int nq = nr - q0 < rc ? nr - q0 : rc, nt = nq * tx;
            for (int rq = 0; rq < nq; rq++) {
                int n, tz, ty;
                row_decode(pl, r0 + q0 + rq, &n, &tz, &ty);
                const float *yk = dyv + ((size_t)n * K + k) * pout;
                for (int u = 0; u < 4; u++) {
                    const int uz = u / 2, uy = u % 2, ok = uz < dz->nv[tz] && uy < dy->nv[ty];
                    float *restrict w0 = X[u][0] + rq * tx, *restrict w1 = X[u][1] + rq * tx,
                                    *restrict w2 = X[u][2] + rq * tx, *restrict w3 = X[u][3] + rq * tx;
                    if (!ok) {
                        for (int t = 0; t < tx; t++) w0[t] = w1[t] = w2[t] = w3[t] = 0.0f;
                        continue;
                    }
                    const size_t oz = (size_t)dz->ob[tz] + (size_t)dz->d * uz, oy = (size_t)dy->ob[ty] + (size_t)dy->d * uy;
                    gather_out_row(dx, yk + oz * plane + oy * dx->out, rb);
                    /* A along x, tile by tile. */
                    for (int t = 0; t < tx; t++) {
                        const float a = rb[2 * t], b = rb[2 * t + 1];
                        w0[t] = a;
                        w1[t] = a + b;
                        w2[t] = a - b;
                        w3[t] = -b;
                    }
                }
            }
            float *dk = D + (size_t)k * tbb + (size_t)q0 * tx;
            for (int xx = 0; xx < 4; xx++) {
                /* A along z: T[xz][uy]. */
                for (int uy = 0; uy < 2; uy++) {
                    const float *a0 = X[uy][xx], *a1 = X[2 + uy][xx];
                    float *restrict o0 = T[0][uy], *restrict o1 = T[1][uy], *restrict o2 = T[2][uy],
                                    *restrict o3 = T[3][uy];
                    for (int t = 0; t < nt; t++) {
                        o0[t] = a0[t];
                        o1[t] = a0[t] + a1[t];
                        o2[t] = a0[t] - a1[t];
                        o3[t] = -a1[t];
                    }
                }
                /* A along y: dM row (xz*4 + xy)*4 + xx. */
                for (int xz = 0; xz < 4; xz++) {
                    const float *a0 = T[xz][0], *a1 = T[xz][1];
                    float *restrict o0 = dk + (size_t)((xz * 4) * 4 + xx) * xi,
                                    *restrict o1 = dk + (size_t)((xz * 4 + 1) * 4 + xx) * xi,
                                    *restrict o2 = dk + (size_t)((xz * 4 + 2) * 4 + xx) * xi,
                                    *restrict o3 = dk + (size_t)((xz * 4 + 3) * 4 + xx) * xi;
                    for (int t = 0; t < nt; t++) {
                        o0[t] = a0[t];
                        o1[t] = a0[t] + a1[t];
                        o2[t] = a0[t] - a1[t];
                        o3[t] = -a1[t];
                    }
                }
            }
        }
    }
}

/* y rows of block r0 .. r0+nr-1 from M [64][K][tbb]: A^T in three passes, plus bias.  The mirror of wino_in: per
 * channel and chunk of tile rows, A^T along z and then y as vector loops over the chunk's tiles (reading 64 runs of
 * M), into Z [4 (uz, uy)][4 (xx)][chunk tiles], then A^T along x row by row into the output rows. */
MN_WINO_CLONES
static void wino_out(const wplan *pl, const float *M, int r0, int nr, const float *bias, float *y)
{
    const wdim *dz = &pl->dim[0], *dy = &pl->dim[1], *dx = &pl->dim[2];
    const int K = pl->K, tx = pl->tx, rc = chunk_rows(tx);
    const size_t tbb = (size_t)nr * tx, plane = (size_t)dy->out * dx->out, pout = plane * dz->out;
    const size_t xi = pstride((size_t)K * tbb);
#pragma omp parallel for schedule(static) if ((size_t)K * tbb > 4096)
    for (int k = 0; k < K; k++) {
        float T[2][4][WG_XS], Z[4][4][WG_XS], ob[2 * MN_WINO_MAXT];
        const float bk = bias ? bias[k] : 0.0f;
        for (int q0 = 0; q0 < nr; q0 += rc) {
            const int nq = nr - q0 < rc ? nr - q0 : rc, nt = nq * tx;
            const float *mk = M + (size_t)k * tbb + (size_t)q0 * tx;
            for (int xx = 0; xx < 4; xx++) {
                /* A^T along z: T[uz][xy]. */
                for (int xy = 0; xy < 4; xy++) {
                    const float *a0 = mk + (size_t)((0 * 4 + xy) * 4 + xx) * xi,
                                *a1 = mk + (size_t)((1 * 4 + xy) * 4 + xx) * xi,
                                *a2 = mk + (size_t)((2 * 4 + xy) * 4 + xx) * xi,
                                *a3 = mk + (size_t)((3 * 4 + xy) * 4 + xx) * xi;
                    float *restrict o0 = T[0][xy], *restrict o1 = T[1][xy];
                    for (int t = 0; t < nt; t++) {
                        o0[t] = a0[t] + a1[t] + a2[t];
                        o1[t] = a1[t] - a2[t] - a3[t];
                    }
                }
                /* A^T along y: Z[uz*2 + uy][xx]. */
                for (int uz = 0; uz < 2; uz++) {
                    const float *a0 = T[uz][0], *a1 = T[uz][1], *a2 = T[uz][2], *a3 = T[uz][3];
                    float *restrict o0 = Z[uz * 2][xx], *restrict o1 = Z[uz * 2 + 1][xx];
                    for (int t = 0; t < nt; t++) {
                        o0[t] = a0[t] + a1[t] + a2[t];
                        o1[t] = a1[t] - a2[t] - a3[t];
                    }
                }
            }
            /* A^T along x, row by row, into the output rows. */
            for (int rq = 0; rq < nq; rq++) {
                int n, tz, ty;
                row_decode(pl, r0 + q0 + rq, &n, &tz, &ty);
                float *yk = y + ((size_t)n * K + k) * pout;
                for (int uz = 0; uz < dz->nv[tz]; uz++)
                    for (int uy = 0; uy < dy->nv[ty]; uy++) {
                        const float *m0 = Z[uz * 2 + uy][0] + rq * tx, *m1 = Z[uz * 2 + uy][1] + rq * tx,
                                    *m2 = Z[uz * 2 + uy][2] + rq * tx, *m3 = Z[uz * 2 + uy][3] + rq * tx;
                        for (int t = 0; t < tx; t++) {
                            ob[2 * t] = m0[t] + m1[t] + m2[t];
                            ob[2 * t + 1] = m1[t] - m2[t] - m3[t];
                        }
                        const size_t oz = (size_t)dz->ob[tz] + (size_t)dz->d * uz,
                                     oy = (size_t)dy->ob[ty] + (size_t)dy->d * uy;
                        scatter_out_row(dx, ob, bk, yk + oz * plane + oy * dx->out);
                    }
            }
        }
    }
}

/* dx += B-adjoint of dV [64][C][tbb] for block rows r0 .. r0+nr-1.  The mirror of wino_in: per channel and chunk
 * of tile rows, B along z and y as vector loops over the chunk's tiles (reading 64 runs of dV) into
 * X [16 (jz, jy)][4 (xx)][chunk tiles], then B along x row by row into the x-buffers, added to dx. */
MN_WINO_CLONES
static void wino_dx(const wplan *pl, const float *dV, int r0, int nr, float *dxv)
{
    const wdim *dz = &pl->dim[0], *dy = &pl->dim[1], *dx = &pl->dim[2];
    const int C = pl->C, tx = pl->tx, rc = chunk_rows(tx);
    const size_t tbb = (size_t)nr * tx, plane = (size_t)dy->in * dx->in, pin = plane * dz->in;
    const size_t xi = pstride((size_t)C * tbb);
#pragma omp parallel for schedule(static) if ((size_t)C * tbb > 4096)
    for (int c = 0; c < C; c++) {
        float xb[MN_WINO_MAXL], X[16][4][WG_XS], T[16][WG_XS];
        for (int q0 = 0; q0 < nr; q0 += rc) {
            const int nq = nr - q0 < rc ? nr - q0 : rc, nt = nq * tx;
            const float *vc = dV + (size_t)c * tbb + (size_t)q0 * tx;
            for (int xx = 0; xx < 4; xx++) {
                /* B along y: T[xz][jy] from dV rows (xz*4 + xy)*4 + xx. */
                for (int z = 0; z < 4; z++) {
                    const float *a0 = vc + (size_t)((z * 4) * 4 + xx) * xi,
                                *a1 = vc + (size_t)((z * 4 + 1) * 4 + xx) * xi,
                                *a2 = vc + (size_t)((z * 4 + 2) * 4 + xx) * xi,
                                *a3 = vc + (size_t)((z * 4 + 3) * 4 + xx) * xi;
                    float *restrict o0 = T[z * 4], *restrict o1 = T[z * 4 + 1], *restrict o2 = T[z * 4 + 2],
                                    *restrict o3 = T[z * 4 + 3];
                    for (int t = 0; t < nt; t++) {
                        o0[t] = a0[t];
                        o1[t] = a1[t] - a2[t] + a3[t];
                        o2[t] = a1[t] + a2[t] - a0[t];
                        o3[t] = -a3[t];
                    }
                }
                /* B along z: X[jz*4 + jy][xx]. */
                for (int jy = 0; jy < 4; jy++) {
                    const float *a0 = T[jy], *a1 = T[4 + jy], *a2 = T[8 + jy], *a3 = T[12 + jy];
                    float *restrict o0 = X[jy][xx], *restrict o1 = X[4 + jy][xx], *restrict o2 = X[8 + jy][xx],
                                    *restrict o3 = X[12 + jy][xx];
                    for (int t = 0; t < nt; t++) {
                        o0[t] = a0[t];
                        o1[t] = a1[t] - a2[t] + a3[t];
                        o2[t] = a1[t] + a2[t] - a0[t];
                        o3[t] = -a3[t];
                    }
                }
            }
            for (int rq = 0; rq < nq; rq++) {
                int n, tz, ty;
                row_decode(pl, r0 + q0 + rq, &n, &tz, &ty);
                float *xc = dxv + ((size_t)n * C + c) * pin;
                for (int jz = 0; jz < 4; jz++) {
                    const int iz = dz->ob[tz] - dz->p + dz->d * jz;
                    if (iz < 0 || iz >= dz->in) continue;
                    for (int jy = 0; jy < 4; jy++) {
                        const int iy = dy->ob[ty] - dy->p + dy->d * jy;
                        if (iy < 0 || iy >= dy->in) continue;
                        const float *v0 = X[jz * 4 + jy][0] + rq * tx, *v1 = X[jz * 4 + jy][1] + rq * tx,
                                    *v2 = X[jz * 4 + jy][2] + rq * tx, *v3 = X[jz * 4 + jy][3] + rq * tx;
                        /* B along x into the x-buffer: tiles overlap by two inputs, so two sweeps that do not. */
                        for (int g = 0; g < dx->ng; g++) {
                            float *restrict sg = xb + 2 * g;
                            const int t0 = dx->gt0[g], t1 = dx->gt0[g + 1];
                            for (int t = t0; t < t1; t++) {
                                sg[2 * t] = v0[t];
                                sg[2 * t + 1] = v1[t] - v2[t] + v3[t];
                            }
                            sg[2 * t1] = 0.0f;
                            sg[2 * t1 + 1] = 0.0f;
                            for (int t = t0; t < t1; t++) {
                                sg[2 * t + 2] += v1[t] + v2[t] - v0[t];
                                sg[2 * t + 3] -= v3[t];
                            }
                        }
                        scatter_in_row(dx, xb, xc + (size_t)iz * plane + (size_t)iy * dx->in);
                    }
                }
            }
        }
    }
}

/* Weight transforms work on chunks of WG_CB input channels at a time, channel index innermost, so that every loop
 * is a vector loop and U/dU are read and written as 64 contiguous runs per chunk (one (k, c) pair at a time wrote
 * 64 floats K*C apart each: 30% of a layer4 pass went to cache and TLB misses). */
#define WG_CB 16

/* U [64][K][C] = (G x G x G) w for w (K, C, 3, 3, 3);  G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]. */
MN_WINO_CLONES
static void wino_wt(const float *w, int K, int C, float *U)
{
    const size_t xi = pstride((size_t)K * C);
#pragma omp parallel for schedule(static) if (xi > 4096)
    for (int k = 0; k < K; k++)
        for (int c0 = 0; c0 < C; c0 += WG_CB) {
            const int nc = C - c0 < WG_CB ? C - c0 : WG_CB;
            float g[27][WG_CB], a[4][9][WG_CB], b[4][4][3][WG_CB], u[64][WG_CB];
            for (int cc = 0; cc < nc; cc++)
                for (int i = 0; i < 27; i++) g[i][cc] = w[((size_t)k * C + c0 + cc) * 27 + i];
            for (int yx = 0; yx < 9; yx++)
                for (int cc = 0; cc < nc; cc++) {
                    const float g0 = g[yx][cc], g1 = g[9 + yx][cc], g2 = g[18 + yx][cc];
                    a[0][yx][cc] = g0;
                    a[1][yx][cc] = 0.5f * (g0 + g1 + g2);
                    a[2][yx][cc] = 0.5f * (g0 - g1 + g2);
                    a[3][yx][cc] = g2;
                }
            for (int z = 0; z < 4; z++)
                for (int x = 0; x < 3; x++)
                    for (int cc = 0; cc < nc; cc++) {
                        const float g0 = a[z][x][cc], g1 = a[z][3 + x][cc], g2 = a[z][6 + x][cc];
                        b[z][0][x][cc] = g0;
                        b[z][1][x][cc] = 0.5f * (g0 + g1 + g2);
                        b[z][2][x][cc] = 0.5f * (g0 - g1 + g2);
                        b[z][3][x][cc] = g2;
                    }
            for (int zy = 0; zy < 16; zy++)
                for (int cc = 0; cc < nc; cc++) {
                    const float g0 = b[zy / 4][zy % 4][0][cc], g1 = b[zy / 4][zy % 4][1][cc], g2 = b[zy / 4][zy % 4][2][cc];
                    u[zy * 4][cc] = g0;
                    u[zy * 4 + 1][cc] = 0.5f * (g0 + g1 + g2);
                    u[zy * 4 + 2][cc] = 0.5f * (g0 - g1 + g2);
                    u[zy * 4 + 3][cc] = g2;
                }
            for (int i = 0; i < 64; i++) memcpy(U + (size_t)i * xi + (size_t)k * C + c0, u[i], (size_t)nc * sizeof(float));
        }
}

/* dw (K, C, 3, 3, 3) += (G^T x G^T x G^T) dU, dU [64][K][C] (the adjoint of wino_wt). */
MN_WINO_CLONES
static void wino_dw(const float *dU, int K, int C, float *dw)
{
    const size_t xi = pstride((size_t)K * C);
#pragma omp parallel for schedule(static) if (xi > 4096)
    for (int k = 0; k < K; k++)
        for (int c0 = 0; c0 < C; c0 += WG_CB) {
            const int nc = C - c0 < WG_CB ? C - c0 : WG_CB;
            float u[64][WG_CB], b[4][4][3][WG_CB], a[4][9][WG_CB];
            for (int i = 0; i < 64; i++) memcpy(u[i], dU + (size_t)i * xi + (size_t)k * C + c0, (size_t)nc * sizeof(float));
            /* G^T: g0 = u0 + (u1+u2)/2, g1 = (u1-u2)/2, g2 = u3 + (u1+u2)/2; along x, y, z. */
            for (int zy = 0; zy < 16; zy++)
                for (int cc = 0; cc < nc; cc++) {
                    const float u0 = u[zy * 4][cc], u1 = u[zy * 4 + 1][cc], u2 = u[zy * 4 + 2][cc], u3 = u[zy * 4 + 3][cc];
                    const float h = 0.5f * (u1 + u2);
                    b[zy / 4][zy % 4][0][cc] = u0 + h;
                    b[zy / 4][zy % 4][1][cc] = 0.5f * (u1 - u2);
                    b[zy / 4][zy % 4][2][cc] = u3 + h;
                }
            for (int z = 0; z < 4; z++)
                for (int x = 0; x < 3; x++)
                    for (int cc = 0; cc < nc; cc++) {
                        const float u0 = b[z][0][x][cc], u1 = b[z][1][x][cc], u2 = b[z][2][x][cc], u3 = b[z][3][x][cc];
                        const float h = 0.5f * (u1 + u2);
                        a[z][x][cc] = u0 + h;
                        a[z][3 + x][cc] = 0.5f * (u1 - u2);
                        a[z][6 + x][cc] = u3 + h;
                    }
            for (int yx = 0; yx < 9; yx++)
                for (int cc = 0; cc < nc; cc++) {
                    const float u0 = a[0][yx][cc], u1 = a[1][yx][cc], u2 = a[2][yx][cc], u3 = a[3][yx][cc];
                    const float h = 0.5f * (u1 + u2);
                    float *o = dw + ((size_t)k * C + c0 + cc) * 27;
                    o[yx] += u0 + h;
                    o[9 + yx] += 0.5f * (u1 - u2);
                    o[18 + yx] += u3 + h;
                }
        }
}

/* ---- passes --------------------------------------------------------------------------------------------------- */

static mn_err plan_get(wplan *pl, const mn_conv3d *l, const mn_shape *in, const mn_shape *out)
{
    MN_CHECK(plan_init(pl, l, in, out, block_floats()), MN_ERR_ARG,
             "conv3d %d->%d: Winograd path called for a layer it cannot run (kernel %dx%dx%d, stride %d/%d/%d, "
             "output %dx%dx%d)",
             l->cin, l->cout, l->k[0], l->k[1], l->k[2], l->s[0], l->s[1], l->s[2], out->d, out->h, out->w);
    return MN_OK;
}

/* The 64 products of one block: C_xi = A_xi B_xi + beta C_xi, operand xi at its base + xi * its step (floats). */
static mn_err gemm64(int m, int n, int k, const float *a, ptrdiff_t rsa, ptrdiff_t csa, size_t sa, const float *b,
                     ptrdiff_t rsb, ptrdiff_t csb, size_t sb, float beta, float *c, ptrdiff_t rsc, ptrdiff_t csc,
                     size_t sc)
{
    return mn_gemm_batch(64, m, n, k, a, rsa, csa, sa, b, rsb, csb, sb, beta, c, rsc, csc, sc);
}

/* Forward (bwd = 0: src = x, dst = y overwritten) or backward-data (bwd = 1: src = dy, dst = dx accumulated): the
 * same pipeline with the transforms and the weight operand swapped for their adjoints. */
static mn_err wino_data(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, int bwd, const float *src,
                        float *dst, float *ws)
{
    wplan pl;
    MN_CALL(plan_get(&pl, l, in, out));
    const int C = pl.C, K = pl.K, ci = bwd ? K : C, co = bwd ? C : K;
    float *U = ws, *S = U + 64 * pstride((size_t)C * K), *D = S + 64 * pstride((size_t)ci * pl.rpb * pl.tx);
    wino_wt(l->w, K, C, U);
    for (int r0 = 0; r0 < pl.rows; r0 += pl.rpb) {
        const int nr = pl.rows - r0 < pl.rpb ? pl.rows - r0 : pl.rpb;
        const int tbb = nr * pl.tx;
        if (bwd)
            wino_dyt(&pl, src, r0, nr, S);
        else
            wino_in(&pl, src, r0, nr, S);
        /* Forward M_xi (tbb x K) = V_xi (tbb x C) U_xi (C x K); backward dV_xi (tbb x C) = dM_xi (tbb x K) U_xi^T. */
        MN_CALL(gemm64(tbb, co, ci, S, 1, tbb, pstride((size_t)ci * tbb), U, bwd ? C : 1, bwd ? 1 : C,
                       pstride((size_t)K * C), 0.0f, D, 1, tbb, pstride((size_t)co * tbb)));
        if (bwd)
            wino_dx(&pl, D, r0, nr, dst);
        else
            wino_out(&pl, D, r0, nr, l->b, dst);
    }
    return MN_OK;
}

mn_err mn_wino_forward(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x, float *y,
                       float *ws)
{
    return wino_data(l, in, out, 0, x, y, ws);
}

mn_err mn_wino_backward_data(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *dy, float *dx,
                             float *ws)
{
    return wino_data(l, in, out, 1, dy, dx, ws);
}

/* dU (64 C K floats at ws) = sum over blocks of V_xi^T dM_xi, then dw += G^T-transform.  With dm_ready, the single
 * block's dM is already at its place (after dV, see mn_wino_backward). */
static mn_err wino_weights(const wplan *pl, const float *x, const float *dy, float *dw, float *ws, int dm_ready)
{
    const int C = pl->C, K = pl->K;
    /* dM right after dU, where the backward-data pass left it. */
    float *dU = ws, *dM = dU + 64 * pstride((size_t)C * K), *V = dM + 64 * pstride((size_t)K * pl->rpb * pl->tx);
    for (int r0 = 0; r0 < pl->rows; r0 += pl->rpb) {
        const int nr = pl->rows - r0 < pl->rpb ? pl->rows - r0 : pl->rpb;
        const int tbb = nr * pl->tx;
        wino_in(pl, x, r0, nr, V);
        if (!dm_ready) wino_dyt(pl, dy, r0, nr, dM);
        /* dU_xi (C x K) (+)= V_xi^T (C x tbb) * dM_xi (tbb x K). */
        MN_CALL(gemm64(C, K, tbb, V, tbb, 1, pstride((size_t)C * tbb), dM, 1, tbb, pstride((size_t)K * tbb),
                       r0 ? 1.0f : 0.0f, dU, 1, C, pstride((size_t)K * C)));
    }
    wino_dw(dU, K, C, dw);
    return MN_OK;
}

mn_err mn_wino_backward_weights(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x,
                                const float *dy, float *ws)
{
    wplan pl;
    MN_CALL(plan_get(&pl, l, in, out));
    return wino_weights(&pl, x, dy, l->dw, ws, 0);
}

mn_err mn_wino_backward(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x, const float *dy,
                        float *dx, float *ws)
{
    wplan pl;
    MN_CALL(plan_get(&pl, l, in, out));
    mn_prof_refine(MN_PROF_CONV_BWD_DATA);
    MN_CALL(wino_data(l, in, out, 1, dy, dx, ws));
    mn_prof_refine(MN_PROF_CONV_BWD_WEIGHTS);
    /* One block: dM of the data pass is still in place (U, dV, dM), and U is no longer needed (dU overwrites it). */
    return wino_weights(&pl, x, dy, l->dw, ws, pl.rows <= pl.rpb);
}
