/* lock.c: the output-folder lock (contract and file format in mednet/lock.h).
 *
 * Only rank 0 touches the file system; the other ranks take part in the agreement alone.  The steps on rank 0:
 *   1. describe this run (host, boot, pid and its start time, Slurm ids, start time, a random nonce) and write the
 *      description, complete and fsync'ed, to a private file `<dir>/.mednet.lock.<nonce>.tmp`;
 *   2. link(private, lock): the lock is ours if that succeeds (EEXIST: someone holds it; file systems without hard
 *      links fall back to open(O_CREAT|O_EXCL) and write the lock in place);
 *   3. otherwise read and judge the holder (holder_verdict); refuse, or re-read to check that the file still names
 *      the judged holder, rename(private, lock), and read it back to check that it names us;
 *   4. remove the private file.  A lock that disappears between 2 and 3 (its holder just finished) sends us back to
 *      2, a few times at most.
 * The outcome is then agreed with mn_agree over the caller's communicator, so a refusal ends every rank together.
 */
#include "mednet/lock.h"

#include "mednet/mem.h"
#include "mednet/mpicheck.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define LOCK_FIELD 256
#define LOCK_TEXT 4096
#define LOCK_ATTEMPTS 5

struct mn_lock {
    int owner;          /* 1 on the rank that wrote the file (rank 0 of the communicator) */
    char path[4096];    /* <dir>/.mednet.lock */
    char nonce[40];     /* our nonce= value: the file is ours while it carries it */
};

/* One holder as written in (or read from) a lock file.  Empty strings and zeros mean "not recorded". */
typedef struct holder {
    char host[LOCK_FIELD], boot_id[64];
    long pid;
    unsigned long long proc_start;
    char job[64], cluster[LOCK_FIELD], array_job[64], array_task[64], step[64];
    char start[64];
    long long start_unix;
    char nonce[40];
} holder;

/* ---- describing this run --------------------------------------------------------------------------------------- */

static void copy_field(char *dst, size_t n, const char *src)
{
    /* A newline in a value would start a new key; nothing we record has one, but the environment is not ours. */
    size_t i = 0;
    for (; src && src[i] && i + 1 < n; i++) dst[i] = (src[i] == '\n' || src[i] == '\r') ? ' ' : src[i];
    dst[i] = '\0';
}

static void read_boot_id(char *out, size_t n)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f) return;
    char line[128] = "";
    if (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        copy_field(out, n, line);
    }
    fclose(f);
}

/* The fields of /proc/<pid>/stat after the command name (field 2, which may contain spaces and parentheses, so the
 * text is taken from the LAST ')'): a pointer into buf at field 3 (the state), or NULL if unreadable. */
static const char *proc_stat_fields(long pid, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p + 2 : NULL;
}

/* Start time of process pid in clock ticks since boot (field 22 of /proc/<pid>/stat), 0 if unknown. */
static unsigned long long proc_start_time(long pid)
{
    char buf[1024];
    const char *p = proc_stat_fields(pid, buf, sizeof buf);
    if (!p) return 0;
    for (int field = 3; field < 22; field++) {   /* skip fields 3 (state) .. 21 */
        while (*p == ' ') p++;
        while (*p && *p != ' ') p++;
        if (!*p) return 0;
    }
    return strtoull(p, NULL, 10);
}

/* 1 when process `pid` has exited but is not yet reaped (state Z or X): it holds nothing, though kill(pid, 0) still
 * succeeds.  A rank killed by the launcher stays a zombie until its parent reaps it. */
static int proc_is_dead(long pid)
{
    char buf[1024];
    const char *p = proc_stat_fields(pid, buf, sizeof buf);
    return p && (*p == 'Z' || *p == 'X');
}

static void make_nonce(char *out, size_t n)
{
    unsigned char b[12] = {0};
    int fd = open("/dev/urandom", O_RDONLY);
    ssize_t got = fd >= 0 ? read(fd, b, sizeof b) : -1;
    if (fd >= 0) close(fd);
    if (got != (ssize_t)sizeof b) {
        /* No urandom: time, pid and a stack address are unique enough to tell two of our own files apart. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        unsigned long long x = (unsigned long long)ts.tv_nsec ^ ((unsigned long long)ts.tv_sec << 30) ^
                               ((unsigned long long)getpid() << 12) ^ (unsigned long long)(size_t)&ts;
        for (size_t i = 0; i < sizeof b; i++, x = x * 6364136223846793005ULL + 1442695040888963407ULL)
            b[i] = (unsigned char)(x >> 56);
    }
    size_t o = 0;
    for (size_t i = 0; i < sizeof b && o + 3 <= n; i++) o += (size_t)snprintf(out + o, n - o, "%02x", b[i]);
}

static mn_err holder_self(holder *h)
{
    memset(h, 0, sizeof *h);
    char host[LOCK_FIELD] = "";
    MN_CHECK(gethostname(host, sizeof host - 1) == 0, MN_ERR_IO, "gethostname failed: %s", strerror(errno));
    copy_field(h->host, sizeof h->host, host);
    read_boot_id(h->boot_id, sizeof h->boot_id);
    h->pid = (long)getpid();
    h->proc_start = proc_start_time(h->pid);
    copy_field(h->job, sizeof h->job, getenv("SLURM_JOB_ID"));
    copy_field(h->cluster, sizeof h->cluster, getenv("SLURM_CLUSTER_NAME"));
    copy_field(h->array_job, sizeof h->array_job, getenv("SLURM_ARRAY_JOB_ID"));
    copy_field(h->array_task, sizeof h->array_task, getenv("SLURM_ARRAY_TASK_ID"));
    copy_field(h->step, sizeof h->step, getenv("SLURM_STEP_ID"));
    time_t now = time(NULL);
    struct tm tm;
    h->start_unix = (long long)now;
    if (!localtime_r(&now, &tm) || strftime(h->start, sizeof h->start, "%Y-%m-%d %H:%M:%S %z", &tm) == 0)
        snprintf(h->start, sizeof h->start, "%lld (seconds since the epoch)", h->start_unix);
    make_nonce(h->nonce, sizeof h->nonce);
    return MN_OK;
}

/* ---- the file format ----------------------------------------------------------------------------------------- */

static int holder_format(const holder *h, char *buf, size_t n)
{
    return snprintf(buf, n,
                    "host=%s\nboot_id=%s\npid=%ld\nproc_start=%llu\nslurm_job_id=%s\nslurm_cluster=%s\n"
                    "slurm_array_job_id=%s\nslurm_array_task_id=%s\nslurm_step_id=%s\nstart=%s\nstart_unix=%lld\n"
                    "nonce=%s\n",
                    h->host, h->boot_id, h->pid, h->proc_start, h->job, h->cluster, h->array_job, h->array_task,
                    h->step, h->start, h->start_unix, h->nonce);
}

/* Parse a lock file's text.  0 if it names a holder (at least host and a positive pid), -1 otherwise. */
static int holder_parse(const char *text, holder *h)
{
    memset(h, 0, sizeof *h);
    const char *p = text;
    while (*p) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (eq) {
            char key[32] = "", val[LOCK_FIELD] = "";
            size_t kl = (size_t)(eq - p), vl = len - kl - 1;
            if (kl < sizeof key) memcpy(key, p, kl);
            if (vl >= sizeof val) vl = sizeof val - 1;
            memcpy(val, eq + 1, vl);
            val[vl] = '\0';
            if (vl && val[vl - 1] == '\r') val[vl - 1] = '\0';
            if (!strcmp(key, "host")) copy_field(h->host, sizeof h->host, val);
            else if (!strcmp(key, "boot_id")) copy_field(h->boot_id, sizeof h->boot_id, val);
            else if (!strcmp(key, "pid")) h->pid = strtol(val, NULL, 10);
            else if (!strcmp(key, "proc_start")) h->proc_start = strtoull(val, NULL, 10);
            else if (!strcmp(key, "slurm_job_id")) copy_field(h->job, sizeof h->job, val);
            else if (!strcmp(key, "slurm_cluster")) copy_field(h->cluster, sizeof h->cluster, val);
            else if (!strcmp(key, "slurm_array_job_id")) copy_field(h->array_job, sizeof h->array_job, val);
            else if (!strcmp(key, "slurm_array_task_id")) copy_field(h->array_task, sizeof h->array_task, val);
            else if (!strcmp(key, "slurm_step_id")) copy_field(h->step, sizeof h->step, val);
            else if (!strcmp(key, "start")) copy_field(h->start, sizeof h->start, val);
            else if (!strcmp(key, "start_unix")) h->start_unix = strtoll(val, NULL, 10);
            else if (!strcmp(key, "nonce")) copy_field(h->nonce, sizeof h->nonce, val);
        }
        p += len;
        if (*p == '\n') p++;
    }
    return h->host[0] && h->pid > 0 ? 0 : -1;
}

/* "job 1234 (host n17, pid 4711, since ...)", with the array task when there is one. */
static void holder_describe(const holder *h, char *buf, size_t n)
{
    char who[400];
    if (h->job[0] && h->array_job[0] && h->array_task[0])
        snprintf(who, sizeof who, "job %s (array task %s_%s)", h->job, h->array_job, h->array_task);
    else if (h->job[0])
        snprintf(who, sizeof who, "job %s", h->job);
    else
        snprintf(who, sizeof who, "a run outside Slurm");
    snprintf(buf, n, "%s (host %s, pid %ld, since %s)", who, h->host, h->pid, h->start[0] ? h->start : "unknown");
}

/* Read a whole small file into buf.  *missing = 1 (and MN_OK) if it does not exist. */
static mn_err read_text(const char *path, char *buf, size_t n, int *missing)
{
    *missing = 0;
    buf[0] = '\0';
    int fd = open(path, O_RDONLY);
    if (fd < 0 && errno == ENOENT) {
        *missing = 1;
        return MN_OK;
    }
    MN_CHECK(fd >= 0, MN_ERR_IO, "cannot open lock file '%s': %s", path, strerror(errno));
    size_t got = 0;
    int bad = 0, e = 0;
    while (got + 1 < n) {
        ssize_t r = read(fd, buf + got, n - 1 - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) bad = 1, e = errno;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    MN_CHECK(!bad, MN_ERR_IO, "cannot read lock file '%s': %s", path, strerror(e));
    MN_CHECK(got + 1 < n, MN_ERR_FORMAT, "lock file '%s' is %zu bytes or more (not a mednet lock?)", path, n - 1);
    return MN_OK;
}

static mn_err fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    MN_CHECK(fd >= 0, MN_ERR_IO, "cannot open output folder '%s' to fsync it: %s", dir, strerror(errno));
    int rc = fsync(fd), e = errno;
    close(fd);
    /* Some file systems (and /proc-like ones) refuse fsync on directories; the rename is still atomic there. */
    MN_CHECK(rc == 0 || e == EINVAL || e == ENOTSUP, MN_ERR_IO, "fsync of output folder '%s' failed: %s", dir,
             strerror(e));
    return MN_OK;
}

/* Create `path` exclusively (O_EXCL unless `replace`) and write `text` to it, fsync'ed.  *exists = 1 (and MN_OK)
 * when the exclusive create finds the file already there. */
static mn_err write_text(const char *path, const char *text, int replace, int *exists)
{
    if (exists) *exists = 0;
    int fd = open(path, O_WRONLY | O_CREAT | (replace ? O_TRUNC : O_EXCL), 0644);
    if (fd < 0 && errno == EEXIST && exists) {
        *exists = 1;
        return MN_OK;
    }
    MN_CHECK(fd >= 0, MN_ERR_IO, "cannot create '%s': %s", path, strerror(errno));
    size_t len = strlen(text), off = 0;
    int bad = 0;
    while (off < len && !bad) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) bad = 1;
        else off += (size_t)w;
    }
    int e = errno;
    if (!bad && fsync(fd) != 0) bad = 1, e = errno;
    if (close(fd) != 0 && !bad) bad = 1, e = errno;
    if (bad) unlink(path);
    MN_CHECK(!bad, MN_ERR_IO, "cannot write '%s': %s", path, strerror(e));
    return MN_OK;
}

/* ---- judging a holder ---------------------------------------------------------------------------------------- */

enum verdict { HOLDER_ALIVE_HERE, HOLDER_GONE_HERE, HOLDER_SAME_JOB, HOLDER_OTHER_JOB, HOLDER_UNCHECKABLE };

/* Whether `old` still blocks `me`, following the rules of mednet/lock.h. */
static enum verdict holder_verdict(const holder *old, const holder *me)
{
    if (strcmp(old->host, me->host) == 0) {
        /* A different boot of this host: every process of the holder's boot is gone. */
        if (old->boot_id[0] && me->boot_id[0] && strcmp(old->boot_id, me->boot_id) != 0) return HOLDER_GONE_HERE;
        if (kill((pid_t)old->pid, 0) != 0 && errno == ESRCH) return HOLDER_GONE_HERE;
        if (proc_is_dead(old->pid)) return HOLDER_GONE_HERE; /* exited, not yet reaped */
        /* The pid exists (EPERM: it belongs to another user, still alive).  A recycled pid started later. */
        unsigned long long now_start = proc_start_time(old->pid);
        if (old->proc_start && now_start && now_start != old->proc_start) return HOLDER_GONE_HERE;
        return HOLDER_ALIVE_HERE;
    }
    if (old->job[0]) {
        int same_cluster = !old->cluster[0] || !me->cluster[0] || strcmp(old->cluster, me->cluster) == 0;
        if (me->job[0] && same_cluster && strcmp(old->job, me->job) == 0) return HOLDER_SAME_JOB;
        return HOLDER_OTHER_JOB;
    }
    return HOLDER_UNCHECKABLE;
}

/* ---- taking the lock (rank 0) --------------------------------------------------------------------------------- */

/* Rank 0's local work: take the lock of `dir` or fail with a message naming the holder.  On success lk->nonce names
 * our file.  The private file is removed on every path. */
static mn_err lock_local(const char *dir, mn_lock *lk)
{
    struct stat st;
    MN_CHECK(stat(dir, &st) == 0, MN_ERR_IO, "output folder '%s' cannot be locked: %s (create it first)", dir,
             strerror(errno));
    MN_CHECK(S_ISDIR(st.st_mode), MN_ERR_IO, "output folder '%s' is not a directory", dir);
    int n = snprintf(lk->path, sizeof lk->path, "%s/%s", dir, MN_OUTDIR_LOCK_NAME);
    MN_CHECK(n > 0 && (size_t)n < sizeof lk->path, MN_ERR_ARG, "output folder path '%s' is too long", dir);

    holder me;
    MN_CALL(holder_self(&me));
    char mine[LOCK_TEXT], tmp[4200];
    MN_CHECK(holder_format(&me, mine, sizeof mine) < (int)sizeof mine, MN_ERR_INTERNAL, "lock description too long");
    snprintf(tmp, sizeof tmp, "%s.%s.tmp", lk->path, me.nonce);
    MN_CALL(write_text(tmp, mine, 0, NULL));

    mn_err err = MN_OK;
    int done = 0;
    for (int attempt = 0; attempt < LOCK_ATTEMPTS && !done && !err; attempt++) {
        /* 1. publish our complete file under the lock's name, unless it exists */
        if (link(tmp, lk->path) == 0) {
            done = 1;
            break;
        }
        int le = errno;
        if (le != EEXIST) {
            /* No hard links on this file system: create the lock in place, exclusively. */
            int exists = 0;
            if (le == EPERM || le == ENOTSUP || le == ENOSYS || le == EMLINK || le == EXDEV) {
                err = write_text(lk->path, mine, 0, &exists);
                if (!err && !exists) done = 1;
                if (err || done) break;
            } else {
                err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot create lock file '%s': %s",
                                      lk->path, strerror(le));
                break;
            }
        }
        /* 2. someone holds it: read and judge */
        char text[LOCK_TEXT];
        int missing = 0;
        if ((err = read_text(lk->path, text, sizeof text, &missing)) != MN_OK) break;
        if (missing) continue; /* released meanwhile: try again */
        holder old;
        if (holder_parse(text, &old) != 0) {
            err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__,
                                  "output folder %s is locked by '%s', which names no holder (damaged, or not "
                                  "written by mednet); ---> HINT: use another train.out_dir, or remove %s if no run "
                                  "uses this folder",
                                  dir, lk->path, lk->path);
            break;
        }
        char who[1200];
        holder_describe(&old, who, sizeof who);
        enum verdict v = holder_verdict(&old, &me);
        if (v == HOLDER_ALIVE_HERE) {
            err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__,
                                  "output folder %s is in use by %s%s; ---> HINT: use another train.out_dir, or "
                                  "remove %s if that job is gone",
                                  dir, who, old.pid == me.pid ? ", this very process" : ", which is still running",
                                  lk->path);
            break;
        }
        if (v == HOLDER_OTHER_JOB) {
            err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__,
                                  "output folder %s is in use by %s; ---> HINT: use another train.out_dir, or remove "
                                  "%s if that job is gone",
                                  dir, who, lk->path);
            break;
        }
        if (v == HOLDER_UNCHECKABLE) {
            err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__,
                                  "output folder %s is in use by %s, which cannot be checked from host %s (no Slurm "
                                  "job id to compare, and its pid is on another host); ---> HINT: use another "
                                  "train.out_dir, or remove %s if that run is gone",
                                  dir, who, me.host, lk->path);
            break;
        }
        /* 3. a stale lock: replace it, but only if it still names the holder just judged */
        char again[LOCK_TEXT];
        if ((err = read_text(lk->path, again, sizeof again, &missing)) != MN_OK) break;
        if (missing || strcmp(again, text) != 0) continue;
        if (rename(tmp, lk->path) != 0) {
            err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot replace stale lock '%s': %s",
                                  lk->path, strerror(errno));
            break;
        }
        mn_log_warn("output folder %s: taking over the lock of %s (%s)", dir, who,
                    v == HOLDER_SAME_JOB ? "the same Slurm job, requeued or restarted"
                                         : "its process is no longer running");
        done = 1;
    }
    unlink(tmp); /* after link() or the fallback it is a second name; after rename() it is already gone */
    if (!err && !done)
        err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__,
                              "output folder %s: the lock file %s kept changing while it was being taken (%d "
                              "attempts); ---> HINT: another run is starting on this folder: use another "
                              "train.out_dir",
                              dir, lk->path, LOCK_ATTEMPTS);
    if (err) return err;
    MN_CALL(fsync_dir(dir));

    /* 4. read back: a run that broke the same stale lock at the same moment may have renamed over ours */
    char text[LOCK_TEXT];
    int missing = 0;
    holder now;
    MN_CALL(read_text(lk->path, text, sizeof text, &missing));
    if (missing || holder_parse(text, &now) != 0 || strcmp(now.nonce, me.nonce) != 0) {
        char who[1200] = "another run";
        if (!missing && holder_parse(text, &now) == 0) holder_describe(&now, who, sizeof who);
        MN_FAIL(MN_ERR_IO,
                "output folder %s was taken by %s at the same moment as this run; ---> HINT: use another "
                "train.out_dir",
                dir, who);
    }
    snprintf(lk->nonce, sizeof lk->nonce, "%s", me.nonce);
    lk->owner = 1;
    return MN_OK;
}

/* Remove our lock file if it still carries our nonce. */
static mn_err unlock_local(const mn_lock *lk)
{
    char text[LOCK_TEXT];
    int missing = 0;
    MN_CALL(read_text(lk->path, text, sizeof text, &missing));
    if (missing) {
        mn_log_warn("lock file '%s' was removed while this run held it", lk->path);
        return MN_OK;
    }
    holder h;
    if (holder_parse(text, &h) != 0 || strcmp(h.nonce, lk->nonce) != 0) {
        char who[1200] = "an unreadable holder";
        if (holder_parse(text, &h) == 0) holder_describe(&h, who, sizeof who);
        mn_log_warn("lock file '%s' now names %s, not this run: left in place", lk->path, who);
        return MN_OK;
    }
    MN_CHECK(unlink(lk->path) == 0 || errno == ENOENT, MN_ERR_IO, "cannot remove lock file '%s': %s", lk->path,
             strerror(errno));
    return MN_OK;
}

mn_err mn_outdir_lock_held(const mn_lock *lk, int *held)
{
    MN_CHECK(lk && held, MN_ERR_ARG, "NULL argument");
    *held = 1;
    if (!lk->owner) return MN_OK;
    char text[LOCK_TEXT];
    int missing = 0;
    MN_CALL(read_text(lk->path, text, sizeof text, &missing));
    holder h;
    *held = !missing && holder_parse(text, &h) == 0 && strcmp(h.nonce, lk->nonce) == 0;
    return MN_OK;
}

mn_err mn_outdir_lock(MPI_Comm comm, const char *dir, mn_lock **out)
{
    MN_CHECK(out != NULL, MN_ERR_ARG, "NULL argument");
    *out = NULL;
    int rank = 0;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    /* Local work on every rank (the allocation; rank 0 also the file), then one agreement. */
    mn_lock *lk = NULL;
    mn_err e = MN_OK;
    if (!dir || !*dir) e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "output folder name is empty");
    if (!e) e = mn_calloc(sizeof *lk, "output folder lock", (void **)&lk);
    if (!e && rank == 0) e = lock_local(dir, lk);
    e = mn_agree(comm, e);
    if (e) {
        /* Another rank failed after rank 0 took the file: give it back so a rerun is not refused. */
        if (lk && lk->owner) unlock_local(lk);
        mn_free(&lk);
        MN_CALL(e);
    }
    *out = lk;
    return MN_OK;
}

mn_err mn_outdir_unlock(mn_lock **plk)
{
    if (!plk || !*plk) return MN_OK;
    mn_lock *lk = *plk;
    *plk = NULL;
    mn_err e = lk->owner ? unlock_local(lk) : MN_OK;
    mn_free(&lk);
    MN_CALL(e);
    return MN_OK;
}
