/* blis_choose.c: choose BLIS's kernel set by measuring it (see mednet/threads.h).
 *
 * BLIS 0.9.0 fixes its kernel set once per process, at its first use, from the environment variable
 * BLIS_ARCH_TYPE (a number) or else from CPUID; the per-set contexts (bli_gks_lookup_nat_cntx) are not exported
 * by Debian's library, so one process cannot run two kernel sets.  We therefore measure each candidate in a child
 * process: the parent, which has not touched BLIS yet, starts its own executable again (/proc/self/exe) through
 * posix_spawn with MEDNET_BLIS_PROBE and BLIS_ARCH_TYPE set.  A constructor in this file sees MEDNET_BLIS_PROBE
 * before main runs (so MPI is never initialised in the child), times a few convolution-shaped sgemms with the
 * strides mednet's convolution uses, prints one line on stdout and leaves with _exit.  posix_spawn rather than
 * fork: it copies no address space, which matters in an MPI process with registered memory.
 *
 * A kernel set whose child crashes (SIGILL on a CPU that lacks its instructions, BLIS aborting on a set it was
 * not built with), times out or prints nothing is reported as unavailable and skipped; if no candidate can be
 * measured the caller keeps BLIS's own choice.  Candidates are BLIS's own choice ("auto") plus the sets the CPU
 * can run: skx with AVX-512 F/DQ/BW/VL, haswell and zen3 with AVX2+FMA (zen and zen2 run the same sgemm
 * micro-kernel as zen3 with the same block sizes; knl and the pre-AVX2 sets are never faster on a CPU that has
 * these).  MEDNET_BLIS_CANDIDATES=<name,name,...> replaces the list.
 *
 * Each probe runs on one thread and is timed in CPU time, not wall time: the machines mednet runs on are often
 * shared or oversubscribed (a login node, several ranks per node, other jobs), and CPU time compares the kernels
 * rather than the neighbours.  The micro-kernel and its block sizes decide the per-core rate; threads multiply it.
 *
 * The result is cached, one line per (CPU, BLIS version), in $XDG_CACHE_HOME/mednet/blis-kernels
 * (else $HOME/.cache/mednet/blis-kernels): a home directory shared by several node kinds keeps one line per
 * kind.  The file is rewritten atomically (temporary file + rename); an unreadable line is ignored and an
 * unwritable directory only means measuring again next time.
 */
#define _GNU_SOURCE /* environ, pipe2 */
#include "mednet/threads.h"

#include <blis.h>
#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define PROBE_TIMEOUT_S 120
#define CACHE_FORMAT "mednet-blis-kernels-1"

/* ---- the measurement (runs in the child) ----------------------------------------------------------------- */

/* Convolution shapes (input channels, output channels, output voxels): the first stage of resnet10/18 at 64^3
 * batch 1 and the second stage at 64^3 batch 2.  Each is timed in the three products of a 3x3x3 convolution with
 * the strides of src/nn/conv3d.c: forward Y(P x K) = col^T W^T, backward-data col(R x P) = W^T dY^T,
 * backward-weights dW^T(R x K) = col dY, with R = 27 C rows and P voxels. */
static const struct {
    int c, k, p;
} probe_shapes[] = {{64, 64, 4096}, {128, 128, 1024}};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* CPU time of this (single-threaded) process: unlike wall time it does not count the time other processes hold
 * the core, so the comparison survives a loaded machine. */
static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void sgemm(int m, int n, int k, const float *a, inc_t rsa, inc_t csa, const float *b, inc_t rsb,
                  inc_t csb, float *c, inc_t rsc, inc_t csc)
{
    float one = 1.0f, zero = 0.0f;
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &one, (float *)a, rsa, csa, (float *)b, rsb, csb,
              &zero, c, rsc, csc);
}

/* GFLOP/s of the probe products with the kernel set BLIS chose in this process, on one thread: the sum of each
 * product's FLOPs over the sum of its best CPU time of 3 (after one warm-up).  Returns -1 if memory is short. */
static double probe_rate(void)
{
    double flops = 0, secs = 0;
    for (size_t s = 0; s < sizeof probe_shapes / sizeof probe_shapes[0]; s++) {
        int C = probe_shapes[s].c, K = probe_shapes[s].k, P = probe_shapes[s].p, R = 27 * C;
        float *col = malloc((size_t)R * P * sizeof *col), *w = malloc((size_t)R * K * sizeof *w);
        float *y = malloc((size_t)P * K * sizeof *y);
        if (!col || !w || !y) return -1;
        for (size_t i = 0; i < (size_t)R * P; i++) col[i] = (float)((i * 7919u) % 1000u) * 1e-3f - 0.5f;
        for (size_t i = 0; i < (size_t)R * K; i++) w[i] = (float)((i * 104729u) % 1000u) * 1e-3f - 0.5f;
        for (size_t i = 0; i < (size_t)P * K; i++) y[i] = (float)((i * 31u) % 1000u) * 1e-3f - 0.5f;
        for (int pass = 0; pass < 3; pass++) {
            double best = 1e30;
            for (int rep = 0; rep < 4; rep++) {
                double t0 = cpu_s();
                if (pass == 0) /* forward: stage (P x K) = col^T (P x R) * W^T (R x K) */
                    sgemm(P, K, R, col, 1, P, w, 1, R, y, K, 1);
                else if (pass == 1) /* backward-data: col (R x P) = W^T (R x K) * dY^T (K x P) */
                    sgemm(R, P, K, w, 1, R, y, 1, K, col, P, 1);
                else /* backward-weights: dW^T (R x K) = col (R x P) * dY (P x K) */
                    sgemm(R, K, P, col, P, 1, y, K, 1, w, 1, R);
                double t = cpu_s() - t0;
                if (rep > 0 && t < best) best = t;
            }
            flops += 2.0 * R * K * P;
            secs += best;
        }
        free(col), free(w), free(y);
    }
    return flops / secs * 1e-9;
}

/* The child's entry point: runs before main when MEDNET_BLIS_PROBE=<name> is set, prints
 * "mednet-blis-probe <arch> <gflops>" and exits.  MEDNET_BLIS_PROBE_CRASH=<name> makes the probe of that set
 * abort instead (the test of the fall-back). */
__attribute__((constructor)) static void probe_main(void)
{
    const char *spec = getenv("MEDNET_BLIS_PROBE");
    if (!spec) return;
    const char *name = spec;
    const char *crash = getenv("MEDNET_BLIS_PROBE_CRASH");
    if (crash && strcmp(crash, name) == 0) abort();
    bli_init();
    bli_thread_set_num_threads(1);
    const char *arch = bli_arch_string(bli_arch_query_id());
    double rate = probe_rate();
    printf("mednet-blis-probe %s %.3f\n", arch, rate);
    fflush(stdout);
    _exit(rate > 0 ? 0 : 3);
}

/* ---- the parent: candidates, children, cache --------------------------------------------------------------- */

static int cpu_has_avx512(void)
{
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

static int cpu_has_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

int mn_blis_arch_id(const char *name)
{
    for (int id = 0; id < BLIS_NUM_ARCHS; id++) {
        const char *s = bli_arch_string((arch_t)id);
        if (s && strcmp(s, name) == 0) return id;
    }
    return -1;
}

const char *mn_blis_cpu_lacks(const char *name)
{
    if (strcmp(name, "skx") == 0 && !cpu_has_avx512()) return "AVX-512 (F, DQ, BW, VL)";
    if (strcmp(name, "knl") == 0 && !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512pf") &&
                                      __builtin_cpu_supports("avx512er")))
        return "AVX-512 PF/ER (Xeon Phi)";
    if ((strcmp(name, "haswell") == 0 || strncmp(name, "zen", 3) == 0) && !cpu_has_avx2()) return "AVX2 and FMA";
    return NULL;
}

void mn_blis_cpu_key(char *buf, size_t len)
{
    unsigned r[12] = {0}, a, b, c, d;
    char brand[49] = "";
    if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
        for (unsigned i = 0; i < 3; i++) __get_cpuid(0x80000002 + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
        memcpy(brand, r, 48);
        brand[48] = 0;
    }
    /* trim the padding some processors put around the brand string; a tab would break the cache line */
    char *s = brand;
    while (*s == ' ') s++;
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == ' ') s[--n] = 0;
    for (char *p = s; *p; p++)
        if (*p == '\t' || *p == '\n') *p = ' ';
    unsigned family = 0, model = 0, stepping = 0;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        family = (a >> 8) & 0xf;
        model = (a >> 4) & 0xf;
        stepping = a & 0xf;
        if (family == 0xf) family += (a >> 20) & 0xff;
        if (family == 0x6 || family >= 0xf) model |= ((a >> 16) & 0xf) << 4;
    }
    /* the feature flags are part of the key: a VM can hide AVX-512 on the same model */
    snprintf(buf, len, "%s (family 0x%x model 0x%x stepping %u, %s)", *s ? s : "unknown CPU", family, model,
             stepping, cpu_has_avx512() ? "AVX-512" : cpu_has_avx2() ? "AVX2" : "no AVX2");
}

/* Run one probe child for `name` ("auto": BLIS_ARCH_TYPE unset).  On success fills *rate and the arch BLIS
 * reported; otherwise writes why into `why` and returns -1. */
static int probe_one(const char *name, double *rate, char *arch, size_t archlen, char *why,
                     size_t whylen)
{
    int id = -1;
    if (strcmp(name, "auto") != 0) {
        id = mn_blis_arch_id(name);
        if (id < 0) return snprintf(why, whylen, "not a BLIS kernel set"), -1;
        const char *lacks = mn_blis_cpu_lacks(name);
        if (lacks) return snprintf(why, whylen, "CPU lacks %s", lacks), -1;
    }
    /* the child's environment: ours, minus the variables we set */
    size_t nenv = 0;
    while (environ[nenv]) nenv++;
    char **envp = calloc(nenv + 4, sizeof *envp);
    if (!envp) return snprintf(why, whylen, "out of memory"), -1;
    char e_probe[96], e_arch[40], e_omp[40];
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++)
        if (strncmp(environ[i], "BLIS_ARCH_TYPE=", 15) && strncmp(environ[i], "MEDNET_BLIS_PROBE=", 18) &&
            strncmp(environ[i], "OMP_NUM_THREADS=", 16) && strncmp(environ[i], "BLIS_NUM_THREADS=", 17))
            envp[k++] = environ[i];
    snprintf(e_probe, sizeof e_probe, "MEDNET_BLIS_PROBE=%s", name);
    snprintf(e_omp, sizeof e_omp, "OMP_NUM_THREADS=1");
    envp[k++] = e_probe;
    envp[k++] = e_omp;
    if (id >= 0) {
        snprintf(e_arch, sizeof e_arch, "BLIS_ARCH_TYPE=%d", id);
        envp[k++] = e_arch;
    }
    envp[k] = NULL;

    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        free(envp);
        return snprintf(why, whylen, "pipe: %s", strerror(errno)), -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    char *argv[] = {"mednet-blis-probe", NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    free(envp);
    close(pfd[1]);
    if (rc != 0) {
        close(pfd[0]);
        return snprintf(why, whylen, "cannot start /proc/self/exe: %s", strerror(rc)), -1;
    }
    /* read the child's line, with a time limit (a child that hangs is killed: it is ours) */
    char out[256];
    size_t got = 0;
    double t0 = now_s();
    int timed_out = 0;
    for (;;) {
        struct pollfd p = {pfd[0], POLLIN, 0};
        int left = (int)((PROBE_TIMEOUT_S - (now_s() - t0)) * 1000);
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        int pr = poll(&p, 1, left);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) continue;
        ssize_t r = read(pfd[0], out + got, sizeof out - 1 - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
        if (got == sizeof out - 1) break;
    }
    out[got] = 0;
    close(pfd[0]);
    if (timed_out) kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (timed_out) return snprintf(why, whylen, "no result within %d s", PROBE_TIMEOUT_S), -1;
    if (WIFSIGNALED(status))
        return snprintf(why, whylen, "probe died with signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status))),
               -1;
    char a[32];
    double g = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || sscanf(out, "mednet-blis-probe %31s %lf", a, &g) != 2 ||
        !(g > 0))
        return snprintf(why, whylen, "probe failed (exit status %d)", WIFEXITED(status) ? WEXITSTATUS(status) : -1),
               -1;
    if (id >= 0 && strcmp(a, name) != 0) return snprintf(why, whylen, "BLIS ran %s instead", a), -1;
    snprintf(arch, archlen, "%s", a);
    *rate = g;
    return 0;
}

static void cache_path(char *buf, size_t len, char *dir, size_t dirlen)
{
    const char *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    if (x && *x == '/')
        snprintf(dir, dirlen, "%s/mednet", x);
    else if (h && *h)
        snprintf(dir, dirlen, "%s/.cache/mednet", h);
    else
        dir[0] = 0;
    if (dir[0])
        snprintf(buf, len, "%s/blis-kernels", dir);
    else
        buf[0] = 0;
}

/* The cache key: CPU and BLIS version (tab-separated fields of a cache line). */
static void cache_key(char *buf, size_t len)
{
    char cpu[200];
    mn_blis_cpu_key(cpu, sizeof cpu);
    snprintf(buf, len, CACHE_FORMAT "\t%s\tblis %s\t", cpu, bli_info_get_version_str());
}

/* Look our key up: fills the choice from the cached line (chosen set, rates text) and returns 0, or -1. */
static int cache_read(const char *path, const char *key, mn_blis_choice *ch)
{
    FILE *f = path[0] ? fopen(path, "r") : NULL;
    if (!f) return -1;
    char line[1024];
    int found = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) != 0) continue;
        char *rest = line + kl, *tab = strchr(rest, '\t');
        if (!tab) continue;
        *tab = 0;
        char *rates = tab + 1;
        rates[strcspn(rates, "\n")] = 0;
        if (mn_blis_arch_id(rest) < 0 || mn_blis_cpu_lacks(rest)) continue; /* stale: measure again */
        snprintf(ch->name, sizeof ch->name, "%s", rest);
        snprintf(ch->rates, sizeof ch->rates, "%s", rates);
        found = 0;
    }
    fclose(f);
    return found;
}

/* Replace or add our line, atomically.  Returns 0 or -1 with `why` set. */
static int cache_write(const char *dir, const char *path, const char *key, const mn_blis_choice *ch, char *why,
                       size_t whylen)
{
    if (!path[0]) return snprintf(why, whylen, "neither XDG_CACHE_HOME nor HOME is set"), -1;
    char parent[600];
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        mkdir(parent, 0755); /* $HOME/.cache may not exist yet; failure shows at the next step */
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return snprintf(why, whylen, "%.600s: %s", dir, strerror(errno)), -1;
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    FILE *out = fopen(tmp, "w");
    if (!out) return snprintf(why, whylen, "%.600s: %s", tmp, strerror(errno)), -1;
    FILE *in = fopen(path, "r");
    char line[1024];
    size_t kl = strlen(key);
    while (in && fgets(line, sizeof line, in))
        if (strncmp(line, CACHE_FORMAT "\t", strlen(CACHE_FORMAT) + 1) == 0 && strncmp(line, key, kl) != 0 &&
            strchr(line, '\n'))
            fputs(line, out);
    if (in) fclose(in);
    fprintf(out, "%s%s\t%s\n", key, ch->name, ch->rates);
    int bad = ferror(out);
    bad |= fclose(out) != 0;
    if (bad || rename(tmp, path) != 0) {
        snprintf(why, whylen, "%.600s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

void mn_blis_choose(mn_blis_choice *ch)
{
    memset(ch, 0, sizeof *ch);
    char dir[512], path[600], key[400];
    cache_path(path, sizeof path, dir, sizeof dir);
    cache_key(key, sizeof key);
    const char *cand_env = getenv("MEDNET_BLIS_CANDIDATES");
    int use_cache = !(cand_env && *cand_env); /* a hand-picked list is measured, never cached */
    if (use_cache && cache_read(path, key, ch) == 0) {
        snprintf(ch->source, sizeof ch->source, "cached in %s", path);
        return;
    }

    /* the candidates */
    char list[256];
    if (cand_env && *cand_env)
        snprintf(list, sizeof list, "%s", cand_env);
    else
        snprintf(list, sizeof list, "auto%s%s", cpu_has_avx512() ? ",skx" : "", cpu_has_avx2() ? ",haswell,zen3" : "");

    double best = 0;
    size_t used = 0;
    char *save = NULL;
    for (char *name = strtok_r(list, ", ", &save); name; name = strtok_r(NULL, ", ", &save)) {
        double rate = 0;
        char arch[32], why[160];
        int ok = probe_one(name, &rate, arch, sizeof arch, why, sizeof why) == 0;
        int n;
        if (ok && strcmp(name, "auto") == 0)
            n = snprintf(ch->rates + used, sizeof ch->rates - used, "%sauto=%s %.0f", used ? ", " : "", arch, rate);
        else if (ok)
            n = snprintf(ch->rates + used, sizeof ch->rates - used, "%s%s %.0f", used ? ", " : "", arch, rate);
        else
            n = snprintf(ch->rates + used, sizeof ch->rates - used, "%s%s unavailable (%s)", used ? ", " : "", name,
                         why);
        if (n > 0) used = used + (size_t)n < sizeof ch->rates ? used + (size_t)n : sizeof ch->rates - 1;
        /* the first of equal rates wins, and "auto" comes first: BLIS's own choice is kept unless beaten */
        if (ok && rate > best) {
            best = rate;
            snprintf(ch->name, sizeof ch->name, "%s", arch);
        }
    }
    if (!ch->name[0]) {
        snprintf(ch->source, sizeof ch->source, "no kernel set could be measured");
        return;
    }
    snprintf(ch->rates + used, sizeof ch->rates - used, " GFLOP/s");
    ch->measured = 1;
    char why[700];
    if (!use_cache)
        snprintf(ch->source, sizeof ch->source, "measured now (MEDNET_BLIS_CANDIDATES set: not cached)");
    else if (cache_write(dir, path, key, ch, why, sizeof why) == 0)
        snprintf(ch->source, sizeof ch->source, "measured now, cached in %s", path);
    else
        snprintf(ch->source, sizeof ch->source, "measured now, not cached (%.200s)", why);
}
