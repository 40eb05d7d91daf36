/* watchdog.c: the step-progress watchdog of a training run (src/train/train_impl.h, DESIGN.md "Failures").
 *
 * Problem: a rank that stops responding (SIGSTOP, a hung file system, a frozen node) leaves every other rank
 * inside its next collective for ever.  No MPI error is raised, and Open MPI's mpirun, MPICH's Hydra and srun all
 * wait: the job burns its allocation until the time limit.  A rank that dies is different (the launcher sees it).
 *
 * Design: one helper thread per rank, started when the loop starts.  The main thread "beats" at every phase
 * boundary of the loop (step, evaluation, checkpoint write), recording the step and phase.  The helper wakes once a
 * second; when this rank has not beaten for `limit` seconds it fires:
 *   1. prints "[rank r] watchdog: no progress for N s in <phase> of step S";
 *   2. reports itself alive in <out_dir>/.watchdog/rank<r> (one small file, written only when firing: no cost per
 *      step);
 *   3. waits a grace period (GRACE_S) for the other live ranks, whose own watchdogs fire within a moment of its
 *      own because they wait in the same collective;
 *   4. the lowest-numbered rank that reported lists the folder and names the ranks that did not report: those are
 *      the ranks that did not arrive (stopped, hung or lost), printed once for the job;
 *   5. ends its own process with _exit(MN_EXIT_WATCHDOG).
 * A rank that exits without MPI_Finalize makes the launcher end the whole job, the stopped rank included (Open
 * MPI's mpirun and MPICH's Hydra do so by default; srun does with --kill-on-bad-exit=1, which jobs/mednet_job.sh
 * passes).  The helper thread makes no MPI call: mednet runs at MPI_THREAD_FUNNELED, where only the main thread may
 * call MPI, and the main thread is the one stuck inside MPI.  MPI_Abort from the helper would need
 * MPI_THREAD_MULTIPLE for every run, which costs locking in every MPI call; exiting is enough for the launchers.
 * Rejected: per-step heartbeat files (a write per rank per step on the parallel file system, and NFS caches
 * attributes for seconds) and non-blocking arrival messages polled by the main thread (they cover step boundaries
 * only: a rank stopped inside a step leaves the others in a blocking wait of the gradient path).
 *
 * Limits: the watchdog covers the loop (steps, evaluations, checkpoints), not the set-up (corpus load) nor
 * MPI_Finalize; `limit` must exceed the longest step, evaluation and checkpoint write, or a slow but healthy
 * rank ends the job (then every rank reports, and the verdict says that none is missing).  Time from the fault to
 * the job's end: limit + GRACE_S + the launcher's clean-up (measured in tests/train/run_drill.sh).
 */
#include "train/train_impl.h"

#include "mednet/mem.h"
#include "mednet/signals.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { GRACE_S = 3, MAX_NAMED = 16 };

struct mn_watchdog {
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int quit;                 /* under mu */
    double limit;             /* seconds without a beat before firing */
    int rank, size;
    char dir[1200];           /* <out_dir>/.watchdog */
    _Atomic long long beat_ns; /* CLOCK_MONOTONIC of the last beat */
    _Atomic long step;
    _Atomic(const char *) phase; /* a string literal */
};

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One line to stderr with write(2): no stdio lock, which the stuck main thread might hold. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    for (int o = 0; o < n;) {
        ssize_t w = write(2, buf + o, (size_t)(n - o));
        if (w <= 0) break;
        o += (int)w;
    }
}

/* Steps 2-5 of the design note; never returns. */
static _Noreturn void fire(mn_watchdog *wd)
{
    long step = atomic_load(&wd->step);
    const char *phase = atomic_load(&wd->phase);
    double idle = (now_ns() - atomic_load(&wd->beat_ns)) / 1e9;
    say("[rank %d] mednet watchdog: no progress for %.0f s in the %s of step %ld (train.watchdog_s = %.0f): a rank "
        "did not arrive; ending the job",
        wd->rank, idle, phase, step + 1, wd->limit);
    char path[1300];
    int reported = 0;
    if (mkdir(wd->dir, 0755) == 0 || errno == EEXIST) {
        snprintf(path, sizeof path, "%s/rank%d", wd->dir, wd->rank);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            char line[256];
            int n = snprintf(line, sizeof line, "step %ld, %s\n", step + 1, phase);
            reported = write(fd, line, (size_t)n) == n;
            close(fd);
        }
    }
    struct timespec grace = {GRACE_S, 0};
    nanosleep(&grace, NULL);
    /* The ranks that reported, and which of them is the lowest. */
    unsigned char *seen = calloc((size_t)wd->size, 1);
    int lowest = -1, nseen = 0;
    DIR *d = reported && seen ? opendir(wd->dir) : NULL;
    if (d) {
        struct dirent *ent;
        while ((ent = readdir(d)) != NULL) {
            int r = -1;
            char extra = 0;
            if (sscanf(ent->d_name, "rank%d%c", &r, &extra) != 1 || r < 0 || r >= wd->size || seen[r]) continue;
            seen[r] = 1, nseen++;
            if (lowest < 0 || r < lowest) lowest = r;
        }
        closedir(d);
    }
    if (!d) {
        say("[rank %d] mednet watchdog: cannot tell which rank is missing (%s/ cannot be used: %s)", wd->rank,
            wd->dir, strerror(errno));
    } else if (lowest == wd->rank) {
        if (nseen == wd->size) {
            say("[rank %d] mednet watchdog: every rank reported (none is missing): the job made no progress for %.0f "
                "s; a step, evaluation or checkpoint slower than train.watchdog_s? ---> HINT: raise train.watchdog_s",
                wd->rank, wd->limit);
        } else {
            char list[512];
            int o = 0, named = 0;
            list[0] = 0;
            for (int r = 0; r < wd->size && o < (int)sizeof list - 32; r++) {
                if (seen[r]) continue;
                if (named++ < MAX_NAMED) o += snprintf(list + o, sizeof list - o, "%s%d", o ? " " : "", r);
            }
            if (named > MAX_NAMED) snprintf(list + o, sizeof list - o, " and %d more", named - MAX_NAMED);
            say("[rank %d] mednet watchdog: rank(s) %s did not arrive (stopped, hung or lost): %d of %d ranks "
                "waited %.0f s for them in step %ld; the job ends, resume from the last checkpoint",
                wd->rank, list, nseen, wd->size, wd->limit, step + 1);
        }
    }
    /* The reporter leaves first; the others give it time to print before the launcher reaps the job. */
    if (lowest != wd->rank) {
        struct timespec t = {2, 0};
        nanosleep(&t, NULL);
    }
    _exit(MN_EXIT_WATCHDOG);
}

static void *watch(void *arg)
{
    mn_watchdog *wd = arg;
    pthread_mutex_lock(&wd->mu);
    while (!wd->quit) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&wd->cv, &wd->mu, &until);
        if (wd->quit) break;
        if ((now_ns() - atomic_load(&wd->beat_ns)) / 1e9 > wd->limit) {
            pthread_mutex_unlock(&wd->mu);
            fire(wd);
        }
    }
    pthread_mutex_unlock(&wd->mu);
    return NULL;
}

/* Remove <dir>/rank* left by an earlier run.  Rank 0's local work. */
static mn_err clear_reports(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d && errno == ENOENT) return MN_OK;
    MN_CHECK(d != NULL, MN_ERR_IO, "cannot list '%s': %s", dir, strerror(errno));
    struct dirent *ent;
    mn_err e = MN_OK;
    char path[1400];
    while ((ent = readdir(d)) != NULL && !e) {
        if (strncmp(ent->d_name, "rank", 4) != 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        if (unlink(path) != 0 && errno != ENOENT)
            e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot remove '%s': %s", path,
                                strerror(errno));
    }
    closedir(d);
    return e;
}

mn_err mn_watchdog_start(const char *out_dir, double limit, int rank, int size, mn_watchdog **out)
{
    *out = NULL;
    if (limit <= 0) return MN_OK;
    mn_watchdog *wd = NULL;
    MN_CALL(mn_calloc(sizeof *wd, "watchdog", (void **)&wd));
    wd->limit = limit, wd->rank = rank, wd->size = size;
    int n = snprintf(wd->dir, sizeof wd->dir, "%s/.watchdog", out_dir);
    mn_err e = n > 0 && (size_t)n < sizeof wd->dir ? MN_OK
                                                     : mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__,
                                                                       "output folder name too long: '%s'", out_dir);
    if (!e && rank == 0) e = clear_reports(wd->dir);
    atomic_store(&wd->beat_ns, now_ns());
    atomic_store(&wd->step, 0L);
    atomic_store(&wd->phase, "set-up");
    pthread_condattr_t ca;
    int ok = !e && pthread_condattr_init(&ca) == 0;
    ok = ok && pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0;
    ok = ok && pthread_mutex_init(&wd->mu, NULL) == 0;
    ok = ok && pthread_cond_init(&wd->cv, &ca) == 0;
    ok = ok && pthread_create(&wd->thread, NULL, watch, wd) == 0;
    if (!e && !ok) e = mn_error_report(MN_ERR_INTERNAL, __FILE__, __LINE__, __func__, "cannot start the watchdog "
                                       "thread: %s", strerror(errno));
    wd->started = ok;
    if (e) {
        mn_free(&wd);
        MN_CALL(e);
    }
    *out = wd;
    return MN_OK;
}

void mn_watchdog_beat(mn_watchdog *wd, long step, const char *phase)
{
    if (!wd) return;
    atomic_store(&wd->step, step);
    atomic_store(&wd->phase, phase);
    atomic_store(&wd->beat_ns, now_ns());
}

void mn_watchdog_stop(mn_watchdog **pwd)
{
    if (!pwd || !*pwd) return;
    mn_watchdog *wd = *pwd;
    *pwd = NULL;
    if (wd->started) {
        pthread_mutex_lock(&wd->mu);
        wd->quit = 1;
        pthread_cond_signal(&wd->cv);
        pthread_mutex_unlock(&wd->mu);
        pthread_join(wd->thread, NULL);
        pthread_cond_destroy(&wd->cv);
        pthread_mutex_destroy(&wd->mu);
    }
    mn_free(&wd);
}
