/* bench_conv3d.c: GFLOP/s of the convolutions of MedicalNet ResNet-18 (input 1x64^3, batch 2), against BLIS sgemm
 * and PyTorch measured in the same run.
 *
 * For every distinct conv shape of the network (weighted by how often it occurs), the driver first validates the
 * fast path against the _ref loop nests on a reduced copy (channels divided by 16, but the stem keeps 16 outputs;
 * same spatial geometry and batch), then times forward, backward-data and backward-weights (median of REPS calls after a warm-up), and
 * prints GFLOP/s per shape and pass plus the network-weighted total (dense FLOPs, padded taps counted, as
 * mn_conv3d_flops; the "in-vol" column gives the share of them that touch in-volume data, which is all the tap
 * path executes, so its dense rate can exceed the GEMM rate, as oneDNN's does).  The reference is BLIS sgemm on 2048^3 in the same process; the target is >= 60% of it.
 * If /usr/bin/python3 imports torch, benchmarks/torch_conv3d.py times the same shapes with the same thread count
 * (jemalloc preloaded, as PyTorch users commonly run it) and the ratio is printed.  Type-B downsample 1x1 convs
 * (ResNet-10/50) are timed too but kept out of the ResNet-18 total.
 *
 * Convs take the per-pass algorithm mn_conv3d_choose_algo picks, as in the model (unset or rule: the fixed rule;
 * auto: timed once; winograd, winograd4: Winograd F(2,3), F(4,3); direct: the channel-blocked direct kernels; gemm:
 * the GEMM path); the
 * validation copies run Winograd on every pass it can take unless the GEMM path is forced (MEDNET_CONV_ALGO=gemm)
 * and the direct kernels where they can run with MEDNET_CONV_ALGO=direct.  The path column gives
 * fwd/bwd-data/bwd-weights: w = Winograd F(2,3), 4 = Winograd F(4,3), x = direct kernels (nn/direct.c), d = dense,
 * t = taps, p = pointwise
 * (1x1x1), s = stem (the one-input-channel kernels of nn/stem.c).
 *
 * --resnet50 times MedicalNet ResNet-50 at input 1x112^3, batch 1, instead (its distinct convolutions, g_shapes50,
 * the 1x1x1 ones included), with the same validation, tables and PyTorch comparison.
 *
 * Usage: bench_conv3d [--sweep | --gemm] [--resnet50] [THREADS] [REPS] (--sweep: only the table of the GEMM path,
 * Winograd F(2,3) and F(4,3) and the direct kernels over the 3x3x3 shapes of resnet10/18/50 at 64^3 and 112^3, see
 * sweep(); --gemm: only the sgemm operand-orientation table, see gemm_orientation();
 * THREADS default: SLURM_CPUS_PER_TASK, OMP_NUM_THREADS, else 2; REPS default 7).  MN_TORCH_SCRIPT overrides the path
 * of torch_conv3d.py; MN_BENCH_NO_TORCH=1 skips PyTorch.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <blis.h>

#include "mednet/conv3d.h"
#include "mednet/mem.h"
#include "mednet/threads.h"
#include "nn/gemm.h"
#include "nn/vol2col.h"

typedef struct shape_spec {
    const char *name;
    int transposed;
    int cin, cout, ext, k, s, p, dil, op, bias;
    int count;    /* occurrences in ResNet-18; 0 = extra (not in the total) */
} shape_spec;

/* MedicalNet ResNet-18, shortcut A, input 1x64^3, batch 2, with the conv_seg head. */
static const shape_spec g_shapes[] = {
    {"stem 1->64 k7 s2 p3 @64^3", 0, 1, 64, 64, 7, 2, 3, 1, 0, 0, 1},
    {"layer1 64->64 k3 p1 @16^3", 0, 64, 64, 16, 3, 1, 1, 1, 0, 0, 4},
    {"layer2 64->128 k3 s2 p1 @16^3", 0, 64, 128, 16, 3, 2, 1, 1, 0, 0, 1},
    {"layer2 128->128 k3 p1 @8^3", 0, 128, 128, 8, 3, 1, 1, 1, 0, 0, 3},
    {"layer3 128->256 k3 d2 p2 @8^3", 0, 128, 256, 8, 3, 1, 2, 2, 0, 0, 1},
    {"layer3 256->256 k3 d2 p2 @8^3", 0, 256, 256, 8, 3, 1, 2, 2, 0, 0, 3},
    {"layer4 256->512 k3 d4 p4 @8^3", 0, 256, 512, 8, 3, 1, 4, 4, 0, 0, 1},
    {"layer4 512->512 k3 d4 p4 @8^3", 0, 512, 512, 8, 3, 1, 4, 4, 0, 0, 3},
    {"head convT 512->32 k2 s2 @8^3", 1, 512, 32, 8, 2, 2, 0, 1, 0, 1, 1},
    {"head 32->32 k3 p1 @16^3", 0, 32, 32, 16, 3, 1, 1, 1, 0, 0, 1},
    {"head 32->2 k1 @16^3", 0, 32, 2, 16, 1, 1, 0, 1, 0, 0, 1},
    {"(B) down 64->128 k1 s2 @16^3", 0, 64, 128, 16, 1, 2, 0, 1, 0, 0, 0},
    {"(B) down 128->256 k1 @8^3", 0, 128, 256, 8, 1, 1, 0, 1, 0, 0, 0},
    {"(B) down 256->512 k1 @8^3", 0, 256, 512, 8, 1, 1, 0, 1, 0, 0, 0},
};

/* --resnet50: MedicalNet ResNet-50 (bottleneck blocks, shortcut B), input 1x112^3, batch 1, with the conv_seg head:
 * every distinct convolution, weighted by how often it occurs (the 1x1x1 convolutions are a third of its FLOPs). */
static const shape_spec g_shapes50[] = {
    {"stem 1->64 k7 s2 p3 @112^3", 0, 1, 64, 112, 7, 2, 3, 1, 0, 0, 1},
    {"l1 64->64 k1 @28^3", 0, 64, 64, 28, 1, 1, 0, 1, 0, 0, 1},
    {"l1 64->64 k3 p1 @28^3", 0, 64, 64, 28, 3, 1, 1, 1, 0, 0, 3},
    {"l1 64->256 k1 @28^3", 0, 64, 256, 28, 1, 1, 0, 1, 0, 0, 4},
    {"l1 256->64 k1 @28^3", 0, 256, 64, 28, 1, 1, 0, 1, 0, 0, 2},
    {"l2 256->128 k1 @28^3", 0, 256, 128, 28, 1, 1, 0, 1, 0, 0, 1},
    {"l2 128->128 k3 s2 p1 @28^3", 0, 128, 128, 28, 3, 2, 1, 1, 0, 0, 1},
    {"l2 128->512 k1 @14^3", 0, 128, 512, 14, 1, 1, 0, 1, 0, 0, 4},
    {"l2 down 256->512 k1 s2 @28^3", 0, 256, 512, 28, 1, 2, 0, 1, 0, 0, 1},
    {"l2 512->128 k1 @14^3", 0, 512, 128, 14, 1, 1, 0, 1, 0, 0, 3},
    {"l2 128->128 k3 p1 @14^3", 0, 128, 128, 14, 3, 1, 1, 1, 0, 0, 3},
    {"l3 512->256 k1 @14^3", 0, 512, 256, 14, 1, 1, 0, 1, 0, 0, 1},
    {"l3 256->256 k3 d2 p2 @14^3", 0, 256, 256, 14, 3, 1, 2, 2, 0, 0, 6},
    {"l3 256->1024 k1 @14^3", 0, 256, 1024, 14, 1, 1, 0, 1, 0, 0, 6},
    {"l3 down 512->1024 k1 @14^3", 0, 512, 1024, 14, 1, 1, 0, 1, 0, 0, 1},
    {"l3 1024->256 k1 @14^3", 0, 1024, 256, 14, 1, 1, 0, 1, 0, 0, 5},
    {"l4 1024->512 k1 @14^3", 0, 1024, 512, 14, 1, 1, 0, 1, 0, 0, 1},
    {"l4 512->512 k3 d4 p4 @14^3", 0, 512, 512, 14, 3, 1, 4, 4, 0, 0, 3},
    {"l4 512->2048 k1 @14^3", 0, 512, 2048, 14, 1, 1, 0, 1, 0, 0, 3},
    {"l4 down 1024->2048 k1 @14^3", 0, 1024, 2048, 14, 1, 1, 0, 1, 0, 0, 1},
    {"l4 2048->512 k1 @14^3", 0, 2048, 512, 14, 1, 1, 0, 1, 0, 0, 2},
    {"head convT 2048->32 k2 s2 @14^3", 1, 2048, 32, 14, 2, 2, 0, 1, 0, 1, 1},
    {"head 32->32 k3 p1 @28^3", 0, 32, 32, 28, 3, 1, 1, 1, 0, 0, 1},
    {"head 32->2 k1 @28^3", 0, 32, 2, 28, 1, 1, 0, 1, 0, 0, 1},
};
#define MAXSHAPES 32 /* the per-shape result arrays of main() */
_Static_assert(sizeof g_shapes / sizeof g_shapes[0] <= MAXSHAPES &&
                   sizeof g_shapes50 / sizeof g_shapes50[0] <= MAXSHAPES,
               "a shape table is longer than MAXSHAPES");
/* The network timed (ResNet-18 at 2x64^3 unless --resnet50); the stem is shape 0 in both. */
static const shape_spec *g_net = g_shapes;
static int g_nshapes = (int)(sizeof g_shapes / sizeof g_shapes[0]);
static const char *g_net_name = "ResNet-18";
#define NSHAPES g_nshapes
#define BATCH g_batch
static int g_batch = 2; /* the batch of the layers set up next (--sweep and --resnet50 change it) */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float *falloc(size_t n, const char *what)
{
    void *p = NULL;
    if (mn_calloc(sizeof(float) * (n ? n : 1), what, &p) != MN_OK) exit(2);
    return p;
}

static void fill(float *x, size_t n, unsigned seed, float scale)
{
    unsigned long s = seed * 2654435761UL + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005UL + 1442695040888963407UL;
        x[i] = scale * ((float)((s >> 40) & 0xffffff) / 8388608.0f - 1.0f);
    }
}

/* One layer of either kind, with buffers. */
typedef struct bench_layer {
    const shape_spec *sp;
    mn_conv3d c;
    mn_convt3d t;
    mn_shape in, out;
    size_t nx, ny, nw, nws;
    float *x, *y, *dy, *dx, *w, *b, *dw, *db, *ws;
} bench_layer;

static int layer_setup(bench_layer *L, const shape_spec *sp, int cdiv)
{
    memset(L, 0, sizeof *L);
    L->sp = sp;
    int cin = sp->cin / cdiv > 0 ? sp->cin / cdiv : 1, cout = sp->cout / cdiv > 0 ? sp->cout / cdiv : 1;
    /* A one-input-channel layer keeps 16 output channels, a multiple of the vector width, so that the reduced copy
     * still runs the stem kernels (nn/stem.c) it validates. */
    if (sp->cin == 1 && cout < 16 && sp->cout >= 16) cout = 16;
    L->in = (mn_shape){BATCH, cin, sp->ext, sp->ext, sp->ext};
    int kv = sp->k * sp->k * sp->k;
    L->nw = (size_t)cin * cout * kv;
    if (sp->transposed) {
        L->t = (mn_convt3d){.cin = cin, .cout = cout, .k = {sp->k, sp->k, sp->k}, .s = {sp->s, sp->s, sp->s},
                            .p = {sp->p, sp->p, sp->p}, .dil = {sp->dil, sp->dil, sp->dil},
                            .op = {sp->op, sp->op, sp->op}};
        if (mn_convt3d_out_shape(&L->t, &L->in, &L->out) != MN_OK) return 1;
        L->nws = mn_convt3d_workspace_floats(&L->t, &L->in);
    } else {
        L->c = (mn_conv3d){.cin = cin, .cout = cout, .k = {sp->k, sp->k, sp->k}, .s = {sp->s, sp->s, sp->s},
                           .p = {sp->p, sp->p, sp->p}, .dil = {sp->dil, sp->dil, sp->dil}};
        if (mn_conv3d_out_shape(&L->c, &L->in, &L->out) != MN_OK) return 1;
    }
    const char *env = getenv("MEDNET_CONV_ALGO");
    const int force_gemm = env && !strcmp(env, "gemm"), force_direct = env && !strcmp(env, "direct");
    /* The validation copies ask for their algorithm before the workspace is sized: it counts Winograd's and the
     * direct kernels' shares only for layers that ask for them or that MEDNET_CONV_ALGO may give them to. */
    if (!sp->transposed && cdiv > 1 && !force_gemm)
        for (int p = 0; p < MN_CONV_NPASS; p++)
            L->c.algo[p] = force_direct ? MN_CONV_ALGO_DIRECT : MN_CONV_ALGO_WINOGRAD;
    if (!sp->transposed) L->nws = mn_conv3d_workspace_floats(&L->c, &L->in);
    L->nx = mn_shape_numel(&L->in);
    L->ny = mn_shape_numel(&L->out);
    L->x = falloc(L->nx, "x");
    L->dx = falloc(L->nx, "dx");
    L->y = falloc(L->ny, "y");
    L->dy = falloc(L->ny, "dy");
    L->w = falloc(L->nw, "w");
    L->dw = falloc(L->nw, "dw");
    L->b = falloc(cout, "b");
    L->db = falloc(cout, "db");
    L->ws = falloc(L->nws, "workspace");
    fill(L->x, L->nx, 1, 1.0f);
    fill(L->dy, L->ny, 2, 1.0f);
    fill(L->w, L->nw, 3, 0.05f);
    fill(L->b, cout, 4, 1.0f);
    if (!sp->transposed && cdiv == 1) {
        L->c.dw = L->dw;
        if (mn_conv3d_choose_algo(&L->c, &L->in, L->ws, L->nws) != MN_OK) return 1;
    }
    return 0;
}

/* "w/t/t": the path of each pass (see the file comment). */
static const char *path_str(const bench_layer *L, char *buf, size_t n)
{
    if (L->sp->transposed) return "convT";
    char c[3];
    for (int p = 0; p < 3; p++) {
        const char *a = mn_conv3d_pass_algo(&L->c, &L->in, p);
        c[p] = !strcmp(a, "winograd") ? 'w' : !strcmp(a, "winograd4") ? '4' : !strcmp(a, "direct") ? 'x' : a[0];
    }
    snprintf(buf, n, "%c/%c/%c", c[0], c[1], c[2]);
    return buf;
}

static void layer_free(bench_layer *L)
{
    float **bufs[] = {&L->x, &L->dx, &L->y, &L->dy, &L->w, &L->dw, &L->b, &L->db, &L->ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mn_free(bufs[i]);
}

/* Fraction of the dense FLOPs that multiply in-volume data (the tap path executes only these). */
static double useful_fraction(const bench_layer *L)
{
    if (L->sp->transposed) return 1.0;
    mn_vgeom g = {.c = L->c.cin, .in = {L->in.d, L->in.h, L->in.w}, .out = {L->out.d, L->out.h, L->out.w}};
    for (int i = 0; i < 3; i++) {
        g.k[i] = L->c.k[i];
        g.s[i] = L->c.s[i];
        g.p[i] = L->c.p[i];
        g.dil[i] = L->c.dil[i];
    }
    mn_taps tp;
    if (!mn_taps_plan(&g, &tp)) return 1.0;
    return (double)tp.total / ((double)tp.n * (double)mn_vgeom_cols(&g));
}

static double layer_flops(const bench_layer *L)
{
    /* A transposed conv costs what its adjoint conv costs: 2 * N * cin * cout * kvol * input voxels. */
    if (L->sp->transposed)
        return 2.0 * L->in.n * L->t.cin * L->t.cout * L->t.k[0] * L->t.k[1] * L->t.k[2] * (double)mn_shape_voxels(&L->in);
    return mn_conv3d_flops(&L->c, &L->in);
}

/* pass 0 forward, 1 backward-data, 2 backward-weights (+bias). */
static mn_err run_pass(bench_layer *L, int pass, int ref)
{
    float *dx = pass == 1 ? L->dx : NULL;
    float *dw = pass == 2 ? L->dw : NULL, *db = pass == 2 && L->sp->bias ? L->db : NULL;
    if (L->sp->transposed) {
        L->t.w = L->w;
        L->t.b = L->sp->bias ? L->b : NULL;
        L->t.dw = dw;
        L->t.db = db;
        if (pass == 0) return ref ? mn_convt3d_forward_ref(&L->t, &L->in, L->x, L->y)
                                  : mn_convt3d_forward(&L->t, &L->in, L->x, L->y, L->ws);
        return ref ? mn_convt3d_backward_ref(&L->t, &L->in, L->x, L->dy, dx)
                   : mn_convt3d_backward(&L->t, &L->in, L->x, L->dy, dx, L->ws);
    }
    L->c.w = L->w;
    L->c.b = L->sp->bias ? L->b : NULL;
    L->c.dw = dw;
    L->c.db = db;
    if (pass == 0)
        return ref ? mn_conv3d_forward_ref(&L->c, &L->in, L->x, L->y) : mn_conv3d_forward(&L->c, &L->in, L->x, L->y, L->ws);
    return ref ? mn_conv3d_backward_ref(&L->c, &L->in, L->x, L->dy, dx)
               : mn_conv3d_backward(&L->c, &L->in, L->x, L->dy, dx, L->ws);
}

static double max_relerr(const float *a, const float *b, size_t n)
{
    double m = 0, e = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(b[i]));
    double floor_ = fmax(1e-6, 0.01 * m);
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(floor_, fmax(fabs(a[i]), fabs(b[i])));
        if (d > e || d != d) e = d;
    }
    return e;
}

/* Fast vs _ref on the reduced copy: worst relative error over y, dx, dw, db. */
static double validate(const shape_spec *sp)
{
    bench_layer L;
    if (layer_setup(&L, sp, 16)) return INFINITY;
    int cout = sp->transposed ? L.t.cout : L.c.cout;
    float *yr = falloc(L.ny, "y ref"), *dxr = falloc(L.nx, "dx ref"), *dwr = falloc(L.nw, "dw ref"),
          *dbr = falloc(cout, "db ref");
    double e = 0;
    if (run_pass(&L, 0, 0) || run_pass(&L, 1, 0) || run_pass(&L, 2, 0)) e = INFINITY;
    float *y = L.y, *dx = L.dx, *dw = L.dw, *db = L.db;
    L.y = yr;
    L.dx = dxr;
    L.dw = dwr;
    L.db = dbr;
    if (run_pass(&L, 0, 1) || run_pass(&L, 1, 1) || run_pass(&L, 2, 1)) e = INFINITY;
    e = fmax(e, fmax(max_relerr(y, yr, L.ny), fmax(max_relerr(dx, dxr, L.nx), max_relerr(dw, dwr, L.nw))));
    if (sp->bias) e = fmax(e, max_relerr(db, dbr, cout));
    L.y = y;
    L.dx = dx;
    L.dw = dw;
    L.db = db;
    mn_free(&yr);
    mn_free(&dxr);
    mn_free(&dwr);
    mn_free(&dbr);
    layer_free(&L);
    return e;
}

/* Median seconds of reps calls after a warm-up; *best gets the fastest call. */
static double time_pass(bench_layer *L, int pass, int reps, double *best)
{
    double t[64];
    if (reps > 64) reps = 64;
    if (run_pass(L, pass, 0) != MN_OK) exit(1); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        if (run_pass(L, pass, 0) != MN_OK) exit(1);
        t[r] = now() - t0;
    }
    qsort(t, reps, sizeof t[0], cmp_double);
    *best = t[0];
    return t[reps / 2];
}

static double sgemm_gflops(int n, int reps)
{
    float *a = falloc((size_t)n * n, "A"), *b = falloc((size_t)n * n, "B"), *c = falloc((size_t)n * n, "C");
    fill(a, (size_t)n * n, 5, 1.0f);
    fill(b, (size_t)n * n, 6, 1.0f);
    float one = 1.0f, zero = 0.0f;
    double t[64];
    if (reps > 64) reps = 64;
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, n, n, n, &one, a, n, 1, b, n, 1, &zero, c, n, 1);
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, n, n, n, &one, a, n, 1, b, n, 1, &zero, c, n, 1);
        t[r] = now() - t0;
    }
    qsort(t, reps, sizeof t[0], cmp_double);
    mn_free(&a);
    mn_free(&b);
    mn_free(&c);
    return 2.0 * n * (double)n * n / t[reps / 2] * 1e-9;
}

/* Run torch_conv3d.py on the same shapes; fills tt[shape][pass] (seconds).  Returns 0 on success. */
static int run_torch(int threads, int reps, double tt[][3], double tb[][3], char *version, size_t vlen)
{
    if (getenv("MN_BENCH_NO_TORCH") && atoi(getenv("MN_BENCH_NO_TORCH"))) return 1;
    if (system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") != 0) {
        printf("PyTorch: /usr/bin/python3 cannot import torch; comparison skipped\n");
        return 1;
    }
    char script[1024];
    const char *env = getenv("MN_TORCH_SCRIPT");
    if (env && *env) {
        snprintf(script, sizeof script, "%s", env);
    } else {
        /* The script sits next to this source file (CMake compiles it by absolute path). */
        snprintf(script, sizeof script, "%s", __FILE__);
        char *slash = strrchr(script, '/');
        snprintf(slash ? slash + 1 : script, sizeof script - (size_t)(slash ? slash + 1 - script : 0),
                 "torch_conv3d.py");
    }
    static char cmd[8192];
    int len = snprintf(cmd, sizeof cmd,
                       "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 "
                       "MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 OMP_NUM_THREADS=%d /usr/bin/python3 %s %d %d",
                       threads, script, threads, reps);
    for (int i = 0; i < NSHAPES; i++) {
        const shape_spec *s = &g_net[i];
        len += snprintf(cmd + len, sizeof cmd - (size_t)len, " %s,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d",
                        s->transposed ? "convt" : "conv", BATCH, s->cin, s->cout, s->ext, s->ext, s->ext, s->k, s->s,
                        s->p, s->dil, s->op, s->bias);
    }
    FILE *f = popen(cmd, "r");
    if (!f) return 1;
    char line[512];
    int got = 0;
    version[0] = 0;
    while (fgets(line, sizeof line, f)) {
        int i;
        double a, b, c, d, e, g;
        if (sscanf(line, "shape %d %lf %lf %lf %lf %lf %lf", &i, &a, &b, &c, &d, &e, &g) == 7 && i >= 0 &&
            i < NSHAPES) {
            tt[i][0] = a;
            tt[i][1] = b;
            tt[i][2] = c;
            tb[i][0] = d;
            tb[i][1] = e;
            tb[i][2] = g;
            got++;
        } else if (strncmp(line, "torch ", 6) == 0) {
            snprintf(version, vlen, "%.200s", line);
            version[strcspn(version, "\n")] = 0;
        }
    }
    int rc = pclose(f);
    if (rc != 0 || got != NSHAPES) {
        printf("PyTorch: %s failed (status %d, %d of %d shapes)\n", script, rc, got, NSHAPES);
        return 1;
    }
    return 0;
}

/* The algorithms compared, in table order. */
#define NALGO 4
static const mn_conv_algo g_algos[NALGO] = {MN_CONV_ALGO_GEMM, MN_CONV_ALGO_WINOGRAD, MN_CONV_ALGO_WINOGRAD4,
                                            MN_CONV_ALGO_DIRECT};
static const char g_algo_letter[NALGO] = {'g', 'w', '4', 'x'};
static const char *const g_algo_name[NALGO] = {"gemm", "winograd", "winograd4", "direct"};

static char algo_letter(mn_conv_algo a)
{
    for (int i = 0; i < NALGO; i++)
        if (g_algos[i] == a) return g_algo_letter[i];
    return '?';
}

/* The GEMM path, Winograd F(2,3) and F(4,3) and the direct kernels on one layer, alternating, fastest of reps calls
 * after a warm-up: best[a][pass] wall seconds, cbest[a][pass] process CPU seconds; INFINITY where algorithm a cannot
 * run the pass (it would fall back to the GEMM path).  Grows the workspace as needed. */
static int compare_algos(bench_layer *L, int reps, double best[NALGO][3], double cbest[NALGO][3])
{
    size_t nws = 0;
    for (int a = 0; a < NALGO; a++) {
        for (int p = 0; p < 3; p++) L->c.algo[p] = (unsigned char)g_algos[a];
        const size_t n = mn_conv3d_workspace_floats(&L->c, &L->in);
        if (n > nws) nws = n;
    }
    if (nws > L->nws) {
        mn_free(&L->ws);
        L->ws = falloc(nws, "workspace");
        L->nws = nws;
    }
    int can[NALGO][3];
    for (int a = 0; a < NALGO; a++)
        for (int p = 0; p < 3; p++) {
            for (int q = 0; q < 3; q++) L->c.algo[q] = (unsigned char)g_algos[a];
            const char *name = mn_conv3d_pass_algo(&L->c, &L->in, p);
            can[a][p] = a == 0 || !strcmp(name, g_algo_name[a]);
            best[a][p] = cbest[a][p] = INFINITY;
        }
    for (int r = 0; r <= reps; r++)
        for (int a = 0; a < NALGO; a++) {
            for (int p = 0; p < 3; p++) L->c.algo[p] = (unsigned char)g_algos[a];
            for (int p = 0; p < 3; p++) {
                if (!can[a][p]) continue;
                double t0 = now(), c0 = cpu_now();
                if (run_pass(L, p, 0) != MN_OK) return 1;
                double dt = now() - t0, dc = cpu_now() - c0;
                if (r > 0 && dt < best[a][p]) best[a][p] = dt; /* r = 0: warm-up */
                if (r > 0 && dc < cbest[a][p]) cbest[a][p] = dc;
            }
        }
    return 0;
}

/* "12.3/4.5/-": the ms of each algorithm on one pass ("-" where it cannot run). */
static void algo_ms(const double best[NALGO][3], int p, char *buf, size_t n)
{
    size_t o = 0;
    for (int a = 0; a < NALGO && o < n; a++)
        o += isfinite(best[a][p]) ? (size_t)snprintf(buf + o, n - o, "%s%.1f", a ? "/" : "", best[a][p] * 1e3)
                                  : (size_t)snprintf(buf + o, n - o, "%s-", a ? "/" : "");
}

static char fastest(const double best[NALGO][3], int p)
{
    int f = 0;
    for (int a = 1; a < NALGO; a++)
        if (best[a][p] < best[f][p]) f = a;
    return g_algo_letter[f];
}

/* --gemm: the products whose operand along C's contiguous dimension is stored contiguous along k (every
 * backward-weights product of NCDHW tensors; the tap path's forward), three ways, fastest of reps calls each:
 * BLIS on that layout (its reference packing copies the operand element by element), BLIS on the same operand stored
 * the other way (the reference: what BLIS packs fast), and mn_gemm on the first layout (which transposes the operand
 * itself, nn/gemm.c).  C is row-major, so the operand is B (k x n, column-major); A is row- or column-major as in
 * the model. */
static int gemm_orientation(int reps)
{
    static const struct { const char *name; int m, n, k, a_rows; } prods[] = {
        {"pointwise bwd-w 256->64 @16^3", 64, 256, 4096, 1},   {"pointwise bwd-w 64->256 @16^3", 256, 64, 4096, 1},
        {"pointwise bwd-w 64->64 @16^3", 64, 64, 4096, 1},     {"pointwise bwd-w 512->2048 @8^3", 2048, 512, 512, 1},
        {"pointwise bwd-w 2048->512 @8^3", 512, 2048, 512, 1}, {"taps fwd 512->512 d4, 64-voxel box", 128, 512, 512, 0},
        {"taps fwd 512->512 d4, whole box", 1024, 512, 512, 0}};
    printf("\nsgemm with B (the operand along C's rows) k-contiguous, fastest of %d calls, ms: BLIS as stored / "
           "BLIS with B n-contiguous (reference) / mn_gemm as stored\n", reps);
    printf("%-36s %-16s | %9s %9s %9s | %s\n", "product", "m x n x k", "BLIS", "BLIS ref", "mn_gemm", "mn_gemm / ref");
    for (size_t i = 0; i < sizeof prods / sizeof prods[0]; i++) {
        const int m = prods[i].m, n = prods[i].n, k = prods[i].k;
        float *a = falloc((size_t)m * k, "A"), *b = falloc((size_t)k * n, "B"), *c = falloc((size_t)m * n, "C");
        fill(a, (size_t)m * k, 7, 1.0f);
        fill(b, (size_t)k * n, 8, 1.0f);
        const inc_t rsa = prods[i].a_rows ? k : 1, csa = prods[i].a_rows ? 1 : m;
        float one = 1.0f, zero = 0.0f;
        double best[3] = {1e30, 1e30, 1e30};
        for (int r = 0; r <= reps; r++)
            for (int v = 0; v < 3; v++) {
                const double t0 = now();
                /* B as stored (column-major, k-contiguous), or the reference: B row-major (n-contiguous). */
                const inc_t rsb = v == 1 ? n : 1, csb = v == 1 ? 1 : k;
                if (v < 2)
                    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &one, a, rsa, csa, b, rsb, csb, &zero, c, n,
                              1);
                else if (mn_gemm(m, n, k, 1.0f, a, rsa, csa, b, 1, k, 0.0f, c, n, 1) != MN_OK)
                    return 1;
                const double t = now() - t0;
                if (r && t < best[v]) best[v] = t; /* call 0 warms up */
            }
        char dims[32];
        snprintf(dims, sizeof dims, "%dx%dx%d", m, n, k);
        printf("%-36s %-16s | %9.3f %9.3f %9.3f | %.2f\n", prods[i].name, dims, best[0] * 1e3, best[1] * 1e3,
               best[2] * 1e3, best[2] / best[1]);
        mn_free(&a);
        mn_free(&b);
        mn_free(&c);
    }
    return 0;
}

/* --sweep: GEMM path against Winograd F(2,3) and F(4,3) and the direct kernels for every stride-1 3x3x3 convolution
 * shape of MedicalNet resnet10/18/50 (basic and bottleneck blocks give the same 3x3x3 shapes) and the conv_seg head, at
 * input 1x64^3 batch 2 and 1x112^3 batch 1 and 2; alternating, fastest of reps calls, wall and CPU
 * (CLOCK_PROCESS_CPUTIME_ID) time, and the pass the rule of MEDNET_CONV_ALGO unset would give (mn_conv3d_rule_algo). */
static int sweep(int reps)
{
    static const struct { int size, batch, e1, e2; } inputs[] = {{64, 2, 16, 8}, {112, 1, 28, 14}, {112, 2, 28, 14}};
    static const struct { const char *name; int cin, cout, dil, big; } convs[] = {
        {"layer1 64->64", 64, 64, 1, 1},       {"layer2 128->128", 128, 128, 1, 0}, {"layer3 128->256 d2", 128, 256, 2, 0},
        {"layer3 256->256 d2", 256, 256, 2, 0}, {"layer4 256->512 d4", 256, 512, 4, 0},
        {"layer4 512->512 d4", 512, 512, 4, 0}, {"head 32->32", 32, 32, 1, 1}};
    printf("\nGEMM path / Winograd F(2,3) / F(4,3) / direct kernels per pass, fastest of %d alternating calls, ms "
           "wall; best: the fastest (g, w, 4, x); rule: the MEDNET_CONV_ALGO-unset choice\n", reps);
    printf("%-20s %-12s | %-23s %-23s %-23s | %-4s | %s\n", "layer", "input", "fwd g/w/4/x", "bwd-d g/w/4/x",
           "bwd-w g/w/4/x", "best", "rule");
    for (size_t ii = 0; ii < sizeof inputs / sizeof inputs[0]; ii++)
        for (size_t ci = 0; ci < sizeof convs / sizeof convs[0]; ci++) {
            const int ext = convs[ci].big ? inputs[ii].e1 : inputs[ii].e2, d = convs[ci].dil;
            shape_spec sp = {convs[ci].name, 0, convs[ci].cin, convs[ci].cout, ext, 3, 1, d, d, 0, 0, 1};
            g_batch = inputs[ii].batch;
            bench_layer L;
            if (layer_setup(&L, &sp, 1)) return 1;
            double best[NALGO][3], cbest[NALGO][3];
            if (compare_algos(&L, reps, best, cbest)) return 1;
            char in[32], rule[4] = "---", win[4] = "---", col[3][48];
            snprintf(in, sizeof in, "%dx1x%d^3 @%d^3", inputs[ii].batch, inputs[ii].size, ext);
            for (int p = 0; p < 3; p++) {
                rule[p] = algo_letter(mn_conv3d_rule_algo(&L.c, &L.in, p));
                win[p] = fastest(best, p);
                algo_ms(best, p, col[p], sizeof col[p]);
            }
            printf("%-20s %-12s | %-23s %-23s %-23s | %s  | %s\n", convs[ci].name, in, col[0], col[1], col[2], win,
                   rule);
            fflush(stdout);
            layer_free(&L);
        }
    g_batch = 2;
    return 0;
}

int main(int argc, char **argv)
{
    int do_sweep = argc > 1 && !strcmp(argv[1], "--sweep");
    if (do_sweep) {
        argv++;
        argc--;
    }
    const int do_gemm = argc > 1 && !strcmp(argv[1], "--gemm");
    if (do_gemm) {
        argv++;
        argc--;
    }
    if (argc > 1 && !strcmp(argv[1], "--resnet50")) {
        g_net = g_shapes50;
        g_nshapes = (int)(sizeof g_shapes50 / sizeof g_shapes50[0]);
        g_net_name = "ResNet-50";
        g_batch = 1;
        argv++;
        argc--;
    }
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    if (threads <= 0) threads = (getenv("SLURM_CPUS_PER_TASK") || getenv("OMP_NUM_THREADS")) ? mn_threads_resolve(0) : 2;
    int reps = argc > 2 ? atoi(argv[2]) : 7;
    if (reps < 1) reps = 7;
    if (mn_threads_init(threads) != MN_OK) return 1;
    printf("bench_conv3d: MedicalNet %s convs, input 1x%d^3, batch %d, %d threads, median of %d, "
           "MEDNET_CONV_ALGO=%s\n",
           g_net_name, g_net[0].ext, BATCH, threads, reps,
           getenv("MEDNET_CONV_ALGO") ? getenv("MEDNET_CONV_ALGO") : "(unset: rule)");
    char cpu[256];
    mn_blis_cpu_key(cpu, sizeof cpu);
    printf("CPU: %s\nBLIS kernels: %s (%s)\nmednet convolution kernels: %s\n", cpu, mn_blis_arch(),
           mn_blis_arch_reason(), mn_simd_kernels());

    if (do_gemm) return gemm_orientation(reps);
    if (do_sweep) {
        double l[3] = {0};
        FILE *la = fopen("/proc/loadavg", "r");
        if (la) {
            if (fscanf(la, "%lf %lf %lf", &l[0], &l[1], &l[2]) != 3) l[0] = l[1] = l[2] = -1;
            fclose(la);
        }
        printf("load average at start: %.2f %.2f %.2f\n", l[0], l[1], l[2]);
        return sweep(reps);
    }
    double gemm0 = sgemm_gflops(2048, 5);
    printf("BLIS sgemm 2048^3: %.1f GFLOP/s (measured again after the convolutions; the higher is used)\n\n", gemm0);

    printf("validation on reduced copies (channels / 16), fast vs _ref, y dx dw db:\n");
    int bad = 0;
    for (int i = 0; i < NSHAPES; i++) {
        double e = validate(&g_net[i]);
        printf("  %-32s max rel err %.2e %s\n", g_net[i].name, e, e <= 1e-4 ? "ok" : "FAILED");
        if (!(e <= 1e-4)) bad = 1;
    }
    if (bad) {
        fprintf(stderr, "validation failed: not timing\n");
        return 1;
    }

    double tm[MAXSHAPES][3], tmb[MAXSHAPES][3], fl[MAXSHAPES];
    size_t ws_max = 0;
    printf("\n%-32s %-6s %5s %8s %7s | %8s %8s %8s  GFLOP/s (dense FLOPs / time)\n", "shape", "path", "count",
           "GFLOP", "in-vol", "fwd", "bwd-d", "bwd-w");
    for (int i = 0; i < NSHAPES; i++) {
        bench_layer L;
        if (layer_setup(&L, &g_net[i], 1)) return 1;
        fl[i] = layer_flops(&L);
        if (L.nws > ws_max) ws_max = L.nws;
        for (int p = 0; p < 3; p++) tm[i][p] = time_pass(&L, p, reps, &tmb[i][p]);
        char pbuf[16];
        printf("%-32s %-6s %5d %8.3f %6.0f%% | %8.1f %8.1f %8.1f\n", g_net[i].name,
               path_str(&L, pbuf, sizeof pbuf), g_net[i].count, fl[i] * 1e-9,
               100.0 * useful_fraction(&L), fl[i] / tm[i][0] * 1e-9, fl[i] / tm[i][1] * 1e-9,
               fl[i] / tm[i][2] * 1e-9);
        layer_free(&L);
    }
    double tot_fl = 0, tot_t = 0, tot_tb = 0, pf[3] = {0}, pt[3] = {0};
    for (int i = 0; i < NSHAPES; i++) {
        if (!g_net[i].count) continue;
        for (int p = 0; p < 3; p++) {
            pf[p] += g_net[i].count * fl[i];
            pt[p] += g_net[i].count * tm[i][p];
            tot_tb += g_net[i].count * tmb[i][p];
        }
    }
    for (int p = 0; p < 3; p++) {
        tot_fl += pf[p];
        tot_t += pt[p];
    }
    double gemm1 = sgemm_gflops(2048, 5), gemm = fmax(gemm0, gemm1);
    double net = tot_fl / tot_t * 1e-9;
    printf("\n%s weighted (%.1f GFLOP per fwd+bwd, %.1f ms): %.1f GFLOP/s  [fwd %.1f, bwd-data %.1f, "
           "bwd-weights %.1f]\n",
           g_net_name, tot_fl * 1e-9, tot_t * 1e3, net, pf[0] / pt[0] * 1e-9, pf[1] / pt[1] * 1e-9,
           pf[2] / pt[2] * 1e-9);
    printf("(fastest call of each pass instead of the median: %.1f GFLOP/s; the machine is shared, see README-conv.md)\n",
           tot_fl / tot_tb * 1e-9);
    /* A training step never needs the gradient of the input image: without the stem's backward-data pass. */
    const double train_fl = tot_fl - fl[0], train_t = tot_t - tm[0][1];
    printf("training step (no stem backward-data): %.1f GFLOP/s\n", train_fl / train_t * 1e-9);
    printf("BLIS sgemm 2048^3: %.1f GFLOP/s before, %.1f after\n", gemm0, gemm1);
    printf("ratio to BLIS sgemm 2048^3: %.2f (target >= 0.60)  largest workspace %.1f MiB\n", net / gemm,
           ws_max * 4.0 / 1048576.0);

    /* The GEMM path, both Winograds and the direct kernels on the 3x3x3 shapes, alternating, fastest of REPS calls
     * each: the comparison mn_conv3d_choose_algo makes once (MEDNET_CONV_ALGO=auto), with more repetitions. */
    printf("\nGEMM path / Winograd F(2,3) / F(4,3) / direct kernels, fastest of %d alternating calls, ms (- : cannot "
           "run the pass); best: the fastest (g, w, 4, x)\n", reps);
    printf("%-32s | %-23s %-23s %-23s | %s\n", "shape", "fwd g/w/4/x", "bwd-d g/w/4/x", "bwd-w g/w/4/x", "best");
    for (int i = 0; i < NSHAPES; i++) {
        const shape_spec *sp = &g_net[i];
        if (sp->transposed || sp->k != 3) continue;
        bench_layer L;
        if (layer_setup(&L, sp, 1)) return 1;
        double best[NALGO][3], cbest[NALGO][3];
        if (compare_algos(&L, reps, best, cbest)) return 1;
        char col[3][48], win[4] = "---";
        for (int p = 0; p < 3; p++) {
            algo_ms(best, p, col[p], sizeof col[p]);
            win[p] = fastest(best, p);
        }
        printf("%-32s | %-23s %-23s %-23s | %s\n", sp->name, col[0], col[1], col[2], win);
        layer_free(&L);
    }

    double tt[MAXSHAPES][3], tb[MAXSHAPES][3];
    char version[256];
    if (run_torch(threads, reps, tt, tb, version, sizeof version) == 0) {
        printf("\nPyTorch (%s, jemalloc), GFLOP/s and mednet/PyTorch time ratio (>1: mednet faster):\n", version);
        printf("%-32s | %8s %8s %8s | %6s %6s %6s\n", "shape", "fwd", "bwd-d", "bwd-w", "fwd", "bwd-d", "bwd-w");
        double tf[3] = {0}, tfb = 0;
        for (int i = 0; i < NSHAPES; i++) {
            printf("%-32s | %8.1f %8.1f %8.1f | %6.2f %6.2f %6.2f\n", g_net[i].name, fl[i] / tt[i][0] * 1e-9,
                   fl[i] / tt[i][1] * 1e-9, fl[i] / tt[i][2] * 1e-9, tt[i][0] / tm[i][0], tt[i][1] / tm[i][1],
                   tt[i][2] / tm[i][2]);
            for (int p = 0; p < 3; p++) {
                tf[p] += g_net[i].count * tt[i][p];
                tfb += g_net[i].count * tb[i][p];
            }
        }
        double ttot = tf[0] + tf[1] + tf[2];
        printf("\nPyTorch %s weighted: %.1f GFLOP/s (%.1f ms)  [fwd %.1f, bwd-data %.1f, bwd-weights %.1f]\n",
               g_net_name, tot_fl / ttot * 1e-9, ttot * 1e3, pf[0] / tf[0] * 1e-9, pf[1] / tf[1] * 1e-9,
               pf[2] / tf[2] * 1e-9);
        printf("mednet / PyTorch speed: %.2f (medians; fastest calls: PyTorch %.1f GFLOP/s, mednet/PyTorch %.2f)\n",
               ttot / tot_t, tot_fl / tfb * 1e-9, tfb / tot_tb);
        printf("training step (no stem backward-data): PyTorch %.1f GFLOP/s, mednet/PyTorch %.2f\n",
               train_fl / (ttot - tt[0][1]) * 1e-9, (ttot - tt[0][1]) / train_t);
    }
    return 0;
}
