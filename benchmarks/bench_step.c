/* bench_step: one full MedicalNet training step (forward, loss, backward, SGD update) in mednet next to the same
 * step in PyTorch (benchmarks/torch_step.py), measured in the same run.
 *
 *   bench_step [--threads T] [--steps S] [--repeat R] [--quick] [--config D,S,B]... [--breakdown] [--vs-algo A]
 *                           (S: a cube edge, or DxHxW, e.g. --config 10,56x448x448,1: MedicalNet's native input)
 *                           the table: resnet10/18/50 at 1x64^3 batch 2 and at 1x112^3 batch 1 and 2
 *                           (--quick: 64^3 only; --config depth,size,batch replaces the list); mednet and
 *                           PyTorch alternate R times (default 2), best median kept
 *   bench_step --one DEPTH SIZE BATCH [--threads T] ...     one configuration (used by the table driver)
 *
 * --as-avx2 runs both sides as they would run on a CPU whose widest vectors are AVX2 (most AMD EPYC before Zen 4,
 * Intel before Skylake-SP): mednet's own kernels with MEDNET_ISA=avx2 and BLIS's haswell kernels, PyTorch with
 * ONEDNN_MAX_CPU_ISA=AVX2 and ATEN_CPU_CAPABILITY=avx2.  Caches, clock and the element-wise loops (compiled per
 * instruction set, picked by the CPU at load time) stay this machine's.
 *
 * --vs-algo A adds a second mednet run per repetition with MEDNET_CONV_ALGO=A (gemm, winograd, direct, auto, rule),
 * alternating with the default run (MEDNET_CONV_ALGO as in the environment, unset = the rule) and PyTorch, and
 * prints its step time, peak memory and ratios in extra columns.  Every time is also given as CPU time (process
 * CPU seconds per step, all threads, median over the timed steps), which a loaded machine disturbs less than
 * wall time; the header gives the load average at start and end.
 *
 * --breakdown adds, under each row, the convolution plan (mn_model_conv_plan) and mednet's step split by layer type (encoder conv forward / backward-data /
 * backward-weights, batch norm, ReLU, pooling, the head, the loss, the SGD update, the rest) as the mean over the
 * timed steps of the best run (mednet/prof.h), and the minor page faults per step.
 *
 * Each configuration runs in its own process (mednet, then PyTorch) so that the peak resident memory (VmHWM /
 * ru_maxrss) belongs to that configuration alone.  The mednet child exports its seeded weights and the input to
 * safetensors first; PyTorch loads them, so both start from identical weights, and the first-step losses are
 * compared before any timing is reported (validation, as in llm.c's dev/ benchmarks).  Step time is the median of
 * S steps after one warm-up step; conv GFLOP/s counts dense convolution FLOPs (forward + backward-data +
 * backward-weights = 3x forward, padded taps of dilated stages included).  PyTorch runs with jemalloc preloaded
 * when available (measured 1.5-2.5x faster with it on these CPU-only runs) and torch.set_num_threads(T).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include "mednet/mem.h"
#include "mednet/model.h"
#include "mednet/optim.h"
#include "mednet/prof.h"
#include "mednet/safetensors.h"
#include "mednet/threads.h"

#ifndef MN_PYTHON
#define MN_PYTHON "/usr/bin/python3"
#endif

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void loadavg(double l[3])
{
    l[0] = l[1] = l[2] = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f) return;
    if (fscanf(f, "%lf %lf %lf", &l[0], &l[1], &l[2]) != 3) l[0] = l[1] = l[2] = -1;
    fclose(f);
}

static long minor_faults(void)
{
    struct rusage u;
    return getrusage(RUSAGE_SELF, &u) == 0 ? u.ru_minflt : 0;
}

/* One configuration in this process; prints "RESULT step_s gflops peak_mib loss0 step_cpu_s", and with `breakdown`
 * "PLAN line" lines (the convolution plan), one "BREAKDOWN kind seconds_per_step" line per kind and
 * "FAULTS mean fewest most" (minor page faults per timed step) before it. */
static int run_one(int depth, const int sz[3], int batch, int steps, const char *dir, int breakdown)
{
    mn_head_spec head = {0, 2};
    mn_model_config c = mn_model_config_default();
    c.depth = depth;
    c.nheads = 1;
    c.heads = &head;
    c.input = (mn_shape){batch, 1, sz[0], sz[1], sz[2]};
    c.seed = 7;
    mn_model *m = NULL;
    if (mn_model_create(&c, &m) != MN_OK) return 1;
    size_t vox = (size_t)sz[0] * sz[1] * sz[2], nx = (size_t)batch * vox;
    float *x = NULL;
    int32_t *lab = NULL;
    if (mn_malloc(nx * sizeof *x, "input", (void **)&x) || mn_malloc(nx * sizeof *lab, "labels", (void **)&lab))
        return 1;
    uint64_t s = 12345;
    for (size_t i = 0; i < nx; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        lab[i] = (int32_t)((s >> 3) & 1);
    }
    char wp[512], ip[512];
    snprintf(wp, sizeof wp, "%s/w.safetensors", dir);
    snprintf(ip, sizeof ip, "%s/in.safetensors", dir);
    mn_st_entry e[2] = {{"x", MN_ST_F32, 5, {batch, 1, sz[0], sz[1], sz[2]}, x},
                        {"labels", MN_ST_I32, 4, {batch, sz[0], sz[1], sz[2]}, lab}};
    if (mn_model_save_safetensors(m, wp, -2) || mn_st_write(ip, e, 2, NULL, NULL, 0)) return 1;

    mn_head_batch hb = {0, 0, batch};
    float *P = mn_model_params(m);
    const float *G = mn_model_grads(m);
    size_t np = mn_model_num_params(m);
    /* The update is mednet's own optimiser (plain SGD, as torch.optim.SGD(lr=1e-3) on the PyTorch side). */
    mn_optim_config oc = mn_optim_defaults();
    oc.lr = 1e-3;
    oc.momentum = 0.0;
    oc.weight_decay = 0.0;
    oc.schedule = MN_SCHED_CONSTANT;
    mn_optim *opt = NULL;
    if (mn_optim_create(&oc, np, &opt) != MN_OK) return 1;
    double *t = calloc((size_t)steps + 1, sizeof *t), *tc = calloc((size_t)steps + 1, sizeof *tc), loss0 = 0;
    if (!t || !tc) return 1;
    long faults0 = 0, fmin = -1, fmax = 0;
    for (int k = 0; k <= steps; k++) {
        if (k == 1) { /* after the warm-up step: the steady state */
            mn_prof_enable(breakdown);
            faults0 = minor_faults();
        }
        const long fk = minor_faults();
        double t0 = now(), c0 = cpu_now(), loss = 0;
        if (mn_model_forward(m, x, &hb, 1) || mn_model_loss(m, 0, lab, 1.0f, &loss) || mn_model_zero_grad(m) ||
            mn_model_backward(m))
            return 1;
        mn_prof_push(MN_PROF_OPTIM);
        if (mn_optim_update(opt, P, G, 0, np, oc.lr, k + 1)) return 1;
        mn_prof_pop();
        t[k] = now() - t0;
        tc[k] = cpu_now() - c0;
        if (k >= 1) {
            const long df = minor_faults() - fk;
            if (fmin < 0 || df < fmin) fmin = df;
            if (df > fmax) fmax = df;
        }
        if (k == 0) loss0 = loss;
    }
    const long faults = minor_faults() - faults0;
    if (breakdown) {
        char plan[8192];
        mn_model_conv_plan(m, plan, sizeof plan);
        for (char *line = strtok(plan, "\n"); line; line = strtok(NULL, "\n")) printf("PLAN %s\n", line);
        printf("FAULTS %.1f %ld %ld\n", (double)faults / steps, fmin, fmax);
        for (int k = 0; k < MN_PROF_NKINDS; k++)
            printf("BREAKDOWN %s|%.6f\n", mn_prof_name((mn_prof_kind)k), mn_prof_seconds((mn_prof_kind)k) / steps);
    }
    qsort(t + 1, (size_t)steps, sizeof *t, cmp_double);
    qsort(tc + 1, (size_t)steps, sizeof *tc, cmp_double);
    double med = t[1 + steps / 2];
    double gflops = 3.0 * mn_model_forward_flops(m, &hb, 1) / med / 1e9;
    printf("RESULT %.6f %.3f %.1f %.8f %.6f\n", med, gflops, (double)mn_mem_peak_rss() / 1048576.0, loss0,
           tc[1 + steps / 2]);
    free(t);
    free(tc);
    mn_free(&x);
    mn_free(&lab);
    mn_optim_destroy(&opt);
    mn_model_destroy(&m);
    return 0;
}

/* Run a command and parse its RESULT line into v[0..4]; 0 on success.  PLAN, FAULTS and BREAKDOWN lines are kept
 * in `extra` (may be NULL). */
static int run_child(const char *cmd, double v[5], char *extra, size_t extra_len)
{
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[512];
    int found = 0;
    if (extra) extra[0] = 0;
    while (fgets(line, sizeof line, p))
        if (!strncmp(line, "RESULT ", 7) &&
            sscanf(line + 7, "%lf %lf %lf %lf %lf", &v[0], &v[1], &v[2], &v[3], &v[4]) == 5)
            found = 1;
        else if (extra && (!strncmp(line, "BREAKDOWN ", 10) || !strncmp(line, "FAULTS ", 7) ||
                           !strncmp(line, "PLAN ", 5)))
            strncat(extra, line, extra_len - strlen(extra) - 1);
        else
            fputs(line, stderr);
    int rc = pclose(p);
    return (rc == 0 && found) ? 0 : -1;
}

/* Print the breakdown lines of a mednet child as "  conv fwd 0.123 s (31%)" rows, then the minor faults. */
static void print_breakdown(const char *extra, double step)
{
    const char *p = extra;
    double faults = -1, fmin = -1, fmax = -1, sum = 0;
    for (const char *q = extra; q && *q;) { /* the plan first */
        const char *nl = strchr(q, '\n');
        const int n = nl ? (int)(nl - q) : (int)strlen(q);
        if (!strncmp(q, "PLAN ", 5)) printf("    conv plan: %.*s\n", n - 5, q + 5);
        q = nl ? nl + 1 : NULL;
    }
    printf("    step breakdown (mean per step of the best run; median step %.3f s):", step);
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        char line[256];
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        snprintf(line, sizeof line, "%.*s", (int)(n < 255 ? n : 255), p);
        double sec;
        char *bar = strchr(line, '|');
        if (!strncmp(line, "FAULTS ", 7) && sscanf(line + 7, "%lf %lf %lf", &faults, &fmin, &fmax) < 1)
            faults = -1;
        else if (!strncmp(line, "BREAKDOWN ", 10) && bar && (sec = atof(bar + 1)) > 0) {
            *bar = 0;
            printf(" %s %.3f s (%.0f%%),", line + 10, sec, 100.0 * sec / step);
            sum += sec;
        }
        p = nl ? nl + 1 : NULL;
    }
    /* A timed step can still fault in BLIS pool blocks or GEMM scratch that an OpenMP thread meets for the first
     * time (which thread takes which batched product varies), once; the minimum is the steady state. */
    printf(" sum %.3f s; minor page faults per step: %.0f (fewest %.0f, most %.0f)\n", sum, faults, fmin, fmax);
}

/* "S" (a cube) or "DxHxW" into sz; 0 on success. */
static int parse_size(const char *s, int sz[3])
{
    char tail;
    if (sscanf(s, "%dx%dx%d%c", &sz[0], &sz[1], &sz[2], &tail) == 3) return sz[0] < 1 || sz[1] < 1 || sz[2] < 1;
    if (sscanf(s, "%d%c", &sz[0], &tail) != 1 || sz[0] < 1) return 1;
    sz[1] = sz[2] = sz[0];
    return 0;
}

int main(int argc, char **argv)
{
    int threads = 2, steps = 5, quick = 0, one = 0, depth = 10, sz[3] = {64, 64, 64}, batch = 2, repeat = 2,
        breakdown = 0, as_avx2 = 0;
    /* depth, D, H, W, batch */
    int cfg[16][5] = {{10, 64, 64, 64, 2},    {18, 64, 64, 64, 2},    {50, 64, 64, 64, 2},   {10, 112, 112, 112, 1},
                      {18, 112, 112, 112, 1}, {50, 112, 112, 112, 1}, {10, 112, 112, 112, 2}, {18, 112, 112, 112, 2},
                      {50, 112, 112, 112, 2}};
    int ncfg = 9, user_cfg = 0;
    const char *dir_arg = NULL, *vs_algo = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
            repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--breakdown"))
            breakdown = 1;
        else if (!strcmp(argv[i], "--vs-algo") && i + 1 < argc)
            vs_algo = argv[++i];
        else if (!strcmp(argv[i], "--config") && i + 1 < argc && user_cfg < 16) {
            char sizes[64];
            int *c = cfg[user_cfg];
            if (sscanf(argv[++i], "%d,%63[0-9x],%d", &c[0], sizes, &c[4]) != 3 || parse_size(sizes, c + 1)) {
                fprintf(stderr, "bench_step: --config '%s': expected DEPTH,SIZE,BATCH (SIZE: S or DxHxW)\n", argv[i]);
                return 2;
            }
            ncfg = ++user_cfg;
        }
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir_arg = argv[++i];
        else if (!strcmp(argv[i], "--as-avx2"))
            as_avx2 = 1;
        else if (!strcmp(argv[i], "--one") && i + 3 < argc) {
            one = 1;
            depth = atoi(argv[++i]);
            if (parse_size(argv[++i], sz)) return 2;
            batch = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: bench_step [--threads T] [--steps S] [--repeat R] [--quick] [--config D,S,B]... "
                            "[--breakdown] [--vs-algo gemm|winograd|direct|auto|rule] [--as-avx2] | --one DEPTH SIZE "
                            "BATCH --dir D [--breakdown]\n");
            return 2;
        }
    }
    if (steps < 1 || threads < 1 || repeat < 1) return 2;
    /* Both sides as on a CPU whose widest vectors are AVX2 (the children inherit the environment). */
    if (as_avx2 && (setenv("MEDNET_ISA", "avx2", 1) || setenv("MEDNET_BLIS_ARCH", "haswell", 1) ||
                    setenv("ONEDNN_MAX_CPU_ISA", "AVX2", 1) || setenv("ATEN_CPU_CAPABILITY", "avx2", 1)))
        return 1;
    if (vs_algo && strcmp(vs_algo, "gemm") && strcmp(vs_algo, "winograd") && strcmp(vs_algo, "direct") &&
        strcmp(vs_algo, "auto") && strcmp(vs_algo, "rule")) {
        fprintf(stderr, "bench_step: --vs-algo '%s': expected gemm, winograd, direct, auto or rule\n", vs_algo);
        return 2;
    }
    if (mn_threads_init(threads) != MN_OK) return 1;
    if (one) return run_one(depth, sz, batch, steps, dir_arg ? dir_arg : "/tmp", breakdown);

    char dir[] = "/tmp/mn_bench_step_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char self[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 1;
    self[n] = '\0';
    /* torch_step.py sits next to this source file (CMake compiles it by absolute path). */
    char script[1024];
    snprintf(script, sizeof script, "%s", __FILE__);
    char *slash = strrchr(script, '/');
    snprintf(slash ? slash + 1 : script, sizeof script - (size_t)(slash ? slash + 1 - script : 0), "torch_step.py");
    const char *jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    char pre[256] = "";
    if (access(jemalloc, R_OK) == 0)
        snprintf(pre, sizeof pre, "LD_PRELOAD=%s MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 ", jemalloc);

    if (quick && !user_cfg) ncfg = 3;
    int bad = 0;
    printf("training step (forward + loss + backward + SGD), conv_seg head, 2 classes, %d thread(s), BLIS %s, "
           "median of %d steps after 1 warm-up, best of %d alternating runs%s\n",
           threads, mn_blis_arch(), steps, repeat, pre[0] ? "; PyTorch with jemalloc" : "");
    char cpu[256];
    mn_blis_cpu_key(cpu, sizeof cpu);
    printf("CPU: %s\nBLIS kernels: %s (%s)\nmednet convolution kernels: %s\n", cpu, mn_blis_arch(),
           mn_blis_arch_reason(), mn_simd_kernels());
    if (as_avx2) printf("--as-avx2: PyTorch with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2\n");
    const char *algo_env = getenv("MEDNET_CONV_ALGO");
    printf("convolution algorithm: MEDNET_CONV_ALGO=%s%s%s\n", algo_env && *algo_env ? algo_env : "(unset: rule)",
           vs_algo ? "; second mednet column: MEDNET_CONV_ALGO=" : "", vs_algo ? vs_algo : "");
    double la[3];
    loadavg(la);
    printf("load average at start: %.2f %.2f %.2f\n", la[0], la[1], la[2]);
    printf("%-10s %-14s | %16s %8s %9s |", "model", "input", "mednet s (cpu)", "GFLOP/s", "peak MiB");
    if (vs_algo) printf(" %16s %9s |", "mednet-A s (cpu)", "peak MiB");
    printf(" %16s %9s | %13s %7s |", "torch s (cpu)", "peak MiB", "speedup (cpu)", "mem");
    if (vs_algo) printf(" %13s %7s |", "A: spd (cpu)", "A: mem");
    printf(" %s\n", "first-step loss (mednet / torch)");
    for (int i = 0; i < ncfg; i++) {
        /* mednet and PyTorch alternate R times; each side keeps its best median (the machine is shared, and the
         * minimum is the estimate least disturbed by other processes). */
        double a[5] = {0}, b[5] = {0}, v[5] = {0};
        static char extra[16384], rextra[16384];
        extra[0] = 0;
        int fail = 0;
        for (int rep = 0; rep < repeat && !fail; rep++) {
            char cmd[2048];
            double ra[5] = {0}, rb[5] = {0}, rv[5] = {0};
            snprintf(cmd, sizeof cmd, "%s --one %d %dx%dx%d %d --threads %d --steps %d --dir %s%s", self, cfg[i][0],
                     cfg[i][1], cfg[i][2], cfg[i][3], cfg[i][4], threads, steps, dir, breakdown ? " --breakdown" : "");
            if (run_child(cmd, ra, rextra, sizeof rextra)) {
                fprintf(stderr, "mednet run failed: %s\n", cmd);
                fail = 1;
                break;
            }
            if (vs_algo) {
                snprintf(cmd, sizeof cmd,
                         "MEDNET_CONV_ALGO=%s %s --one %d %dx%dx%d %d --threads %d --steps %d --dir %s", vs_algo,
                         self, cfg[i][0], cfg[i][1], cfg[i][2], cfg[i][3], cfg[i][4], threads, steps, dir);
                if (run_child(cmd, rv, NULL, 0)) {
                    fprintf(stderr, "mednet run failed: %s\n", cmd);
                    fail = 1;
                    break;
                }
                if (rep == 0 || rv[0] < v[0]) memcpy(v, rv, sizeof v);
            }
            snprintf(cmd, sizeof cmd,
                     "%s%s %s --depth %d --weights %s/w.safetensors --inputs %s/in.safetensors --threads %d --steps %d",
                     pre, MN_PYTHON, script, cfg[i][0], dir, dir, threads, steps);
            if (run_child(cmd, rb, NULL, 0)) {
                fprintf(stderr, "PyTorch run failed: %s\n", cmd);
                fail = 1;
                break;
            }
            if (rep == 0 || ra[0] < a[0]) {
                memcpy(a, ra, sizeof a);
                memcpy(extra, rextra, sizeof extra);
            }
            if (rep == 0 || rb[0] < b[0]) memcpy(b, rb, sizeof b);
        }
        if (fail) {
            bad = 1;
            continue;
        }
        double rel = fabs(a[3] - b[3]) / fabs(b[3]);
        int valid = rel < 1e-3 && (!vs_algo || fabs(v[3] - b[3]) / fabs(b[3]) < 1e-3);
        if (!valid) bad = 1;
        char in[32];
        if (cfg[i][1] == cfg[i][2] && cfg[i][2] == cfg[i][3])
            snprintf(in, sizeof in, "%dx1x%d^3", cfg[i][4], cfg[i][1]);
        else
            snprintf(in, sizeof in, "%dx1x%dx%dx%d", cfg[i][4], cfg[i][1], cfg[i][2], cfg[i][3]);
        char ta[32], tb[32], tv[32], sa[32], sv[32];
        snprintf(ta, sizeof ta, "%.3f (%.3f)", a[0], a[4]);
        snprintf(tb, sizeof tb, "%.3f (%.3f)", b[0], b[4]);
        snprintf(tv, sizeof tv, "%.3f (%.3f)", v[0], v[4]);
        snprintf(sa, sizeof sa, "%.2fx (%.2fx)", b[0] / a[0], b[4] / a[4]);
        snprintf(sv, sizeof sv, "%.2fx (%.2fx)", b[0] / v[0], b[4] / v[4]);
        printf("resnet%-4d %-14s | %16s %8.1f %9.0f |", cfg[i][0], in, ta, a[1], a[2]);
        if (vs_algo) printf(" %16s %9.0f |", tv, v[2]);
        printf(" %16s %9.0f | %13s %6.2fx |", tb, b[2], sa, a[2] / b[2]);
        if (vs_algo) printf(" %13s %6.2fx |", sv, v[2] / b[2]);
        printf(" %.6f / %.6f %s\n", a[3], b[3], valid ? "(match)" : "(MISMATCH)");
        if (breakdown) print_breakdown(extra, a[0]);
        fflush(stdout);
    }
    loadavg(la);
    printf("load average at end: %.2f %.2f %.2f\n", la[0], la[1], la[2]);
    printf("speedup = torch time / mednet time (> 1: mednet faster; wall, CPU in parentheses); mem = mednet peak / "
           "torch peak (< 1: less)\n");
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return bad;
}
