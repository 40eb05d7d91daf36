/* test_ckpt.c: HDF5 checkpoints (src/io/ckpt.c) on 1..4 ranks.
 *
 * Rank 0 writes, every rank reads back.  Checks: a round trip is bit-exact for float32 (NaN payloads and
 * denormals included), uint64 and int64 arrays, nested names, an empty array, and string attributes up to 100 KiB;
 * `latest` names the newest file and only the `keep` newest remain; a writer SIGKILLed in the middle of a write
 * leaves the previous checkpoint loadable and `latest` unchanged, and the next write clears the leftovers; wrong
 * type, length or name, a damaged (bit-flipped) array, a truncated file and a dangling `latest` are all rejected
 * with a message naming the file.
 */
#include "mednet/ckpt.h"
#include "mednet/mem.h"
#include "mednet/mpicheck.h"
#include "test_util.h"

#include <dirent.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int rank, size;

enum { NP = 100003, NOPT = 2 * NP, NBN = 64, NRNG = 8 };
static float params[NP], opt[NOPT], bn[NBN], head0[77];
static uint64_t rng[NRNG];
static int64_t counters[3];
static char big_config[100 * 1024];

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int file_exists(const char *dir, const char *name)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static void fill(int64_t step)
{
    mn_test_rng r = {0xC0FFEEULL + (uint64_t)step};
    mn_test_fill(&r, params, NP, 1.0f);
    mn_test_fill(&r, opt, NOPT, 0.1f);
    mn_test_fill(&r, bn, NBN, 2.0f);
    mn_test_fill(&r, head0, 77, 1.0f);
    /* Bit patterns a text or double round trip would lose: a NaN payload, a denormal, -0. */
    uint32_t nan_payload = 0x7fc12345u, denorm = 0x00000123u, negzero = 0x80000000u;
    memcpy(&params[5], &nan_payload, 4);
    memcpy(&params[6], &denorm, 4);
    memcpy(&params[7], &negzero, 4);
    for (int i = 0; i < NRNG; i++) rng[i] = mn_test_rng_u64(&r);
    counters[0] = step;
    counters[1] = -1;
    counters[2] = INT64_MAX;
}

#define NARR 8
static void arrays(mn_ckpt_array *a, float *p, float *o, float *b, float *h, uint64_t *g, int64_t *c)
{
    a[0] = (mn_ckpt_array){"encoder/params", MN_CKPT_F32, p, NP};
    a[1] = (mn_ckpt_array){"optim/momentum", MN_CKPT_F32, o, NOPT};
    a[2] = (mn_ckpt_array){"encoder/bn_running", MN_CKPT_F32, b, NBN};
    a[3] = (mn_ckpt_array){"heads/0/params", MN_CKPT_F32, h, 77};
    a[4] = (mn_ckpt_array){"rng", MN_CKPT_U64, g, NRNG};
    a[5] = (mn_ckpt_array){"counters", MN_CKPT_I64, c, 3};
    a[6] = (mn_ckpt_array){"empty", MN_CKPT_F32, p, 0};
    a[7] = (mn_ckpt_array){"heads/1/params", MN_CKPT_F32, h, 0};
}

static mn_err write_step(const char *dir, int64_t step, int keep)
{
    fill(step);
    mn_ckpt_array a[NARR];
    arrays(a, params, opt, bn, head0, rng, counters);
    char pstr[16];
    snprintf(pstr, sizeof pstr, "%d", size);
    mn_ckpt_attr at[3] = {{"config", big_config}, {"corpus_checksum", "xxh64:0123456789abcdef"}, {"P", pstr}};
    char path[4096];
    mn_err e = mn_ckpt_write(dir, step, a, NARR, at, 3, keep, path, sizeof path);
    if (e == MN_OK) {
        char want[4096];
        snprintf(want, sizeof want, "%s/ckpt-%lld.h5", dir, (long long)step);
        TEST_EXPECT(!strcmp(path, want), "write returned path '%s', expected '%s'", path, want);
    }
    return e;
}

/* Load `latest` of dir and compare every array bit for bit with fill(step). */
static void check_latest(const char *dir, int64_t step)
{
    char path[4096];
    int found = 0;
    TEST_EXPECT(mn_ckpt_latest(dir, path, sizeof path, &found) == MN_OK && found, "no latest checkpoint in %s", dir);
    if (!found) return;
    char want[4096];
    snprintf(want, sizeof want, "%s/ckpt-%lld.h5", dir, (long long)step);
    TEST_EXPECT(!strcmp(path, want), "latest is '%s', expected '%s'", path, want);
    mn_ckpt *c = NULL;
    TEST_EXPECT(mn_ckpt_open(path, &c) == MN_OK, "cannot open %s", path);
    if (!c) return;
    TEST_EXPECT(mn_ckpt_step(c) == step, "step %lld, expected %lld", (long long)mn_ckpt_step(c), (long long)step);
    static float p[NP], o[NOPT], b[NBN], h[77];
    uint64_t g[NRNG];
    int64_t cn[3];
    mn_ckpt_array a[NARR];
    arrays(a, p, o, b, h, g, cn);
    TEST_EXPECT(mn_ckpt_read(c, a, NARR) == MN_OK, "read of %s failed", path);
    fill(step);
    TEST_EXPECT(!memcmp(p, params, sizeof p) && !memcmp(o, opt, sizeof o) && !memcmp(b, bn, sizeof b) &&
                    !memcmp(h, head0, sizeof h) && !memcmp(g, rng, sizeof g) && !memcmp(cn, counters, sizeof cn),
                "step %lld: arrays differ after the round trip", (long long)step);
    int ex = 0;
    mn_ckpt_type t;
    size_t n = 0;
    TEST_EXPECT(mn_ckpt_info(c, "optim/momentum", &ex, &t, &n) == MN_OK && ex && t == MN_CKPT_F32 && n == NOPT,
                "info of optim/momentum wrong");
    TEST_EXPECT(mn_ckpt_info(c, "no/such/array", &ex, NULL, NULL) == MN_OK && !ex, "missing array reported present");
    char *v = NULL;
    TEST_EXPECT(mn_ckpt_attr_get(c, "config", &v) == MN_OK && v && !strcmp(v, big_config), "config attr differs");
    mn_free(&v);
    char pstr[16];
    snprintf(pstr, sizeof pstr, "%d", size);
    TEST_EXPECT(mn_ckpt_attr_get(c, "P", &v) == MN_OK && v && !strcmp(v, pstr), "P attr differs");
    mn_free(&v);
    TEST_EXPECT(mn_ckpt_attr_get(c, "mednet_version", &v) == MN_OK && v && !strcmp(v, MN_VERSION),
                "mednet_version attr wrong");
    mn_free(&v);
    TEST_EXPECT(mn_ckpt_close(&c) == MN_OK && c == NULL, "close failed");
}

/* Wrong type/length/name, missing attribute: rejected, naming the file and the array. */
static void check_mismatches(const char *dir)
{
    char path[4096];
    int found = 0;
    mn_ckpt *c = NULL;
    if (mn_ckpt_latest(dir, path, sizeof path, &found) != MN_OK || mn_ckpt_open(path, &c) != MN_OK) return;
    static float p[NP + 1];
    uint64_t u[NP];
    mn_ckpt_array wrong_len = {"encoder/params", MN_CKPT_F32, p, NP + 1};
    mn_ckpt_array wrong_type = {"rng", MN_CKPT_I64, u, NRNG};
    mn_ckpt_array missing = {"heads/7/params", MN_CKPT_F32, p, 10};
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_ckpt_read(c, &wrong_len, 1) == MN_ERR_FORMAT, "wrong length accepted");
    TEST_EXPECT(strstr(mn_error_last(), path) && strstr(mn_error_last(), "float32[100004]") &&
                    strstr(mn_error_last(), "float32[100003]"),
                "length message: %s", mn_error_last());
    TEST_EXPECT(mn_ckpt_read(c, &wrong_type, 1) == MN_ERR_FORMAT, "wrong type accepted");
    TEST_EXPECT(strstr(mn_error_last(), "uint64[8]") != NULL, "type message: %s", mn_error_last());
    TEST_EXPECT(mn_ckpt_read(c, &missing, 1) == MN_ERR_FORMAT, "missing array accepted");
    TEST_EXPECT(strstr(mn_error_last(), "heads/7/params") && strstr(mn_error_last(), path), "missing message: %s",
                mn_error_last());
    char *v = NULL;
    TEST_EXPECT(mn_ckpt_attr_get(c, "no_such_attr", &v) == MN_ERR_FORMAT && v == NULL, "missing attr accepted");
    mn_ckpt_attr reserved = {"step", "1"};
    TEST_EXPECT(mn_ckpt_write(dir, 99, NULL, 0, &reserved, 1, 0, NULL, 0) == MN_ERR_ARG, "reserved attr accepted");
    mn_error_set_quiet(0);
    mn_ckpt_close(&c);
}

/* A writer killed midway: fork, let the child write a large checkpoint, SIGKILL it once the .tmp file has data. */
static void check_killed_write(const char *dir, int64_t prev_step)
{
    enum { NBIG = 12, BIGN = 1 << 20 };
    float *big = NULL;
    if (mn_malloc(sizeof(float) * BIGN, "big", (void **)&big) != MN_OK) return;
    for (int i = 0; i < BIGN; i++) big[i] = (float)i;
    char names[NBIG][32];
    mn_ckpt_array a[NBIG];
    for (int i = 0; i < NBIG; i++) {
        snprintf(names[i], sizeof names[i], "big/%d", i);
        a[i] = (mn_ckpt_array){names[i], MN_CKPT_F32, big, BIGN};
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/ckpt-77.h5.tmp", dir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        mn_err e = mn_ckpt_write(dir, 77, a, NBIG, NULL, 0, 2, NULL, 0);
        _exit(e == MN_OK ? 0 : 3);
    }
    TEST_EXPECT(pid > 0, "fork failed");
    struct stat st;
    int killed_at_bytes = -1;
    for (int i = 0; i < 200000; i++) {
        if (stat(tmp, &st) == 0 && st.st_size > (4 << 20)) {
            kill(pid, SIGKILL);
            killed_at_bytes = (int)st.st_size;
            break;
        }
        struct timespec ts = {0, 20 * 1000};
        nanosleep(&ts, NULL);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    TEST_EXPECT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                "the writer was not killed midway (status %d): it finished before the test could kill it", status);
    printf("killed the writer with %d bytes of ckpt-77.h5.tmp written\n", killed_at_bytes);
    TEST_EXPECT(!file_exists(dir, "ckpt-77.h5"), "the killed write produced ckpt-77.h5");
    TEST_EXPECT(file_exists(dir, "ckpt-77.h5.tmp"), "the killed write left no .tmp (was it killed midway?)");
    check_latest(dir, prev_step);
    mn_free(&big);
}

static void copy_prefix(const char *from, const char *to, long bytes)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    if (!in || !out) {
        TEST_EXPECT(0, "cannot copy %s", from);
        if (in) fclose(in);
        if (out) fclose(out);
        return;
    }
    char buf[65536];
    size_t n;
    long done = 0;
    while ((bytes < 0 || done < bytes) && (n = fread(buf, 1, sizeof buf, in)) > 0) {
        if (bytes >= 0 && done + (long)n > bytes) n = (size_t)(bytes - done);
        fwrite(buf, 1, n, out);
        done += (long)n;
    }
    fclose(in);
    fclose(out);
}

/* Damaged files: a flipped bit inside encoder/params, a truncated file, a dangling `latest`. */
static void check_damage(const char *dir, int64_t step)
{
    char src[4096], bad[4096];
    snprintf(src, sizeof src, "%s/ckpt-%lld.h5", dir, (long long)step);
    snprintf(bad, sizeof bad, "%s/damaged.h5", dir);
    copy_prefix(src, bad, -1);
    /* Find the params bytes in the file and flip one bit. */
    fill(step);
    FILE *f = fopen(bad, "r+b");
    if (f) {
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        char *all = malloc((size_t)len);
        fseek(f, 0, SEEK_SET);
        if (all && fread(all, 1, (size_t)len, f) == (size_t)len) {
            char *hit = NULL;
            for (long i = 0; i + 64 <= len && !hit; i++)
                if (!memcmp(all + i, &params[1000], 64)) hit = all + i;
            TEST_EXPECT(hit != NULL, "params bytes not found in the file");
            if (hit) {
                fseek(f, (long)(hit - all) + 10, SEEK_SET);
                fputc(hit[10] ^ 0x04, f);
            }
        }
        free(all);
        fclose(f);
    }
    mn_ckpt *c = NULL;
    static float p[NP];
    mn_ckpt_array a = {"encoder/params", MN_CKPT_F32, p, NP};
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_ckpt_open(bad, &c) == MN_OK, "damaged data should still open (metadata intact)");
    if (c) {
        TEST_EXPECT(mn_ckpt_read(c, &a, 1) == MN_ERR_HDF5, "a flipped bit in encoder/params was not detected");
        TEST_EXPECT(strstr(mn_error_last(), bad) && strstr(mn_error_last(), "encoder/params"), "message: %s",
                    mn_error_last());
        mn_ckpt_close(&c);
    }
    /* Truncated to half. */
    struct stat st;
    stat(src, &st);
    copy_prefix(src, bad, (long)st.st_size / 2);
    mn_err e = mn_ckpt_open(bad, &c);
    if (e == MN_OK) e = mn_ckpt_read(c, &a, 1);
    TEST_EXPECT(e != MN_OK, "a truncated checkpoint was accepted");
    TEST_EXPECT(strstr(mn_error_last(), bad) != NULL, "truncation message does not name the file: %s",
                mn_error_last());
    mn_ckpt_close(&c);
    unlink(bad);
    /* Not there at all. */
    TEST_EXPECT(mn_ckpt_open(bad, &c) == MN_ERR_IO && strstr(mn_error_last(), bad), "missing file: %s",
                mn_error_last());
    /* A dangling and a malformed `latest`; no `latest` at all is a fresh start, not an error. */
    char d2[1024], lp[2048], path[4096];
    snprintf(d2, sizeof d2, "%s/sub", dir);
    mkdir(d2, 0777);
    int found = -1;
    TEST_EXPECT(mn_ckpt_latest(d2, path, sizeof path, &found) == MN_OK && found == 0, "empty dir: found %d", found);
    snprintf(lp, sizeof lp, "%s/latest", d2);
    f = fopen(lp, "w");
    if (f) fputs("ckpt-999.h5\n", f), fclose(f);
    TEST_EXPECT(mn_ckpt_latest(d2, path, sizeof path, &found) == MN_ERR_FORMAT && strstr(mn_error_last(), "ckpt-999"),
                "dangling latest: %s", mn_error_last());
    f = fopen(lp, "w");
    if (f) fputs("../../etc/passwd\n", f), fclose(f);
    TEST_EXPECT(mn_ckpt_latest(d2, path, sizeof path, &found) == MN_ERR_FORMAT, "malformed latest accepted");
    mn_error_set_quiet(0);
    unlink(lp);
    rmdir(d2);
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    for (size_t i = 0; i < sizeof big_config - 1; i++) big_config[i] = (char)('a' + i % 26);
    memcpy(big_config, "[model]\ndepth = 10\n", 19);
    char dir[256];
    snprintf(dir, sizeof dir, "test_ckpt_np%d.d", size);

    if (rank == 0) {
        rm_dir(dir);
        TEST_EXPECT(write_step(dir, 10, 2) == MN_OK, "write step 10 failed");
        TEST_EXPECT(write_step(dir, 20, 2) == MN_OK, "write step 20 failed");
        TEST_EXPECT(write_step(dir, 30, 2) == MN_OK, "write step 30 failed");
        TEST_EXPECT(!file_exists(dir, "ckpt-10.h5") && file_exists(dir, "ckpt-20.h5") && file_exists(dir, "ckpt-30.h5"),
                    "keep=2 did not leave exactly ckpt-20 and ckpt-30");
    }
    MPI_Barrier(MPI_COMM_WORLD);
    check_latest(dir, 30); /* every rank reads the file rank 0 wrote */
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        check_mismatches(dir);
        check_killed_write(dir, 30);
        /* A leftover latest.tmp as well, then the next write must clean both and move on. */
        char lt[4096];
        snprintf(lt, sizeof lt, "%s/latest.tmp", dir);
        FILE *f = fopen(lt, "w");
        if (f) fputs("garbage", f), fclose(f);
        mn_error_set_quiet(1);
        TEST_EXPECT(write_step(dir, 40, 2) == MN_OK, "write after the killed one failed");
        mn_error_set_quiet(0);
        TEST_EXPECT(!file_exists(dir, "ckpt-77.h5.tmp") && !file_exists(dir, "latest.tmp"),
                    "leftover .tmp files not removed");
        TEST_EXPECT(!file_exists(dir, "ckpt-20.h5") && file_exists(dir, "ckpt-30.h5"), "retention wrong after 40");
        check_damage(dir, 40);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    check_latest(dir, 40);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) rm_dir(dir);

    int fails = 0;
    MPI_Allreduce(&mn_test_failures, &fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    mn_test_failures = fails;
    MPI_Finalize();
    return rank == 0 ? mn_test_finish("test_ckpt") : (fails ? 1 : 0);
}
