/* pretrain.c: the pre-training and fine-tuning run (mednet/train.h): the loop and its logging.
 *
 * Everything else lives in its own file: the configuration in run_config.c, the set-up in setup.c, the step and the
 * gradient path in trainer.c over the part table (src/parallel/parts.c), evaluation in evaluate.c, checkpoints in
 * checkpoint.c, the sampling rule in the sampler.  A run goes in an order that keeps failures clean (DESIGN.md,
 * "Failures"):
 *
 *   1. signal handlers first: a SIGUSR1/SIGTERM at any time from here on ends the run with the requeue status;
 *   2. the configuration, read by every part from its own section and validated whole, plus the checkpoints it
 *      names (train.init_encoder, the newest one in train.out_dir) checked against it, before any heavy work;
 *   3. the output folder and its lock, the corpus metadata, the shard plan, the shard reader, its I/O thread and the
 *      sampler (each step local work agreed over the world: a failure on one rank is an exit 1 on every rank; no
 *      voxel is read before the first batch);
 *   4. the trainer (model, optimiser, part table, reducer), resume or encoder initialisation;
 *   5. the loop: signal agreement, step, replica check, log, evaluation, checkpoint.
 *
 * Errors that every rank agreed on carry MN_ERR_AGREED (mednet/error.h); any other error ends the job in
 * MPI_Abort (the caller, via mn_mpi_exit_error).
 */
#include "mednet/train.h"

#include "mednet/ckpt.h"
#include "mednet/dist.h"
#include "mednet/mem.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"
#include "mednet/parts.h"
#include "mednet/signals.h"
#include "mednet/threads.h"
#include "mednet/trainer.h"
#include "train/train_impl.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Fault injection for the failure tests and drills, from MEDNET_FAULT=<kind>:<rank>[:<step>[:<signal>]] (steps
 * count from 1, as the progress lines do; <signal> is usr1 (default) or term):
 *   head_mismatch:R:S   after step S, rank R perturbs one parameter of the first head it holds (a replica
 *                       mismatch the next consistency check must end the job on);
 *   signal_setup:R      rank R raises the signal at the start of set-up;
 *   signal_step:R:S     rank R raises it inside step S (while drawing its first batch: the others are in the step);
 *   signal_ckpt:R:S     rank R raises it as the checkpoint of step S starts (rank 0 then writes it, the others
 *                       wait for the write);
 *   signal_eval:R:S     rank R raises it as the evaluation after step S starts (S = 0: the one before training);
 *   kill:R:S            rank R sends itself SIGKILL inside step S;
 *   stop:R:S            rank R sends itself SIGSTOP inside step S (it stops responding; the watchdog's case);
 *   ckpt_kill:0:S       rank 0 is killed (SIGKILL) between the rename of ckpt-S.h5 and the update of `latest`.
 * The kill and stop kinds print the rank's pid first, so that a test can clean up after them.  Never set in
 * production; documented in DESIGN.md. */
static void fault_parse(run *r)
{
    r->fault_rank = -1;
    const char *f = getenv("MEDNET_FAULT");
    if (!f || !*f) return;
    int rank = -1;
    long step = 0;
    char kind[32] = "", sig[8] = "usr1";
    if (sscanf(f, "%31[a-z_]:%d:%ld:%7[a-z0-9]", kind, &rank, &step, sig) >= 2) {
        snprintf(r->fault, sizeof r->fault, "%s", kind);
        r->fault_rank = rank;
        r->fault_step = step;
        r->fault_signal = !strcmp(sig, "term") ? SIGTERM : SIGUSR1;
    }
}

static int fault_is(const run *r, const char *kind) { return r->fault_rank == r->rank && !strcmp(r->fault, kind); }

/* Fire fault `kind` if it is this rank's and step `step` (1-based) is its step. */
static void fault_at(run *r, const char *kind, long step)
{
    if (r->fault_rank < 0 || !fault_is(r, kind) || step != r->fault_step || r->fault_done) return;
    r->fault_done = 1;
    if (!strncmp(kind, "signal_", 7)) {
        mn_log_warn("MEDNET_FAULT: raising %s (%s, step %ld)", mn_signals_name(r->fault_signal), kind, step);
        raise(r->fault_signal);
        return;
    }
    int sig = !strcmp(kind, "kill") ? SIGKILL : SIGSTOP;
    mn_log_warn("MEDNET_FAULT: pid %ld sends itself %s in step %ld", (long)getpid(), sig == SIGKILL ? "SIGKILL" :
                "SIGSTOP", step);
    fflush(stdout);
    raise(sig);
}

static long g_ckpt_kill_step = -1;
static void ckpt_kill_hook(int stage, int64_t step)
{
    if (stage != MN_CKPT_STAGE_RENAMED || step != g_ckpt_kill_step) return;
    mn_log_warn("MEDNET_FAULT: pid %ld killed between the rename of checkpoint %lld and the update of 'latest'",
                (long)getpid(), (long long)step);
    fflush(stdout);
    raise(SIGKILL);
}

/* Warn once when metrics.jsonl cannot be written (a full or read-only file system): the metrics are a record, not
 * the run's state, so training goes on. */
static void metrics_flush(run *r)
{
    if (fflush(r->metrics) == 0 && !ferror(r->metrics)) return;
    int err = errno;
    clearerr(r->metrics);
    if (r->metrics_warned) return;
    r->metrics_warned = 1;
    mn_log_warn("cannot write %s/metrics.jsonl (%s): training goes on, later metrics lines may be lost", r->cfg.out,
                strerror(err));
}

/* dice: [2 * nrows] from run_eval: the scores, then (classification) the mean per-class accuracies. */
static void log_dice(run *r, const char *when, const double *dice)
{
    if (r->rank != 0) return;
    mn_parts *p = r->parts;
    const int cls = r->cfg.model.head_kind == MN_HEAD_CLS;
    const double *bal = dice + p->nrows;
    char line[2048];
    int o = cls ? snprintf(line, sizeof line, "eval (%s, step %ld): accuracy %.4f, mean per-class accuracy %.4f [",
                           when, r->step, dice[0], bal[0])
                : snprintf(line, sizeof line, "eval (%s, step %ld): mean foreground Dice %.4f [", when, r->step,
                           dice[0]);
    for (int k = 1; k < p->nrows && o < (int)sizeof line - 80; k++)
        o += cls ? snprintf(line + o, sizeof line - o, "%s%s %.4f/%.4f", k > 1 ? ", " : "", p->row[k].name, dice[k],
                            bal[k])
                 : snprintf(line + o, sizeof line - o, "%s%s %.4f", k > 1 ? ", " : "", p->row[k].name, dice[k]);
    snprintf(line + o, sizeof line - o, "]");
    mn_log_info("%s", line);
    if (r->metrics) {
        fprintf(r->metrics, "{\"step\": %ld, \"eval\": \"%s\", \"%s\": {", r->step, when, cls ? "accuracy" : "dice");
        for (int k = 1; k < p->nrows; k++)
            fprintf(r->metrics, "%s\"%s\": %.6g", k > 1 ? ", " : "", p->row[k].name, isfinite(dice[k]) ? dice[k] : -1.0);
        if (cls) {
            fprintf(r->metrics, "}, \"mean_class_accuracy\": {");
            for (int k = 1; k < p->nrows; k++)
                fprintf(r->metrics, "%s\"%s\": %.6g", k > 1 ? ", " : "", p->row[k].name, isfinite(bal[k]) ? bal[k] : -1.0);
            fprintf(r->metrics, "}, \"mean_accuracy\": %.6g, \"mean_mean_class_accuracy\": %.6g}\n", dice[0], bal[0]);
        } else {
            fprintf(r->metrics, "}, \"mean_dice\": %.6g}\n", dice[0]);
        }
        metrics_flush(r);
    }
}

/* ---- the loop ----------------------------------------------------------------------------------------------- */

/* The batch source of a run: the sampler over this rank's shard, drawn on the I/O thread, with the next batch
 * drawn there while this step computes. */
static mn_err draw_batch(void *ctx, int64_t index, mn_batch *b)
{
    run *r = ctx;
    mn_watchdog_beat(r->watchdog, r->step, "training step");
    fault_at(r, "kill", r->step + 1);
    fault_at(r, "stop", r->step + 1);
    fault_at(r, "signal_step", r->step + 1);
    MN_CALL(mn_prefetch_next(r->pf, r->sampler, index, b->n, b->x, b->labels, b->dataset, b->weight, 1));
    return MN_OK;
}

static void fmt_eta(double s, char *buf, size_t n)
{
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

/* Progress line on rank 0 and a JSON line in the metrics file: the objective (weighted mean loss over every
 * sample, row 0) and each dataset's.  Collective on the world (reduces the losses). */
static mn_err log_step(run *r, mn_step_stats *st, double step_time, double avg_step, mn_train_result *res)
{
    mn_parts *p = r->parts;
    MPI_Comm w = p->dist->world;
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, st->loss, p->nrows, MPI_DOUBLE, MPI_SUM, w));
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, st->weight, p->nrows, MPI_DOUBLE, MPI_SUM, w));
    /* Slowest rank of each figure (the step waits for it). */
    double times[7] = {st->t_compute, st->t_comm, st->t_data, st->t_update, st->t_busy, st->t_wait, st->t_inflight};
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, times, 7, MPI_DOUBLE, MPI_MAX, w));
    /* The fastest rank's compute: max - min is the load imbalance the slowest rank's comm time includes. */
    double compute_min = st->t_compute;
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, &compute_min, 1, MPI_DOUBLE, MPI_MIN, w));
    if (r->rank != 0) return MN_OK;
    char heads[1500];
    int o = 0;
    heads[0] = 0;
    for (int k = 1; k < p->nrows; k++) {
        if (st->weight[k] <= 0) continue;
        if (o < (int)sizeof heads - 64)
            o += snprintf(heads + o, sizeof heads - o, "%s%s %.4f", o ? " " : "", p->row[k].name,
                          st->loss[k] / st->weight[k]);
    }
    double loss = st->weight[0] > 0 ? st->loss[0] / st->weight[0] : NAN;
    if (res->steps_done == 0 || !isfinite(res->first_loss)) res->first_loss = loss;
    res->last_loss = loss;
    double lr = mn_optim_lr(&r->cfg.optim, r->step);
    double gbatch = (double)r->cfg.batch * r->cfg.micro * r->size;
    char eta[32];
    fmt_eta(avg_step * (double)(r->cfg.steps - r->step - 1), eta, sizeof eta);
    mn_log_info("step %ld/%ld  loss %.4f [%s]  lr %.2e  %.1f samples/s  compute %.3fs comm %.3fs (%.0f%% hidden) "
                "data %.3fs  ETA %s%s",
                r->step + 1, r->cfg.steps, loss, heads, lr, gbatch / step_time, times[0], times[1],
                100.0 * st->hidden, times[2], eta, st->skipped ? "  (skipped: non-finite)" : "");
    if (r->metrics) {
        fprintf(r->metrics, "{\"step\": %ld, \"loss\": %.6g, \"lr\": %.6g, \"samples_per_s\": %.4g, \"t_step\": %.4g, "
                            "\"t_compute\": %.4g, \"t_comm\": %.4g, \"t_data\": %.4g, \"t_update\": %.4g, "
                            "\"t_busy\": %.4g, \"t_wait\": %.4g, \"t_inflight\": %.4g, \"t_compute_min\": %.4g, "
                            "\"hidden\": %.3f, \"skipped\": %d, \"head_loss\": {",
                r->step + 1, isfinite(loss) ? loss : -1.0, lr, gbatch / step_time, step_time, times[0], times[1],
                times[2], times[3], times[4], times[5], times[6], compute_min, st->hidden, st->skipped);
        int first = 1;
        for (int k = 1; k < p->nrows; k++) {
            if (st->weight[k] <= 0) continue;
            fprintf(r->metrics, "%s\"%s\": %.6g", first ? "" : ", ", p->row[k].name, st->loss[k] / st->weight[k]);
            first = 0;
        }
        fprintf(r->metrics, "}}\n");
        metrics_flush(r);
    }
    return MN_OK;
}

/* Make sure the output folder is still this run's before writing into it.  A folder removed during the run (a
 * clean-up script, a scratch purge) or a lock file removed from it is taken again: the folder is recreated, the lock
 * retaken, metrics.jsonl reopened, and the run goes on writing there, so its work is saved; a folder that another
 * run has taken is refused as at start-up (agreed status 1, nothing written).  Collective on the world. */
static mn_err check_outdir(run *r)
{
    MPI_Comm w = r->parts->dist->world;
    int held = 1, lost = 0;
    MN_CALL(mn_agree(w, r->rank == 0 ? mn_outdir_lock_held(r->lock, &held) : MN_OK));
    MN_CALL(mn_dist_agree_flag(w, !held, &lost));
    if (!lost) return MN_OK;
    if (r->rank == 0)
        mn_log_warn("the output folder %s (or its lock %s) was removed while this run held it: taking it again "
                    "before the checkpoint of step %ld; whatever the folder held before is gone", r->cfg.out,
                    MN_OUTDIR_LOCK_NAME, r->step);
    mn_outdir_unlock(&r->lock);
    mn_err e = MN_OK;
    if (r->rank == 0 && mkdir(r->cfg.out, 0755) != 0 && errno != EEXIST)
        e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot create output directory '%s': %s",
                            r->cfg.out, strerror(errno));
    MN_CALL(mn_agree(w, e));
    MN_CALL(mn_outdir_lock(w, r->cfg.out, &r->lock));
    if (r->rank == 0 && r->metrics) {
        char mpath[1200];
        snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", r->cfg.out);
        fclose(r->metrics);
        r->metrics = fopen(mpath, "a");
        r->metrics_warned = 0;
        if (!r->metrics)
            e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot open '%s': %s", mpath,
                                strerror(errno));
    }
    MN_CALL(mn_agree(w, e));
    return MN_OK;
}

/* Write checkpoint r->step and time it (the gather to rank 0, the write, fsync and rename: what a signal's lead
 * time must cover); rank 0 adds {"step", "checkpoint", "t_ckpt", "ckpt_bytes"} to the metrics.  Collective on the
 * world. */
static mn_err write_checkpoint(run *r)
{
    /* HDF5 is not thread-safe: the I/O thread finishes its look-ahead before this thread writes the file. */
    mn_prefetch_quiesce(r->pf);
    mn_watchdog_beat(r->watchdog, r->step, "checkpoint write");
    fault_at(r, "signal_ckpt", r->step);
    if (r->fault_rank == 0 && fault_is(r, "ckpt_kill")) {
        g_ckpt_kill_step = r->fault_step;
        mn_ckpt_set_fault_hook(ckpt_kill_hook);
    }
    MN_CALL(check_outdir(r));
    mn_ckpt_meta meta = {r->config_text, r->info->checksum, r->cfg.corpus, r->cfg.sampler.seed, r->prep_text};
    double t0 = MPI_Wtime();
    MN_CALL(mn_train_ckpt_write(r->trainer, r->cfg.out, r->step, (int)r->cfg.keep, &meta));
    r->ckpt_step = r->step;
    double dt = MPI_Wtime() - t0;
    if (r->rank == 0) {
        char path[1400];
        struct stat sb;
        snprintf(path, sizeof path, "%s/ckpt-%ld.h5", r->cfg.out, r->step);
        long long bytes = stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
        mn_log_info("checkpoint written in %.3f s (%.1f MiB)", dt, bytes / 1048576.0);
        if (r->metrics) {
            fprintf(r->metrics, "{\"step\": %ld, \"checkpoint\": \"ckpt-%ld.h5\", \"t_ckpt\": %.4g, \"ckpt_bytes\": %lld}\n",
                    r->step, r->step, dt, bytes);
            fflush(r->metrics);
        }
    }
    return MN_OK;
}

/* The run's shape, once per run in the metrics, for the scaling analysis (benchmarks/scaling_collect.py): ranks,
 * nodes (distinct shared-memory domains) and the most ranks on one, online cores of rank 0's node, threads, batch
 * sizes, model, crop, the encoder's parameter count and its gradient buckets (floats, in reduction order), the
 * heads' parameter counts on rank 0, the first step of this run (after a resume: not 0) and the BLIS kernels.
 * Collective on the world. */
static mn_err log_plan(run *r)
{
    mn_parts *p = r->parts;
    MPI_Comm node;
    int node_rank = 0, node_size = 1, counts[2];
    MN_MPI(MPI_Comm_split_type(p->dist->world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    mn_err e = mn_mpi_report_if(MPI_Comm_rank(node, &node_rank));
    if (!e) e = mn_mpi_report_if(MPI_Comm_size(node, &node_size));
    MN_MPI(MPI_Comm_free(&node));
    MN_CALL(e);
    int leader = node_rank == 0, nodes = 0, most = 0;
    MN_MPI(MPI_Allreduce(&leader, &nodes, 1, MPI_INT, MPI_SUM, p->dist->world));
    MN_MPI(MPI_Allreduce(&node_size, &most, 1, MPI_INT, MPI_MAX, p->dist->world));
    if (r->rank != 0 || !r->metrics) return MN_OK;
    counts[0] = nodes, counts[1] = most;
    const mn_shape *in = &r->cfg.model.input;
    mn_model *m = mn_trainer_model(r->trainer);
    FILE *f = r->metrics;
    fprintf(f, "{\"plan\": {\"ranks\": %d, \"nodes\": %d, \"ranks_per_node\": %d, \"cores\": %ld, \"threads\": %d, "
               "\"batch\": %ld, \"micro_batches\": %ld, \"global_batch\": %ld, \"depth\": %d, \"crop\": [%d, %d, %d], "
               "\"params\": %zu, \"encoder_params\": %zu, \"bucket_floats\": [",
            r->size, counts[0], counts[1], sysconf(_SC_NPROCESSORS_ONLN), mn_threads_count(), r->cfg.batch,
            r->cfg.micro, r->cfg.batch * r->cfg.micro * r->size, r->cfg.model.depth, in->d, in->h, in->w,
            mn_model_num_params(m), p->row[0].params.count);
    for (int i = 0; i < mn_reducer_nbuckets(p->reducer); i++)
        fprintf(f, "%s%zu", i ? ", " : "", mn_reducer_bucket(p->reducer, i).count);
    fprintf(f, "], \"head_params\": {");
    int first = 1;
    for (int k = 1; k < p->nrows; k++) {
        if (!p->row[k].held) continue;
        fprintf(f, "%s\"%s\": %zu", first ? "" : ", ", p->row[k].name, p->row[k].params.count);
        first = 0;
    }
    fprintf(f, "}, \"start_step\": %ld, \"blis\": \"%s\"}}\n", r->step, mn_blis_arch());
    fflush(f);
    return MN_OK;
}

/* A checkpoint that could not be written (full or read-only file system: an agreed error; the previous checkpoint
 * and `latest` are untouched, mn_ckpt_write says so).  With train.checkpoint_failure = continue a periodic one is a
 * warning and training goes on; otherwise, and always for the last checkpoint of a run or one on a signal, every
 * rank stops with the agreed status 1.  Returns what the loop goes on with. */
static mn_err checkpoint_failed(run *r, mn_err e, int periodic)
{
    if (!e || !mn_err_is_agreed(e)) return e;
    char latest[1400] = "", where[1500];
    int found = 0;
    if (r->rank == 0 && (mn_ckpt_latest(r->cfg.out, latest, sizeof latest, &found) != MN_OK || !found)) found = 0;
    if (found)
        snprintf(where, sizeof where, "the newest checkpoint on disk is %s", latest);
    else
        snprintf(where, sizeof where, "there is no checkpoint on disk yet");
    if (periodic && r->cfg.ckpt_continue) {
        mn_log_info("checkpoint of step %ld failed (above): training goes on (train.checkpoint_failure = continue); "
                    "%s", r->step, where);
        return MN_OK;
    }
    mn_log_info("stopping: the checkpoint of step %ld could not be written%s; %s, %s", r->step,
                periodic ? " (train.checkpoint_failure = stop)" : "", where,
                found ? "a rerun resumes from it" : "a rerun starts from step 0");
    return e;
}

/* ---- the requeue marker -------------------------------------------------------------------------------------- */

/* <out_dir>/REQUEUE tells the job script that this run stopped on a signal with its progress saved, so it should be
 * requeued.  Exit statuses are not reliable for that: a launcher may report a rank's 99 as a signal or lose it
 * (MPICH's Hydra does about one run in three, srun --kill-on-bad-exit kills the last ranks while they exit).  A file
 * is: rank 0 writes it through REQUEUE.tmp + rename AFTER the checkpoint is on disk, so a marker always names a
 * complete checkpoint; `start` (remove = 1) deletes a stale one once the run holds the output folder.  Rank 0's
 * local work, agreed over the world; so collective on it.  Errors (a folder that cannot be written) are agreed
 * MN_ERR_IO naming the file. */
static mn_err requeue_marker(run *r, int remove)
{
    mn_err e = MN_OK;
    if (r->rank == 0) {
        char path[1400], tmp[1400], ckpt[1400] = "";
        snprintf(path, sizeof path, "%s/REQUEUE", r->cfg.out);
        snprintf(tmp, sizeof tmp, "%s/REQUEUE.tmp", r->cfg.out);
        if (remove) {
            if (unlink(path) != 0 && errno != ENOENT) e = MN_ERR_IO;
            if (e) mn_log_warn("cannot remove the stale requeue marker %s: %s", path, strerror(errno));
            else if (unlink(tmp) != 0 && errno != ENOENT) e = MN_ERR_IO;
        } else {
            int found = 0;
            if (mn_ckpt_latest(r->cfg.out, ckpt, sizeof ckpt, &found) != MN_OK || !found)
                snprintf(ckpt, sizeof ckpt, "none");
            FILE *f = fopen(tmp, "w");
            int ok = f && fprintf(f, "checkpointed at step %ld, requeue me\ncheckpoint: %s\n", r->step, ckpt) > 0;
            ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
            if (f && fclose(f) != 0) ok = 0;
            ok = ok && rename(tmp, path) == 0;
            if (!ok) {
                mn_log_warn("cannot write the requeue marker %s: %s", path, strerror(errno));
                e = MN_ERR_IO;
            }
        }
    }
    MN_CALL(mn_agree(r->parts->dist->world, e));
    return MN_OK;
}

/* An evaluation, with the watchdog told and the signal_eval fault placed. */
static mn_err run_eval(run *r, double *dice)
{
    mn_watchdog_beat(r->watchdog, r->step, "evaluation");
    fault_at(r, "signal_eval", r->step);
    MN_CALL(mn_eval_run(r->eval, r->trainer, r->cfg.eval_batches, dice, dice + r->parts->nrows));
    return MN_OK;
}

static mn_err train_loop(run *r, mn_train_result *res)
{
    const run_cfg *c = &r->cfg;
    mn_parts *p = r->parts;
    mn_model *m = mn_trainer_model(r->trainer);
    mn_step_stats st = {0};
    double *dice = NULL;
    r->ckpt_step = -1;
    MN_CALL(requeue_marker(r, 1)); /* the output folder is ours (set-up took its lock): a marker there is stale */
    MN_CALL(log_plan(r));
    MN_CALL(mn_calloc(sizeof(double) * (size_t)p->nrows, "step losses", (void **)&st.loss));
    mn_err e = mn_calloc(sizeof(double) * (size_t)p->nrows, "step weights", (void **)&st.weight);
    if (!e) e = mn_calloc(sizeof(double) * 2 * (size_t)p->nrows, "evaluation scores", (void **)&dice);
    if (!e) e = mn_watchdog_start(c->out, c->watchdog_s, r->rank, r->size, &r->watchdog);
    e = mn_agree(p->dist->world, e);
    if (!e && c->eval_batches > 0) {
        e = run_eval(r, dice);
        if (!e) {
            log_dice(r, r->step == 0 ? "untrained" : "resumed", dice);
            res->dice_before = dice[0];
        }
    }
    double t_start = MPI_Wtime(), sum_step = 0;
    long nsteps = 0;
    while (!e && r->step < c->steps) {
        /* A caught signal (also one caught during set-up): agree, checkpoint what this run trained, leave with the
         * requeue status. */
        int sig = 0;
        mn_watchdog_beat(r->watchdog, r->step, "signal agreement before the step");
        e = mn_dist_agree_flag(p->dist->world, mn_signals_pending(), &sig);
        if (e) break;
        if (sig) {
            mn_log_info("caught %s at step %ld: %s and exiting for requeue (status %d)", mn_signals_name(sig),
                        r->step, !nsteps ? "nothing trained yet, no checkpoint"
                                 : r->ckpt_step == r->step ? "the checkpoint of this step is on disk"
                                                           : "writing a checkpoint",
                        MN_EXIT_REQUEUE);
            if (nsteps && r->ckpt_step != r->step) e = checkpoint_failed(r, write_checkpoint(r), 0);
            if (!e) e = requeue_marker(r, 0);
            res->exit_status = MN_EXIT_REQUEUE;
            break;
        }
        double t0 = MPI_Wtime();
        e = mn_trainer_step(r->trainer, r->step, draw_batch, r, &st);
        if (e) break;
        double dt = MPI_Wtime() - t0;
        sum_step += dt, nsteps++;
        if (r->fault_rank >= 0 && fault_is(r, "head_mismatch") && r->step == r->fault_step) {
            for (int k = 1; k < p->nrows; k++)
                if (p->row[k].held) {
                    mn_model_params(m)[p->row[k].params.offset] += 1.0f;
                    mn_log_warn("MEDNET_FAULT: perturbed head %s after step %ld", p->row[k].name, r->step + 1);
                    break;
                }
        }
        if (c->consistency_every > 0 && (r->step + 1) % c->consistency_every == 0) {
            e = mn_parts_check_replicas(p, mn_model_params(m));
            if (e) break;
        }
        if ((r->step + 1) % c->log_every == 0 || r->step + 1 == c->steps) e = log_step(r, &st, dt, sum_step / nsteps, res);
        r->step++;
        res->steps_done = r->step;
        if (e) break;
        if (c->eval_every > 0 && r->step % c->eval_every == 0 && r->step < c->steps && c->eval_batches > 0) {
            e = run_eval(r, dice);
            if (!e) log_dice(r, "during training", dice);
            if (e) break;
        }
        if (c->ckpt_every > 0 && r->step % c->ckpt_every == 0 && r->step < c->steps)
            e = checkpoint_failed(r, write_checkpoint(r), 1);
    }
    if (!e && res->exit_status == 0) {
        if (nsteps > 0 && r->ckpt_step != r->step) e = checkpoint_failed(r, write_checkpoint(r), 0);
        if (!e && c->eval_batches > 0) {
            e = run_eval(r, dice);
            if (!e) {
                log_dice(r, "trained", dice);
                res->dice_after = dice[0];
            }
        }
        /* Peak memory per rank and what the reader did: the largest over the ranks. */
        mn_reader_stats rs;
        mn_reader_get_stats(r->reader, &rs);
        double mx[3] = {(double)mn_mem_peak_rss(), (double)rs.cache_peak, (double)rs.bytes_read};
        if (!e) e = mn_mpi_report_if(MPI_Allreduce(MPI_IN_PLACE, mx, 3, MPI_DOUBLE, MPI_MAX, p->dist->world));
        if (!e) {
            mn_log_info("done: %ld steps in %.1f s; checkpoints in %s/, metrics in %s/metrics.jsonl", nsteps,
                        MPI_Wtime() - t_start, c->out, c->out);
            mn_log_info("memory: peak resident %.1f MiB per rank (VmHWM, largest rank); data cache peak %.2f MiB, "
                        "%.2f MiB read from the corpus (largest rank)", mx[0] / 1048576.0, mx[1] / 1048576.0,
                        mx[2] / 1048576.0);
        }
    }
    mn_watchdog_stop(&r->watchdog);
    mn_free(&st.loss);
    mn_free(&st.weight);
    mn_free(&dice);
    MN_CALL(e);
    return MN_OK;
}

static void run_destroy(run *r)
{
    mn_trainer_destroy(&r->trainer);
    mn_trace_close(&r->trace);
    mn_prefetch_destroy(&r->pf); /* joins the I/O thread: the reader below is then this thread's alone */
    mn_sampler_destroy(&r->sampler);
    mn_eval_destroy(&r->eval);
    mn_reader_destroy(&r->reader);
    mn_shard_plan_destroy(&r->plan);
    mn_corpus_info_destroy(&r->info);
    mn_config_destroy(&r->config);
    free(r->config_text);
    free(r->prep_text);
    if (r->metrics) fclose(r->metrics);
    mn_outdir_unlock(&r->lock);
}

mn_err mn_pretrain_run(MPI_Comm comm, const char *path, char **overrides, int noverrides, int finetune,
                       mn_train_result *res)
{
    memset(res, 0, sizeof *res);
    res->first_loss = res->last_loss = res->dice_before = res->dice_after = NAN;
    /* Signals first: a SIGUSR1/SIGTERM during set-up is seen by the loop's first agreement. */
    MN_CALL(mn_signals_install());
    run r;
    memset(&r, 0, sizeof r);
    r.comm = comm;
    mn_err e = mn_mpi_report_if(MPI_Comm_rank(comm, &r.rank));
    if (!e) e = mn_mpi_report_if(MPI_Comm_size(comm, &r.size));
    fault_parse(&r);
    if (!e) fault_at(&r, "signal_setup", 0);
    /* The launch check reads the same environment on every rank; agreeing makes a wrong launch an exit 1.  It
     * compares the world with what the launcher started, so a run on a part of the world (mednet filter's groups)
     * leaves it to the caller, which checks the world. */
    int whole = 0;
    if (!e) e = mn_mpi_report_if(MPI_Comm_compare(comm, MPI_COMM_WORLD, &whole));
    if (!e && (whole == MPI_IDENT || whole == MPI_CONGRUENT)) e = mn_agree(comm, mn_launch_check(comm, NULL));
    if (!e) e = mn_train_config_load(comm, path, overrides, noverrides, &r.config);
    /* The whole configuration, validated before any heavy work (every rank parses the same text). */
    if (!e) e = mn_agree(comm, r.rank == 0 ? mn_run_config_read(r.config, &r.cfg) : MN_OK); /* rank 0 reports */
    if (!e) e = mn_agree(comm, r.rank != 0 ? mn_run_config_read(r.config, &r.cfg) : MN_OK);
    if (!e) e = mn_agree(comm, mn_config_dump(r.config, &r.config_text));
    if (!e) e = mn_agree(comm, mn_threads_init_comm(mn_threads_resolve((int)r.cfg.threads), comm));
    int nodes = 0;
    if (!e) e = mn_agree(comm, mn_dist_node_count(comm, &nodes, NULL));
    if (!e) {
        mn_log_info("mednet %s %s: %d ranks x %d threads on %d node%s, BLIS kernels %s (%s)", MN_VERSION,
                    finetune ? "finetune" : "pretrain", r.size, mn_threads_count(), nodes, nodes == 1 ? "" : "s",
                    mn_blis_arch(), mn_blis_arch_reason());
        e = mn_run_setup(&r);
    }
    if (!e) e = train_loop(&r, res);
    /* The handlers stay installed until the process exits: a SIGUSR1/SIGTERM forwarded by the job script while the
     * ranks finish (after the last step) must not kill them with the default action and turn a finished run into a
     * failed job.  A caught signal that late is simply not acted on. */
    run_destroy(&r);
    MN_CALL(e);
    return MN_OK;
}
