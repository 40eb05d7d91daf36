/* sigprog.c: a stand-in for `mednet pretrain` in the Slurm tests, exercising the requeue path end to end with the
 * real pieces (launch check, signal flag, flag agreement, checkpoint write/read) but no model.
 *
 * Invoked as jobs/pretrain.sbatch invokes mednet:  sigprog pretrain CONFIG train.out_dir=DIR [...]
 * Each "step" sleeps 100 ms and agrees on the signal flag.  On an agreed SIGUSR1/SIGTERM, rank 0 writes a
 * checkpoint of the step into DIR and every rank exits with MN_EXIT_REQUEUE.  When DIR already has a checkpoint
 * (the requeued run), it resumes from it, checks its contents, runs 10 more steps and exits 0.  A first run that is
 * never signalled gives up after 150 s with status 1, unless an argument sigprog.steps=N asks it to finish after N
 * steps with status 0 (for jobs that are not meant to be signalled, e.g. the scaling sweep).  sigprog.fail_rank=R
 * makes rank R fail on purpose at step 3 (an error only it sees: it must end the whole job through MPI_Abort).
 * Like mednet pretrain, rank 0 removes a stale DIR/REQUEUE at start and, after a checkpoint on a signal, writes
 * "checkpointed at step N, requeue me" there through REQUEUE.tmp + rename: the job scripts requeue on that marker. */
#include "mednet/ckpt.h"
#include "mednet/dist.h"
#include "mednet/mpicheck.h"
#include "mednet/signals.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The requeue marker, as src/train/pretrain.c writes it (rank 0). */
static mn_err marker_write(const char *out, long long step, const char *ckpt)
{
    char path[4096], tmp[4096];
    snprintf(path, sizeof path, "%s/REQUEUE", out);
    snprintf(tmp, sizeof tmp, "%s/REQUEUE.tmp", out);
    FILE *f = fopen(tmp, "w");
    MN_CHECK(f, MN_ERR_IO, "cannot create %s", tmp);
    int ok = fprintf(f, "checkpointed at step %lld, requeue me\ncheckpoint: %s\n", step, ckpt) > 0;
    ok = fflush(f) == 0 && fsync(fileno(f)) == 0 && ok;
    ok = fclose(f) == 0 && ok;
    MN_CHECK(ok && rename(tmp, path) == 0, MN_ERR_IO, "cannot write %s", path);
    return MN_OK;
}

static mn_err run(int argc, char **argv, int *status)
{
    int rank = 0, size = 0;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    MN_CALL(mn_launch_check(MPI_COMM_WORLD, NULL));
    const char *out = NULL;
    long long max_steps = 0;
    int fail_rank = -1;
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "train.out_dir=", 14)) out = argv[i] + 14;
        if (!strncmp(argv[i], "sigprog.steps=", 14)) max_steps = atoll(argv[i] + 14);
        if (!strncmp(argv[i], "sigprog.fail_rank=", 18)) fail_rank = atoi(argv[i] + 18);
    }
    MN_CHECK(argc >= 3 && !strcmp(argv[1], "pretrain") && out, MN_ERR_ARG,
             "usage: sigprog pretrain CONFIG train.out_dir=DIR (got %d arguments)", argc - 1);
    MN_CALL(mn_signals_install());

    /* Resume? */
    long long start = 0;
    int resumed = 0;
    float state[16];
    if (rank == 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s/REQUEUE", out);
        unlink(path);
        MN_CALL(mn_ckpt_latest(out, path, sizeof path, &resumed));
        if (resumed) {
            mn_ckpt *c = NULL;
            int64_t s = -1;
            mn_ckpt_array a[2] = {{"step", MN_CKPT_I64, &s, 1}, {"state", MN_CKPT_F32, state, 16}};
            MN_CALL(mn_ckpt_open(path, &c));
            MN_CALL(mn_ckpt_read(c, a, 2));
            MN_CALL(mn_ckpt_close(&c));
            for (int i = 0; i < 16; i++)
                MN_CHECK(state[i] == (float)(s * 16 + i), MN_ERR_FORMAT, "checkpoint state[%d] = %g is wrong", i,
                         state[i]);
            start = s;
            printf("sigprog: resumed from %s at step %lld on %d ranks\n", path, start, size);
        } else {
            const char *omp = getenv("OMP_NUM_THREADS");
            printf("sigprog: fresh start on %d ranks (OMP_NUM_THREADS=%s)\n", size, omp ? omp : "unset");
        }
        fflush(stdout);
    }
    MN_MPI(MPI_Bcast(&start, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD));
    MN_MPI(MPI_Bcast(&resumed, 1, MPI_INT, 0, MPI_COMM_WORLD));

    for (long long step = start;; step++) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        MN_CHECK(!(rank == fail_rank && step == start + 3), MN_ERR_IO,
                 "rank %d cannot read its shard at step %lld (deliberate failure)", rank, step);
        int stop = 0;
        MN_CALL(mn_dist_agree_flag(MPI_COMM_WORLD, mn_signals_pending() != 0, &stop));
        if (stop) {
            if (rank == 0) {
                int64_t s = step;
                for (int i = 0; i < 16; i++) state[i] = (float)(s * 16 + i);
                mn_ckpt_array a[2] = {{"step", MN_CKPT_I64, &s, 1}, {"state", MN_CKPT_F32, state, 16}};
                char path[4096];
                MN_CALL(mn_ckpt_write(out, s, a, 2, NULL, 0, 2, path, sizeof path));
                MN_CALL(marker_write(out, step, path));
                printf("sigprog: %s received; checkpointed step %lld to %s; exiting with %d\n",
                       mn_signals_pending() ? mn_signals_name(mn_signals_pending()) : "signal (on another rank)",
                       step, path, MN_EXIT_REQUEUE);
                fflush(stdout);
            }
            MN_MPI(MPI_Barrier(MPI_COMM_WORLD));
            *status = MN_EXIT_REQUEUE;
            return MN_OK;
        }
        if (max_steps > 0 && step + 1 >= max_steps) {
            if (rank == 0) printf("sigprog: finished %lld steps on %d ranks\n", max_steps, size);
            *status = 0;
            return MN_OK;
        }
        if (resumed && step >= start + 10) {
            if (rank == 0) printf("sigprog: finished at step %lld after resuming\n", step);
            *status = 0;
            return MN_OK;
        }
        MN_CHECK(step < start + 1500, MN_ERR_INTERNAL, "no signal arrived within 150 s");
    }
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    int status = 1;
    mn_err e = run(argc, argv, &status);
    if (e != MN_OK) mn_mpi_abort(MPI_COMM_WORLD, e);
    MPI_Finalize();
    return status;
}
