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
 *   3. the output folder and its lock, the corpus metadata, the shard plan, the shard, the sampler (each step
 *      local work agreed over the world: a failure on one rank is an exit 1 on every rank);
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
#include <unistd.h>

/* Fault injection for the failure tests, from MEDNET_FAULT=<kind>:<rank>[:<step>]:
 *   head_mismatch:R:S   after step S, rank R perturbs one parameter of the first head it holds (a replica
 *                       mismatch the next consistency check must end the job on);
 *   signal_setup:R      rank R raises SIGUSR1 to itself at the start of set-up.
 * Never set in production; documented in DESIGN.md. */
static void fault_parse(run *r)
{
    r->fault_rank = -1;
    const char *f = getenv("MEDNET_FAULT");
    if (!f || !*f) return;
    int rank = -1;
    long step = 0;
    char kind[32] = "";
    if (sscanf(f, "%31[a-z_]:%d:%ld", kind, &rank, &step) >= 2) {
        snprintf(r->fault, sizeof r->fault, "%s", kind);
        r->fault_rank = rank;
        r->fault_step = step;
    }
}

static int fault_is(const run *r, const char *kind) { return r->fault_rank == r->rank && !strcmp(r->fault, kind); }

static void log_dice(run *r, const char *when, const double *dice)
{
    if (r->rank != 0) return;
    mn_parts *p = r->parts;
    char line[2048];
    int o = snprintf(line, sizeof line, "eval (%s, step %ld): mean foreground Dice %.4f [", when, r->step, dice[0]);
    for (int k = 1; k < p->nrows && o < (int)sizeof line - 80; k++)
        o += snprintf(line + o, sizeof line - o, "%s%s %.4f", k > 1 ? ", " : "", p->row[k].name, dice[k]);
    snprintf(line + o, sizeof line - o, "]");
    mn_log_info("%s", line);
    if (r->metrics) {
        fprintf(r->metrics, "{\"step\": %ld, \"eval\": \"%s\", \"dice\": {", r->step, when);
        for (int k = 1; k < p->nrows; k++)
            fprintf(r->metrics, "%s\"%s\": %.6g", k > 1 ? ", " : "", p->row[k].name, isfinite(dice[k]) ? dice[k] : -1.0);
        fprintf(r->metrics, "}, \"mean_dice\": %.6g}\n", dice[0]);
        fflush(r->metrics);
    }
}

/* ---- the loop ----------------------------------------------------------------------------------------------- */

/* The batch source of a run: the sampler over this rank's shard. */
static mn_err draw_batch(void *ctx, int64_t index, mn_batch *b)
{
    run *r = ctx;
    MN_CALL(mn_sampler_next_weighted(r->sampler, index, b->n, b->x, b->labels, b->dataset, b->weight));
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
    double times[3] = {st->t_compute, st->t_comm, st->t_data};
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, times, 3, MPI_DOUBLE, MPI_MAX, w));
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
                            "\"t_compute\": %.4g, \"t_comm\": %.4g, \"t_data\": %.4g, \"hidden\": %.3f, \"skipped\": %d, "
                            "\"head_loss\": {",
                r->step + 1, isfinite(loss) ? loss : -1.0, lr, gbatch / step_time, step_time, times[0], times[1],
                times[2], st->hidden, st->skipped);
        int first = 1;
        for (int k = 1; k < p->nrows; k++) {
            if (st->weight[k] <= 0) continue;
            fprintf(r->metrics, "%s\"%s\": %.6g", first ? "" : ", ", p->row[k].name, st->loss[k] / st->weight[k]);
            first = 0;
        }
        fprintf(r->metrics, "}}\n");
        fflush(r->metrics);
    }
    return MN_OK;
}

static mn_err write_checkpoint(run *r)
{
    mn_ckpt_meta meta = {r->config_text, r->info->checksum, r->cfg.corpus, r->cfg.sampler.seed};
    MN_CALL(mn_train_ckpt_write(r->trainer, r->cfg.out, r->step, (int)r->cfg.keep, &meta));
    return MN_OK;
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

static mn_err train_loop(run *r, mn_train_result *res)
{
    const run_cfg *c = &r->cfg;
    mn_parts *p = r->parts;
    mn_model *m = mn_trainer_model(r->trainer);
    mn_step_stats st = {0};
    double *dice = NULL;
    MN_CALL(requeue_marker(r, 1)); /* the output folder is ours (set-up took its lock): a marker there is stale */
    MN_CALL(mn_calloc(sizeof(double) * (size_t)p->nrows, "step losses", (void **)&st.loss));
    mn_err e = mn_calloc(sizeof(double) * (size_t)p->nrows, "step weights", (void **)&st.weight);
    if (!e) e = mn_calloc(sizeof(double) * (size_t)p->nrows, "dice", (void **)&dice);
    e = mn_agree(p->dist->world, e);
    if (!e && c->eval_batches > 0) {
        e = mn_eval_run(r->eval, r->trainer, c->eval_batches, dice);
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
        e = mn_dist_agree_flag(p->dist->world, mn_signals_pending(), &sig);
        if (e) break;
        if (sig) {
            mn_log_info("caught %s at step %ld: %s and exiting for requeue (status %d)", mn_signals_name(sig),
                        r->step, nsteps ? "writing a checkpoint" : "nothing trained yet, no checkpoint",
                        MN_EXIT_REQUEUE);
            if (nsteps) e = write_checkpoint(r);
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
            e = mn_eval_run(r->eval, r->trainer, c->eval_batches, dice);
            if (!e) log_dice(r, "during training", dice);
            if (e) break;
        }
        if (c->ckpt_every > 0 && r->step % c->ckpt_every == 0 && r->step < c->steps) e = write_checkpoint(r);
    }
    if (!e && res->exit_status == 0) {
        if (nsteps > 0) e = write_checkpoint(r);
        if (!e && c->eval_batches > 0) {
            e = mn_eval_run(r->eval, r->trainer, c->eval_batches, dice);
            if (!e) {
                log_dice(r, "trained", dice);
                res->dice_after = dice[0];
            }
        }
        if (!e)
            mn_log_info("done: %ld steps in %.1f s; checkpoints in %s/, metrics in %s/metrics.jsonl", nsteps,
                        MPI_Wtime() - t_start, c->out, c->out);
    }
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
    mn_sampler_destroy(&r->sampler);
    mn_eval_destroy(&r->eval);
    mn_shard_destroy(&r->shard);
    mn_shard_plan_destroy(&r->plan);
    mn_corpus_info_destroy(&r->info);
    mn_config_destroy(&r->config);
    free(r->config_text);
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
    if (!e && fault_is(&r, "signal_setup")) raise(SIGUSR1);
    /* The launch check reads the same environment on every rank; agreeing makes a wrong launch an exit 1. */
    if (!e) e = mn_agree(comm, mn_launch_check(comm, NULL));
    if (!e) e = mn_train_config_load(comm, path, overrides, noverrides, &r.config);
    /* The whole configuration, validated before any heavy work (every rank parses the same text). */
    if (!e) e = mn_agree(comm, r.rank == 0 ? mn_run_config_read(r.config, &r.cfg) : MN_OK); /* rank 0 reports */
    if (!e) e = mn_agree(comm, r.rank != 0 ? mn_run_config_read(r.config, &r.cfg) : MN_OK);
    if (!e) e = mn_agree(comm, mn_config_dump(r.config, &r.config_text));
    if (!e) e = mn_agree(comm, mn_threads_init_comm(mn_threads_resolve((int)r.cfg.threads), comm));
    if (!e) {
        mn_log_info("mednet %s %s: %d ranks x %d threads, BLIS kernels %s (%s)", MN_VERSION,
                    finetune ? "finetune" : "pretrain", r.size, mn_threads_count(), mn_blis_arch(),
                    mn_blis_arch_reason());
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
