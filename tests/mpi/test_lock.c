/* test_lock.c: the output-folder lock (src/io/lock.c) on 1 and 2 ranks.
 *
 * Every rank calls mn_outdir_lock; rank 0 plants lock files by hand (the format of mednet/lock.h) and checks the
 * file afterwards.  Checks:
 *   - a free folder is taken (the file names this host and rank 0's pid) and released (the file is gone);
 *     a second lock of a held folder is refused; unlock accepts NULL;
 *   - refused, with an error agreed on every rank, the lock file untouched, and a message (rank 0) naming the
 *     holder's job, host and pid: a live process on this host (a forked child) in another job, or outside Slurm;
 *     a live process on this host in the SAME job (a concurrent job step); a holder on another host in another
 *     job, or in the same job id on another cluster; a holder on another host outside Slurm (the message says it
 *     cannot be checked); a file that names no holder;
 *   - taken over: a dead pid on this host; a live pid whose process start time does not match (a recycled pid);
 *     the same SLURM_JOB_ID on another host (a requeued job);
 *   - unlock leaves a lock that another run has taken over in place;
 *   - a folder that does not exist is an agreed error.
 */
#include "mednet/lock.h"
#include "mednet/mpicheck.h"
#include "test_util.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static int rank, size;
static char dir[256], lockpath[512], host[256];

static void rm_dir(const char *d)
{
    DIR *dd = opendir(d);
    if (!dd) return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(dd)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", d, e->d_name);
        unlink(p);
    }
    closedir(dd);
    rmdir(d);
}

static void slurm_env(const char *job, const char *cluster)
{
    if (job) setenv("SLURM_JOB_ID", job, 1);
    else unsetenv("SLURM_JOB_ID");
    if (cluster) setenv("SLURM_CLUSTER_NAME", cluster, 1);
    else unsetenv("SLURM_CLUSTER_NAME");
}

/* Rank 0: plant a lock file naming (h, pid, proc_start, job, cluster). */
static void plant(const char *h, long pid, unsigned long long proc_start, const char *job, const char *cluster)
{
    if (rank != 0) return;
    FILE *f = fopen(lockpath, "w");
    TEST_EXPECT(f != NULL, "cannot plant %s", lockpath);
    if (!f) return;
    fprintf(f, "host=%s\npid=%ld\nproc_start=%llu\nslurm_job_id=%s\nslurm_cluster=%s\n"
               "start=2020-01-02 03:04:05 +0000\nnonce=planted\n",
            h, pid, proc_start, job ? job : "", cluster ? cluster : "");
    fclose(f);
}

static void plant_text(const char *text)
{
    if (rank != 0) return;
    FILE *f = fopen(lockpath, "w");
    if (f) fputs(text, f), fclose(f);
}

static int read_lock(char *buf, size_t n)
{
    buf[0] = '\0';
    FILE *f = fopen(lockpath, "r");
    if (!f) return 0;
    size_t got = fread(buf, 1, n - 1, f);
    buf[got] = '\0';
    fclose(f);
    return 1;
}

/* Every rank: the lock must be refused with an agreed MN_ERR_IO, the file unchanged; rank 0's message must contain
 * each of the NULL-terminated strings in `want`. */
static void expect_refused(const char *what, const char *const *want)
{
    char before[4096] = "", after[4096] = "";
    int had = rank == 0 ? read_lock(before, sizeof before) : 0;
    mn_lock *lk = NULL;
    mn_error_set_quiet(1);
    mn_err e = mn_outdir_lock(MPI_COMM_WORLD, dir, &lk);
    mn_error_set_quiet(0);
    TEST_EXPECT(e != MN_OK, "%s: lock was granted", what);
    TEST_EXPECT(mn_err_is_agreed(e), "%s: error %#x is not agreed", what, (unsigned)e);
    TEST_EXPECT(mn_err_code(e) == MN_ERR_IO, "%s: expected MN_ERR_IO, got %s", what, mn_err_name(e));
    TEST_EXPECT(lk == NULL, "%s: lock handle set on error", what);
    if (rank == 0) {
        const char *msg = mn_error_last();
        for (int i = 0; want[i]; i++)
            TEST_EXPECT(strstr(msg, want[i]) != NULL, "%s: message lacks '%s': %s", what, want[i], msg);
        int has = read_lock(after, sizeof after);
        TEST_EXPECT(has == had && strcmp(before, after) == 0, "%s: the lock file changed on refusal", what);
        printf("refused (%s): %s\n", what, msg);
    }
    if (lk) mn_outdir_unlock(&lk);
    MPI_Barrier(MPI_COMM_WORLD);
}

/* Every rank: the lock must be granted and name this process on rank 0; then released (the file gone). */
static void expect_taken(const char *what)
{
    mn_lock *lk = NULL;
    mn_err e = mn_outdir_lock(MPI_COMM_WORLD, dir, &lk);
    TEST_EXPECT(e == MN_OK && lk != NULL, "%s: lock refused (%s): %s", what, mn_err_name(e), mn_error_last());
    if (rank == 0 && e == MN_OK) {
        char text[4096], want_pid[64], want_host[300];
        snprintf(want_pid, sizeof want_pid, "\npid=%ld\n", (long)getpid());
        snprintf(want_host, sizeof want_host, "host=%s\n", host);
        TEST_EXPECT(read_lock(text, sizeof text), "%s: no lock file after taking it", what);
        TEST_EXPECT(strstr(text, want_pid) && strncmp(text, want_host, strlen(want_host)) == 0 &&
                        !strstr(text, "nonce=planted"),
                    "%s: the lock file does not name this process:\n%s", what, text);
        printf("taken (%s)\n", what);
    }
    TEST_EXPECT(mn_outdir_unlock(&lk) == MN_OK && lk == NULL, "%s: unlock failed", what);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) TEST_EXPECT(access(lockpath, F_OK) != 0, "%s: lock file left after unlock", what);
    MPI_Barrier(MPI_COMM_WORLD);
}

/* Rank 0: a child process that lives until killed (a live holder with a pid of its own). */
static pid_t spawn_sleeper(void)
{
    if (rank != 0) return 0;
    pid_t pid = fork();
    if (pid == 0) {
        for (;;) pause();
    }
    TEST_EXPECT(pid > 0, "fork failed");
    return pid;
}

static void reap(pid_t pid)
{
    if (rank != 0 || pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* A pid that certainly belonged to a process of ours that has ended. */
static long dead_pid(void)
{
    long pid = 0;
    if (rank == 0) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        waitpid(p, NULL, 0);
        pid = (long)p;
    }
    return pid;
}

/* Start time of pid from /proc (field 22), 0 if unknown. */
static unsigned long long start_of(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long long v = 0;
    for (int field = 2; p && field < 22; field++) p = strchr(p + 1, ' ');
    if (p) v = strtoull(p + 1, NULL, 10);
    return v;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    gethostname(host, sizeof host - 1);
    snprintf(dir, sizeof dir, "test_lock_np%d.d", size);
    snprintf(lockpath, sizeof lockpath, "%s/%s", dir, MN_OUTDIR_LOCK_NAME);
    unsetenv("SLURM_ARRAY_JOB_ID");
    unsetenv("SLURM_ARRAY_TASK_ID");
    unsetenv("SLURM_STEP_ID");
    slurm_env(NULL, NULL);

    /* A folder that does not exist yet. */
    if (rank == 0) rm_dir(dir);
    MPI_Barrier(MPI_COMM_WORLD);
    {
        const char *want[] = {dir, "create it first", NULL};
        expect_refused("missing folder", want);
    }
    if (rank == 0) mkdir(dir, 0755);
    MPI_Barrier(MPI_COMM_WORLD);

    /* Take and release; a second lock while held; unlock of NULL. */
    expect_taken("free folder");
    mn_lock *held = NULL;
    TEST_EXPECT(mn_outdir_lock(MPI_COMM_WORLD, dir, &held) == MN_OK, "free folder: lock refused");
    {
        char pid[64];
        snprintf(pid, sizeof pid, "pid %ld", (long)(rank == 0 ? getpid() : 0));
        const char *want[] = {"is in use by a run outside Slurm", pid, "this very process", "HINT", NULL};
        expect_refused("held by this run", want);
    }
    TEST_EXPECT(mn_outdir_unlock(&held) == MN_OK && held == NULL, "unlock failed");
    TEST_EXPECT(mn_outdir_unlock(&held) == MN_OK && mn_outdir_unlock(NULL) == MN_OK, "unlock of NULL failed");
    MPI_Barrier(MPI_COMM_WORLD);

    /* A live process on this host in another job (or outside Slurm): refused, naming it. */
    pid_t child = spawn_sleeper();
    char cpid[64], chost[300], lockname[600];
    snprintf(cpid, sizeof cpid, "pid %ld", (long)child);
    snprintf(chost, sizeof chost, "host %s", host);
    snprintf(lockname, sizeof lockname, "%s/.mednet.lock", dir);
    {
        plant(host, (long)child, 0, "1234", NULL);
        const char *want[] = {"output folder", dir, "is in use by job 1234", chost, cpid, "since 2020-01-02",
                              lockname, "HINT: use another train.out_dir", NULL};
        expect_refused("live pid, job 1234, this run outside Slurm", want);
        slurm_env("4242", NULL);
        expect_refused("live pid, job 1234, this run job 4242", want);
        /* The same job id but a live process on this host: a concurrent step of the same job. */
        plant(host, (long)child, 0, "4242", NULL);
        const char *want2[] = {"job 4242", cpid, "still running", NULL};
        expect_refused("live pid, same job 4242 on this host", want2);
        /* A live pid whose start time differs: the pid was recycled, the holder is gone. */
        unsigned long long st = rank == 0 ? start_of((long)child) : 0;
        if (rank == 0) TEST_EXPECT(st > 0, "cannot read the start time of pid %ld", (long)child);
        plant(host, (long)child, st + 12345, "1234", NULL);
        expect_taken("recycled pid");
        slurm_env(NULL, NULL);
    }
    reap(child);

    /* A dead pid on this host is taken over, in another job or outside Slurm. */
    plant(host, dead_pid(), 0, "1234", NULL);
    expect_taken("dead pid, job 1234");
    plant(host, dead_pid(), 0, NULL, NULL);
    expect_taken("dead pid, outside Slurm");

    /* Another host. */
    slurm_env("4242", NULL);
    plant("node-elsewhere.invalid", 1, 0, "4242", NULL);
    expect_taken("same job 4242 on another host (requeued)");
    {
        plant("node-elsewhere.invalid", 1, 0, "1234", NULL);
        const char *want[] = {"is in use by job 1234", "host node-elsewhere.invalid", "pid 1", lockname, NULL};
        expect_refused("job 1234 on another host", want);
        slurm_env("4242", "clusterA");
        plant("node-elsewhere.invalid", 1, 0, "4242", "clusterB");
        const char *want2[] = {"is in use by job 4242", "host node-elsewhere.invalid", NULL};
        expect_refused("job 4242 of another cluster", want2);
        plant("node-elsewhere.invalid", 1, 0, "4242", "clusterA");
        expect_taken("same job 4242 of the same cluster on another host");
    }
    slurm_env(NULL, NULL);
    {
        plant("node-elsewhere.invalid", 77, 0, NULL, NULL);
        const char *want[] = {"a run outside Slurm", "host node-elsewhere.invalid", "pid 77", "cannot be checked",
                              lockname, NULL};
        expect_refused("outside Slurm on another host", want);
        slurm_env("4242", NULL);
        expect_refused("outside Slurm on another host, this run in Slurm", want);
        slurm_env(NULL, NULL);
    }
    {
        plant_text("this is not a lock file\n");
        const char *want[] = {"names no holder", lockname, NULL};
        expect_refused("damaged lock file", want);
    }
    if (rank == 0) unlink(lockpath);
    MPI_Barrier(MPI_COMM_WORLD);

    /* Unlock leaves a lock that another run took over. */
    held = NULL;
    TEST_EXPECT(mn_outdir_lock(MPI_COMM_WORLD, dir, &held) == MN_OK, "lock before takeover refused");
    MPI_Barrier(MPI_COMM_WORLD);
    plant("node-elsewhere.invalid", 1, 0, "999", NULL);
    MPI_Barrier(MPI_COMM_WORLD);
    TEST_EXPECT(mn_outdir_unlock(&held) == MN_OK, "unlock after takeover failed");
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        char text[4096];
        TEST_EXPECT(read_lock(text, sizeof text) && strstr(text, "slurm_job_id=999"),
                    "unlock removed a lock that another run holds");
        printf("unlock left the other run's lock in place\n");
        rm_dir(dir);
    }

    int fails = 0;
    MPI_Allreduce(&mn_test_failures, &fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    mn_test_failures = fails;
    MPI_Finalize();
    return rank == 0 ? mn_test_finish("test_lock") : (fails ? 1 : 0);
}
