/* winograd4.c: 3-D Winograd F(4x4x4, 3x3x3) for stride-1 3x3x3 convolutions, any padding, any dilation.
 *
 * Per dimension, F(4,3) computes four outputs from six inputs, y = A^T [(G g) .* (B^T d)], with the transforms of
 * the interpolation points 0, 1, -1, 2, -1/2 and infinity (derived by Cook-Toom; the matrices are below).  In 3-D
 * a 6x6x6 input tile gives 64 outputs through 216 element-wise products, and the sum over input channels turns
 * the 216 products of a block of tiles into 216 GEMMs  M_xi (tiles x K) = V_xi (tiles x C) * U_xi (C x K).  That is
 * 216 multiply-adds per 64 outputs where the direct kernels do 27 per output: 8x fewer on full tiles.
 *
 * Where it pays (the rule, conv3d.h): MedicalNet's layer1 (16^3 and 28^3), layer2 at 14^3 and the dilation-2 stage
 * at 14^3, 10-31% faster than the direct kernels; not the dilation-4 stage.  A dilation-d convolution is d^3
 * interleaved undilated ones on its sub-grids; per dimension the tiles are listed residue by residue (outputs
 * q + d*m), four sub-grid outputs a tile, and a tile with first output ob reads the inputs
 * ob - p + d*j, j = 0..5, zero outside the volume.  14 outputs at dilation 4 are sub-grids of 4, 4, 3 and 3: one
 * tile each, 64 tiles a sample, 216 products per 43 outputs on average, where the direct kernels execute the
 * in-volume taps only (about 14 per output).  At dilation 2 the sub-grids are 7 wide: 64 tiles a sample again.
 *
 * Accuracy: the transforms have entries up to 8 (A^T) and 16/15 (G), so the rounding error grows: on a float32
 * tile with 256 input channels the largest error over the largest output is about 1e-5, against 1e-6 for
 * F(2x2x2, 3x3x3) and 1.5e-7 for the direct sum (points 0, +-1, +-2 gave 3e-5; 0, +-1, +-1/2 gave 2.6e-5).
 * That is why the rule takes this path only on the large layers where it is measured faster, never on the small
 * volumes of the model parity tests.
 *
 * Blocking: the transformed weights are 8x the weights (216 MiB for 512 x 512 channels), so they are built per
 * block of output channels (U [kb][216][C], channel-major: see w4_wt) and used at once.  A block of tiles keeps its
 * transformed input V [216][C][tb]; M [216][kb][tb] is the GEMM output of one channel block, and dU [216][kb][C] that
 * of backward-weights (V, M and dU channel-major, GEMM operands with a column stride of a whole block, ran the
 * GEMMs up to 60% slower).  tb and kb are the largest (kb halving first, to 128, then tb to 64, then kb) whose V,
 * M and U fit MN_WINO4_BUDGET floats, the same for any thread count.
 *   forward          per tile block: V once; per channel block: U, 216 GEMMs, A^T into y (plus bias)
 *   backward-data    per tile block: per channel block: dM = (A x A x A) dy, U, dV += dM_xi U_xi^T (blocks in order);
 *                    then dx += the adjoint of B^T, scattered into the overlapping tiles one channel per thread
 *   backward-weights per channel block: dU_xi = sum over tile blocks (in order) of V_xi^T dM_xi; dw += G^T dU
 * Every sum runs in a fixed order, so no result depends on the thread count.  The 216 products of a GEMM batch
 * are dealt over the OpenMP threads (mn_gemm_batch).  The transforms work on 16 tiles (or, for the weights, 16
 * input channels) at a time, one per vector lane, unrolled with the zero coefficients dropped.
 */
#include "nn/winograd4.h"
#include "nn/simd_clones.h"

#include <stddef.h>
#include <string.h>

#include "nn/gemm.h"

#define MN_WINO4_MAXT 512 /* tiles per dimension */
#define W4_XI 216         /* products per tile */
#define W4_PAD 32         /* plane padding (floats): power-of-two planes put the transform streams in one L1 set */
/* V, M and U of one block together (floats): 64 MiB, within the workspace the GEMM path of MedicalNet's larger
 * layers already takes. */
#define MN_WINO4_BUDGET ((size_t)1 << 24)

static inline size_t pstride(size_t n) { return n + W4_PAD; }
/* Floats between the 216 rows of one output channel's transformed weights (U [kb][216][C]): C rounded up to 16
 * plus 16, so that the rows do not crowd a few L1 sets. */
static inline size_t ux_of(int C) { return ((size_t)C + 15) / 16 * 16 + 16; }

static size_t g_budget; /* mn_wino4_set_budget; 0: MN_WINO4_BUDGET */
void mn_wino4_set_budget(size_t floats) { g_budget = floats; }

/* B^T (6x6), G (6x3), A^T (4x6) for the points 0, 1, -1, 2, -1/2, infinity. */
static const float BT[6][6] = {{1.0f, 1.5f, -2.0f, -1.5f, 1.0f, 0.0f},  {0.0f, -1.0f, -2.5f, -0.5f, 1.0f, 0.0f},
                               {0.0f, 1.0f, 0.5f, -2.5f, 1.0f, 0.0f},   {0.0f, -0.5f, -1.0f, 0.5f, 1.0f, 0.0f},
                               {0.0f, 2.0f, -1.0f, -2.0f, 1.0f, 0.0f},  {0.0f, 1.0f, 1.5f, -2.0f, -1.5f, 1.0f}};
static const float GM[6][3] = {{1.0f, 0.0f, 0.0f},
                               {-1.0f / 3, -1.0f / 3, -1.0f / 3},
                               {1.0f / 3, -1.0f / 3, 1.0f / 3},
                               {1.0f / 15, 2.0f / 15, 4.0f / 15},
                               {-16.0f / 15, 8.0f / 15, -4.0f / 15},
                               {0.0f, 0.0f, 1.0f}};
static const float AT[4][6] = {{1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 0.0f},
                               {0.0f, 1.0f, -1.0f, 2.0f, -0.5f, 0.0f},
                               {0.0f, 1.0f, 1.0f, 4.0f, 0.25f, 0.0f},
                               {0.0f, 1.0f, -1.0f, 8.0f, -0.125f, 1.0f}};

/* One dimension's tiles: first output and valid outputs (1..4) of each. */
typedef struct w4dim {
    int in, out, p, d, nt;
    int ob[MN_WINO4_MAXT];
    unsigned char nv[MN_WINO4_MAXT];
} w4dim;

typedef struct w4plan {
    w4dim dim[3];
    int N, C, K;
    int T;      /* tiles in all */
    int tb, kb; /* tiles per block, output channels per block */
} w4plan;

static int w4dim_init(w4dim *w, int in, int out, int p, int d)
{
    if (out < 1 || d < 1) return 0;
    w->in = in;
    w->out = out;
    w->p = p;
    w->d = d;
    int t = 0;
    for (int q = 0; q < d && q < out; q++) {
        const int oq = (out - q + d - 1) / d;
        for (int u = 0; 4 * u < oq; u++, t++) {
            if (t >= MN_WINO4_MAXT) return 0;
            w->ob[t] = q + 4 * d * u;
            w->nv[t] = (unsigned char)(oq - 4 * u < 4 ? oq - 4 * u : 4);
        }
    }
    w->nt = t;
    return 1;
}

static size_t plan_floats(int C, int tb, int kb)
{
    const size_t u = pstride((size_t)kb * C) > kb * ux_of(C) ? pstride((size_t)kb * C) : kb * ux_of(C);
    return W4_XI * (pstride((size_t)C * tb) + pstride((size_t)kb * tb) + u);
}

static int plan_init(w4plan *pl, const mn_conv3d *l, const mn_shape *in)
{
    const int ie[3] = {in->d, in->h, in->w};
    for (int i = 0; i < 3; i++) {
        if (l->k[i] != 3 || l->s[i] != 1 || l->p[i] < 0) return 0;
        const int o = ie[i] + 2 * l->p[i] - 2 * l->dil[i];
        if (!w4dim_init(&pl->dim[i], ie[i], o, l->p[i], l->dil[i])) return 0;
    }
    pl->N = in->n;
    pl->C = l->cin;
    pl->K = l->cout;
    const double T = (double)in->n * pl->dim[0].nt * pl->dim[1].nt * pl->dim[2].nt;
    if (T > (double)(1 << 30)) return 0;
    pl->T = (int)T;
    int tb = pl->T, kb = pl->K;
    const size_t budget = g_budget ? g_budget : MN_WINO4_BUDGET;
    while (plan_floats(pl->C, tb, kb) > budget) {
        if (kb > 128)
            kb = ((kb + 1) / 2 + 15) / 16 * 16;
        else if (tb > 64)
            tb = (tb + 1) / 2;
        else if (kb > 16)
            kb = ((kb + 1) / 2 + 15) / 16 * 16;
        else if (tb > 16)
            tb = (tb + 1) / 2;
        else
            break;
    }
    pl->tb = tb;
    pl->kb = kb < pl->K ? kb : pl->K;
    return 1;
}

int mn_wino4_eligible(const mn_conv3d *l, const mn_shape *in)
{
    if (!l || !in || !mn_shape_valid(in) || in->c != l->cin || l->cin < 1 || l->cout < 1) return 0;
    w4plan pl;
    return plan_init(&pl, l, in);
}

long mn_wino4_tiles(const mn_conv3d *l, const mn_shape *in)
{
    if (!mn_wino4_eligible(l, in)) return 0;
    w4plan pl;
    plan_init(&pl, l, in);
    return pl.T;
}

size_t mn_wino4_workspace_floats(const mn_conv3d *l, const mn_shape *in)
{
    if (!mn_wino4_eligible(l, in)) return 0;
    w4plan pl;
    plan_init(&pl, l, in);
    return plan_floats(pl.C, pl.tb, pl.kb);
}

/* ---- transforms ------------------------------------------------------------------------------------------------ */

/* 16 lanes of tiles (or of weight channels): one AVX-512 vector, two AVX2 or four SSE ones (GCC's generic vectors,
 * compiled per instruction set by MN_SIMD_CLONES). */
#define W4_L 16
typedef float v16 __attribute__((vector_size(4 * W4_L), may_alias));

/* out[a * os] = sum_j m[a * ma + j * mj] * in[j * is] for a < nout, j < nin.  Inlined with constant arguments, the
 * loops unroll and the zero coefficients drop out at compile time.  (ma, mj) = (row length, 1) applies the matrix,
 * (1, row length) its transpose. */
static inline __attribute__((always_inline)) void trv(const float *m, int ma, int mj, int nout, int nin,
                                                      const v16 *in, int is, v16 *out, int os)
{
#pragma GCC unroll 6
    for (int a = 0; a < nout; a++) {
        v16 acc = {0};
#pragma GCC unroll 6
        for (int j = 0; j < nin; j++) {
            const float c = m[a * ma + j * mj];
            if (c != 0.0f) acc += c * in[j * is];
        }
        out[a * os] = acc;
    }
}

/* The separable 3-D transform out = m x m x m of the cube in (ni^3 vectors, z, y, x order, x fastest) into no^3
 * vectors, along x, then y, then z; t1 and t2 hold ni*ni*no and ni*no*no vectors between the passes. */
static inline __attribute__((always_inline)) void cube(const float *m, int ma, int mj, int no, int ni, const v16 *in,
                                                       v16 *t1, v16 *t2, v16 *out)
{
    for (int r = 0; r < ni * ni; r++) trv(m, ma, mj, no, ni, in + r * ni, 1, t1 + r * no, 1);
    for (int z = 0; z < ni; z++)
        for (int a = 0; a < no; a++) trv(m, ma, mj, no, ni, t1 + z * ni * no + a, no, t2 + z * no * no + a, no);
    for (int ba = 0; ba < no * no; ba++) trv(m, ma, mj, no, ni, t2 + ba, no * no, out + ba, no * no);
}

/* The first n (<= 16) floats at p as a vector, the rest zero; and the reverse. */
static inline void ld16(v16 *v, const float *p, int n)
{
    if (n == W4_L) {
        memcpy(v, p, sizeof *v);
        return;
    }
    float *f = (float *)v;
    for (int i = 0; i < W4_L; i++) f[i] = i < n ? p[i] : 0.0f;
}

static inline void st16(float *p, const v16 *v, int n)
{
    if (n == W4_L)
        memcpy(p, v, sizeof *v);
    else
        memcpy(p, v, (size_t)n * sizeof(float));
}

static inline void tile_decode(const w4plan *pl, int t, int *n, int *tz, int *ty, int *tx)
{
    const int nx = pl->dim[2].nt, ny = pl->dim[1].nt, nz = pl->dim[0].nt;
    *tx = t % nx;
    t /= nx;
    *ty = t % ny;
    t /= ny;
    *tz = t % nz;
    *n = t / nz;
}

/* V [216][C][nb] (plane vpl) = B^T x B^T x B^T of the input tiles t0 .. t0+nb-1. */
MN_SIMD_CLONES
static void w4_in(const w4plan *pl, const float *x, int t0, int nb, float *V, size_t vpl)
{
    const w4dim *dz = &pl->dim[0], *dy = &pl->dim[1], *dx = &pl->dim[2];
    const int C = pl->C;
    const size_t plane = (size_t)dy->in * dx->in, vol = plane * dz->in;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        v16 P[W4_XI], Q[W4_XI], T[W4_XI];
        float *pf = (float *)P;
        for (int i0 = 0; i0 < nb; i0 += W4_L) {
            const int nc = nb - i0 < W4_L ? nb - i0 : W4_L;
            if (nc < W4_L) memset(P, 0, sizeof P);
            for (int i = 0; i < nc; i++) {
                int n, tz, ty, tx;
                tile_decode(pl, t0 + i0 + i, &n, &tz, &ty, &tx);
                const float *xc = x + ((size_t)n * C + c) * vol;
                for (int jz = 0; jz < 6; jz++) {
                    const int iz = dz->ob[tz] - dz->p + dz->d * jz;
                    for (int jy = 0; jy < 6; jy++) {
                        const int iy = dy->ob[ty] - dy->p + dy->d * jy;
                        float *pr = pf + (size_t)(jz * 6 + jy) * 6 * W4_L + i;
                        const int ok = iz >= 0 && iz < dz->in && iy >= 0 && iy < dy->in;
                        const float *row = ok ? xc + (size_t)iz * plane + (size_t)iy * dx->in : NULL;
                        for (int jx = 0; jx < 6; jx++) {
                            const int ix = dx->ob[tx] - dx->p + dx->d * jx;
                            pr[jx * W4_L] = row && ix >= 0 && ix < dx->in ? row[ix] : 0.0f;
                        }
                    }
                }
            }
            cube(&BT[0][0], 6, 1, 6, 6, P, Q, T, Q);
            for (int xi = 0; xi < W4_XI; xi++) st16(V + xi * vpl + (size_t)c * nb + i0, &Q[xi], nc);
        }
    }
}

/* dx += the adjoint of w4_in applied to dV [216][C][nb]: B along z, y and x, then the tiles added into dx. */
MN_SIMD_CLONES
static void w4_in_adj(const w4plan *pl, const float *dV, size_t vpl, int t0, int nb, float *dxv)
{
    const w4dim *dz = &pl->dim[0], *dy = &pl->dim[1], *dx = &pl->dim[2];
    const int C = pl->C;
    const size_t plane = (size_t)dy->in * dx->in, vol = plane * dz->in;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        v16 P[W4_XI], Q[W4_XI], T[W4_XI];
        const float *pf = (const float *)P;
        for (int i0 = 0; i0 < nb; i0 += W4_L) {
            const int nc = nb - i0 < W4_L ? nb - i0 : W4_L;
            for (int xi = 0; xi < W4_XI; xi++) ld16(&Q[xi], dV + xi * vpl + (size_t)c * nb + i0, nc);
            cube(&BT[0][0], 1, 6, 6, 6, Q, P, T, P);
            for (int i = 0; i < nc; i++) {
                int n, tz, ty, tx;
                tile_decode(pl, t0 + i0 + i, &n, &tz, &ty, &tx);
                float *xc = dxv + ((size_t)n * C + c) * vol;
                for (int jz = 0; jz < 6; jz++) {
                    const int iz = dz->ob[tz] - dz->p + dz->d * jz;
                    if (iz < 0 || iz >= dz->in) continue;
                    for (int jy = 0; jy < 6; jy++) {
                        const int iy = dy->ob[ty] - dy->p + dy->d * jy;
                        if (iy < 0 || iy >= dy->in) continue;
                        const float *qr = pf + (size_t)(jz * 6 + jy) * 6 * W4_L + i;
                        float *row = xc + (size_t)iz * plane + (size_t)iy * dx->in;
                        for (int jx = 0; jx < 6; jx++) {
                            const int ix = dx->ob[tx] - dx->p + dx->d * jx;
                            if (ix >= 0 && ix < dx->in) row[ix] += qr[jx * W4_L];
                        }
                    }
                }
            }
        }
    }
}

/* y (channels k0 .. k0+kn-1, tiles t0 .. t0+nb-1) = A^T x A^T x A^T of M [216][kn][nb], plus bias. */
MN_SIMD_CLONES
static void w4_out(const w4plan *pl, const float *M, size_t mpl, int t0, int nb, int k0, int kn, const float *bias,
                   float *yv)
{
    const w4dim *dz = &pl->dim[0], *dy = &pl->dim[1], *dx = &pl->dim[2];
    const int K = pl->K;
    const size_t plane = (size_t)dy->out * dx->out, vol = plane * dz->out;
#pragma omp parallel for schedule(static)
    for (int kk = 0; kk < kn; kk++) {
        v16 Mv[W4_XI], Z1[144], Z2[96], O[64];
        const float *of = (const float *)O;
        const float b = bias ? bias[k0 + kk] : 0.0f;
        for (int i0 = 0; i0 < nb; i0 += W4_L) {
            const int nc = nb - i0 < W4_L ? nb - i0 : W4_L;
            for (int xi = 0; xi < W4_XI; xi++) ld16(&Mv[xi], M + xi * mpl + (size_t)kk * nb + i0, nc);
            cube(&AT[0][0], 6, 1, 4, 6, Mv, Z1, Z2, O);
            for (int i = 0; i < nc; i++) {
                int n, tz, ty, tx;
                tile_decode(pl, t0 + i0 + i, &n, &tz, &ty, &tx);
                float *yk = yv + ((size_t)n * K + k0 + kk) * vol;
                for (int uz = 0; uz < dz->nv[tz]; uz++)
                    for (int uy = 0; uy < dy->nv[ty]; uy++) {
                        const float *orow = of + (size_t)(uz * 4 + uy) * 4 * W4_L + i;
                        float *row = yk + (size_t)(dz->ob[tz] + dz->d * uz) * plane +
                                     (size_t)(dy->ob[ty] + dy->d * uy) * dx->out + dx->ob[tx];
                        for (int ux = 0; ux < dx->nv[tx]; ux++) row[(size_t)dx->d * ux] = orow[ux * W4_L] + b;
                    }
            }
        }
    }
}

/* dM [216][kn][nb] = A x A x A of the dy tiles (channels k0 .. k0+kn-1; outputs past the edge are 0). */
MN_SIMD_CLONES
static void w4_dyt(const w4plan *pl, const float *dyv, int t0, int nb, int k0, int kn, float *D, size_t mpl)
{
    const w4dim *dz = &pl->dim[0], *dy = &pl->dim[1], *dx = &pl->dim[2];
    const int K = pl->K;
    const size_t plane = (size_t)dy->out * dx->out, vol = plane * dz->out;
#pragma omp parallel for schedule(static)
    for (int kk = 0; kk < kn; kk++) {
        v16 G0[64], E1[96], E2[144], Dv[W4_XI];
        float *gf = (float *)G0;
        for (int i0 = 0; i0 < nb; i0 += W4_L) {
            const int nc = nb - i0 < W4_L ? nb - i0 : W4_L;
            if (nc < W4_L) memset(G0, 0, sizeof G0);
            for (int i = 0; i < nc; i++) {
                int n, tz, ty, tx;
                tile_decode(pl, t0 + i0 + i, &n, &tz, &ty, &tx);
                const float *yk = dyv + ((size_t)n * K + k0 + kk) * vol;
                for (int uz = 0; uz < 4; uz++)
                    for (int uy = 0; uy < 4; uy++) {
                        float *g = gf + (size_t)(uz * 4 + uy) * 4 * W4_L + i;
                        const int ok = uz < dz->nv[tz] && uy < dy->nv[ty];
                        const float *row = ok ? yk + (size_t)(dz->ob[tz] + dz->d * uz) * plane +
                                                    (size_t)(dy->ob[ty] + dy->d * uy) * dx->out + dx->ob[tx]
                                              : NULL;
                        for (int ux = 0; ux < 4; ux++)
                            g[ux * W4_L] = row && ux < dx->nv[tx] ? row[(size_t)dx->d * ux] : 0.0f;
                    }
            }
            cube(&AT[0][0], 1, 6, 6, 4, G0, E1, E2, Dv);
            for (int xi = 0; xi < W4_XI; xi++) st16(D + xi * mpl + (size_t)kk * nb + i0, &Dv[xi], nc);
        }
    }
}

/* U [kn][216][C] (rows ux_of(C) apart) = G x G x G of the weights of output channels k0 .. k0+kn-1.  Channel-major,
 * so that each output channel's 216 rows are written close together (in planes [216][kn][C] a whole block apart,
 * the stores missed cache on every row and took most of this function's time); product xi reads rows xi of every
 * channel as a strided matrix, which BLIS packs anyway. */
MN_SIMD_CLONES
static void w4_wt(const w4plan *pl, const float *w, int k0, int kn, float *U)
{
    const int C = pl->C;
    const size_t ux = ux_of(C);
#pragma omp parallel for schedule(static)
    for (int kk = 0; kk < kn; kk++) {
        v16 W[27], A1[54], A2[108], Uv[W4_XI];
        float *wf = (float *)W;
        for (int c0 = 0; c0 < C; c0 += W4_L) {
            const int nc = C - c0 < W4_L ? C - c0 : W4_L;
            const float *wk = w + ((size_t)(k0 + kk) * C + c0) * 27;
            if (nc < W4_L) memset(W, 0, sizeof W);
            for (int ci = 0; ci < nc; ci++)
                for (int t = 0; t < 27; t++) wf[t * W4_L + ci] = wk[(size_t)ci * 27 + t];
            cube(&GM[0][0], 3, 1, 6, 3, W, A1, A2, Uv);
            float *uk = U + (size_t)kk * W4_XI * ux + c0;
            for (int xi = 0; xi < W4_XI; xi++) st16(uk + xi * ux, &Uv[xi], nc);
        }
    }
}

/* dw (output channels k0 .. k0+kn-1) += G^T x G^T x G^T of dU [216][kn][C]. */
MN_SIMD_CLONES
static void w4_dw(const w4plan *pl, const float *dU, size_t upl, int k0, int kn, float *dw)
{
    const int C = pl->C;
#pragma omp parallel for schedule(static)
    for (int kk = 0; kk < kn; kk++) {
        v16 W[27], A1[108], A2[216], Uv[W4_XI];
        const float *wf = (const float *)W;
        for (int c0 = 0; c0 < C; c0 += W4_L) {
            const int nc = C - c0 < W4_L ? C - c0 : W4_L;
            for (int xi = 0; xi < W4_XI; xi++) ld16(&Uv[xi], dU + xi * upl + (size_t)kk * C + c0, nc);
            cube(&GM[0][0], 1, 3, 3, 6, Uv, A2, A1, W);
            float *dk = dw + ((size_t)(k0 + kk) * C + c0) * 27;
            for (int ci = 0; ci < nc; ci++)
                for (int t = 0; t < 27; t++) dk[(size_t)ci * 27 + t] += wf[t * W4_L + ci];
        }
    }
}

/* ---- passes ------------------------------------------------------------------------------------------------------ */

typedef struct w4ws {
    float *V, *M, *U;
    size_t vpl, mpl, upl, ux; /* planes of V, M and dU; row stride of U (ux_of) */
} w4ws;

/* The plan of l on `in` and the split of ws into V, M and U, shared by the three passes. */
static mn_err w4_setup(const mn_conv3d *l, const mn_shape *in, float *ws, const char *what, w4plan *pl, w4ws *s)
{
    MN_CHECK(plan_init(pl, l, in), MN_ERR_ARG, "conv3d %d->%d: not a Winograd F(4,3) layer", l->cin, l->cout);
    MN_CHECK(ws != NULL, MN_ERR_ARG, "conv3d %d->%d %s (Winograd F(4,3)): NULL workspace", pl->C, pl->K, what);
    s->vpl = pstride((size_t)pl->C * pl->tb);
    s->mpl = pstride((size_t)pl->kb * pl->tb);
    s->upl = pstride((size_t)pl->kb * pl->C);
    s->ux = ux_of(pl->C);
    s->V = ws;
    s->M = s->V + W4_XI * s->vpl;
    s->U = s->M + W4_XI * s->mpl;
    return MN_OK;
}

mn_err mn_wino4_forward(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x, float *y,
                        float *ws)
{
    (void)out;
    w4plan pl;
    w4ws s = {0};
    MN_CALL(w4_setup(l, in, ws, "forward", &pl, &s));
    for (int t0 = 0; t0 < pl.T; t0 += pl.tb) {
        const int nb = pl.T - t0 < pl.tb ? pl.T - t0 : pl.tb;
        w4_in(&pl, x, t0, nb, s.V, s.vpl);
        for (int k0 = 0; k0 < pl.K; k0 += pl.kb) {
            const int kn = pl.K - k0 < pl.kb ? pl.K - k0 : pl.kb;
            w4_wt(&pl, l->w, k0, kn, s.U);
            MN_CALL(mn_gemm_batch(W4_XI, nb, kn, pl.C, s.V, 1, nb, s.vpl, s.U, 1, W4_XI * (ptrdiff_t)s.ux, s.ux, 0.0f,
                                  s.M, 1, nb, s.mpl));
            w4_out(&pl, s.M, s.mpl, t0, nb, k0, kn, l->b, y);
        }
    }
    return MN_OK;
}

mn_err mn_wino4_backward_data(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *dy,
                              float *dx, float *ws)
{
    (void)out;
    w4plan pl;
    w4ws s = {0};
    MN_CALL(w4_setup(l, in, ws, "backward-data", &pl, &s));
    for (int t0 = 0; t0 < pl.T; t0 += pl.tb) {
        const int nb = pl.T - t0 < pl.tb ? pl.T - t0 : pl.tb;
        for (int k0 = 0; k0 < pl.K; k0 += pl.kb) {
            const int kn = pl.K - k0 < pl.kb ? pl.K - k0 : pl.kb;
            w4_dyt(&pl, dy, t0, nb, k0, kn, s.M, s.mpl);
            w4_wt(&pl, l->w, k0, kn, s.U);
            /* dV_xi (nb x C) (+)= dM_xi (nb x kn) * U_xi^T (kn x C), the channel blocks in order. */
            MN_CALL(mn_gemm_batch(W4_XI, nb, pl.C, kn, s.M, 1, nb, s.mpl, s.U, W4_XI * (ptrdiff_t)s.ux, 1, s.ux,
                                  k0 ? 1.0f : 0.0f, s.V, 1, nb, s.vpl));
        }
        w4_in_adj(&pl, s.V, s.vpl, t0, nb, dx);
    }
    return MN_OK;
}

mn_err mn_wino4_backward_weights(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x,
                                 const float *dy, float *ws)
{
    (void)out;
    w4plan pl;
    w4ws s = {0};
    MN_CALL(w4_setup(l, in, ws, "backward-weights", &pl, &s));
    const int one_block = pl.tb >= pl.T;
    if (one_block) w4_in(&pl, x, 0, pl.T, s.V, s.vpl);
    for (int k0 = 0; k0 < pl.K; k0 += pl.kb) {
        const int kn = pl.K - k0 < pl.kb ? pl.K - k0 : pl.kb;
        for (int t0 = 0; t0 < pl.T; t0 += pl.tb) {
            const int nb = pl.T - t0 < pl.tb ? pl.T - t0 : pl.tb;
            if (!one_block) w4_in(&pl, x, t0, nb, s.V, s.vpl);
            w4_dyt(&pl, dy, t0, nb, k0, kn, s.M, s.mpl);
            /* dU_xi (C x kn) (+)= V_xi^T (C x nb) * dM_xi (nb x kn), the tile blocks in order. */
            MN_CALL(mn_gemm_batch(W4_XI, pl.C, kn, nb, s.V, nb, 1, s.vpl, s.M, 1, nb, s.mpl, t0 ? 1.0f : 0.0f, s.U,
                                  1, pl.C, s.upl));
        }
        w4_dw(&pl, s.U, s.upl, k0, kn, l->dw);
    }
    return MN_OK;
}
