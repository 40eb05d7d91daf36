/* test_equivalence: the data-parallel contract of DESIGN.md on P ranks, through the real training step.
 *
 * Both sides run mn_trainer_step, the step `mednet pretrain` runs: the part table, the bucketed encoder reduction,
 * the head reductions over their holders, per-sample weighted losses (cross-entropy over non-ignored voxels plus
 * soft Dice), head_lr_mult, micro-batches and momentum SGD.  Two datasets; virtual rank v holds dataset v % 2, so at
 * 3 and 4 ranks each head has several holders and the shards are uneven (dataset 0 has more samples at P = 3).
 * Each sample has its own importance weight and its own share of ignored voxels, so a normalisation that depended
 * on how samples are grouped (per head batch, per rank or per micro-batch) would show.  A normalisation that is the
 * same for every grouping but wrong (dividing by the sample count instead of the weight sum) shows in the last
 * check: the reference's step with every weight doubled must give the same updates.
 *
 *   default  P ranks x M micro-batches of BATCH (local batch norm), against ONE rank (MPI_COMM_SELF) accumulating the
 *            same P x M micro-batches, one per (virtual rank, micro-batch): the micro-batches see the same samples,
 *            so batch statistics agree and every other difference would be a bug of the gradient path;
 *   syncbn   P ranks x M micro-batches with SyncBN and branch heads (no head batch norm), against ONE rank with
 *            micro-batches of P x BATCH samples (the global micro-batch whose statistics SyncBN reproduces).
 *
 * Checked: the encoder and head UPDATES (parameters after minus before) equal the reference's to 1e-5 relative in
 * the 2-norm; every part is bitwise identical on its holders (mn_parts_check_replicas, agreed over the world); a rank
 * that does not hold dataset d has no head d.  P = 1 is not run: it would compare the step with itself.
 */
#include "mednet/mpicheck.h"
#include "mednet/threads.h"
#include "mednet/trainer.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NDS = 2, STEPS = 3, BATCH = 2, MICRO = 2, SIDE = 16 };
static const int classes[NDS] = {3, 2};
static const size_t VOX = (size_t)SIDE * SIDE * SIDE;

/* Every sample weight is multiplied by this (the scale check below). */
static float weight_scale = 1.0f;

/* Sample j of virtual rank v's micro-batch mb of step s: inputs in [-1, 1), labels of dataset v % 2 with a share of
 * ignored voxels that differs between samples, and a weight in [0.5, 1.5]. */
static void make_sample(int v, int s, int mb, int j, float *x, int32_t *lab, float *w)
{
    mn_test_rng rng = {0x9e3779b97f4a7c15ULL ^ ((uint64_t)(v + 1) << 40) ^ ((uint64_t)(s + 1) << 20) ^
                       ((uint64_t)(mb + 1) << 8) ^ (uint64_t)(j + 1)};
    mn_test_fill(&rng, x, VOX, 1.0f);
    uint64_t ignore_per_8 = (uint64_t)((v + s + mb + j) % 4); /* 0, 1/8, 2/8 or 3/8 of the voxels ignored */
    for (size_t i = 0; i < VOX; i++) {
        uint64_t u = mn_test_rng_u64(&rng);
        lab[i] = (u & 7) < ignore_per_8 ? -1 : (int32_t)((u >> 3) % (uint64_t)classes[v % NDS]);
    }
    *w = weight_scale * (0.5f + 0.25f * (float)((v * 7 + s * 5 + mb * 3 + j) % 5));
}

typedef struct source {
    int size;      /* P */
    int rank;      /* this rank (the P-rank run) */
    int reference; /* 1: the single-rank reference */
    int sync;
} source;

/* Fill one virtual rank's micro-batch at b[at..at+BATCH). */
static void fill(int v, int s, int mb, mn_batch *b, int at)
{
    for (int j = 0; j < BATCH; j++) {
        make_sample(v, s, mb, j, b->x + (size_t)(at + j) * VOX, b->labels + (size_t)(at + j) * VOX,
                    &b->weight[at + j]);
        b->dataset[at + j] = v % NDS;
    }
}

static mn_err draw(void *ctx, int64_t index, mn_batch *b)
{
    source *src = ctx;
    if (!src->reference) {
        fill(src->rank, (int)(index / MICRO), (int)(index % MICRO), b, 0);
    } else if (!src->sync) {
        int per = src->size * MICRO, k = (int)(index % per); /* one micro-batch per (virtual rank, micro-batch) */
        fill(k / MICRO, (int)(index / per), k % MICRO, b, 0);
    } else {
        /* The global micro-batch: every virtual rank's samples, dataset 0 first. */
        int at = 0;
        for (int d = 0; d < NDS; d++)
            for (int v = d; v < src->size; v += NDS, at += BATCH) fill(v, (int)(index / MICRO), (int)(index % MICRO), b, at);
    }
    return MN_OK;
}

static mn_trainer_config config(int sync, int batch, int micro)
{
    mn_trainer_config c;
    memset(&c, 0, sizeof c);
    c.model = mn_model_config_default();
    c.model.depth = 10;
    c.model.head_kind = sync ? MN_HEAD_BRANCH : MN_HEAD_SEG;
    c.model.input = (mn_shape){batch, 1, SIDE, SIDE, SIDE};
    c.model.loss.ce_weight = 1;
    c.model.loss.dice_weight = 0.5f;
    c.model.loss.ignore_label = -1;
    c.model.seed = 5;
    c.optim = mn_optim_defaults();
    c.optim.lr = 0.01;
    c.optim.schedule = MN_SCHED_CONSTANT;
    c.head_lr_mult = 2;
    c.micro_batches = micro;
    c.sync_bn = sync;
    c.bucket_mb = 4;
    return c;
}

/* ||(a - init) - (b - init)|| / ||b - init|| in double. */
static double update_relerr(const float *a, const float *b, const float *init, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double ua = (double)a[i] - init[i], ub = (double)b[i] - init[i];
        num += (ua - ub) * (ua - ub);
        den += ub * ub;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Copy the P-rank run's state (parameters and optimiser state of every part) into the single-rank reference, so
 * that each step is compared from identical states: the encoder from this rank, each head from its root (a
 * broadcast over the world, since the reference holds every head).  Collective on the world. */
static mn_err sync_reference(mn_trainer *t, mn_trainer *ref)
{
    mn_parts *p = mn_trainer_parts(t), *rp = mn_trainer_parts(ref);
    mn_optim *o = mn_trainer_optim(t), *ro = mn_trainer_optim(ref);
    int nstate = mn_optim_state_count(o);
    for (int i = 0; i < p->nrows; i++) {
        mn_range src = p->row[i].params, dst = rp->row[i].params;
        for (int k = -1; k < nstate; k++) {
            size_t len;
            float *a = k < 0 ? mn_model_params(mn_trainer_model(t)) : mn_optim_state(o, k, &len);
            float *b = k < 0 ? mn_model_params(mn_trainer_model(ref)) : mn_optim_state(ro, k, &len);
            if (p->row[i].held) memcpy(b + dst.offset, a + src.offset, sizeof(float) * dst.count);
            if (i > 0) MN_MPI(MPI_Bcast(b + dst.offset, (int)dst.count, MPI_FLOAT, p->row[i].root, MPI_COMM_WORLD));
        }
    }
    return MN_OK;
}

static mn_err run(int sync)
{
    int rank, size;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    MN_CALL(mn_threads_init_comm(1, MPI_COMM_WORLD));

    /* The P-rank run: dataset d on the ranks r with r % 2 == d. */
    int holders[NDS][64], self[NDS][1] = {{1}, {1}};
    MN_CHECK(size <= 64, MN_ERR_ARG, "at most 64 ranks");
    for (int d = 0; d < NDS; d++)
        for (int r = 0; r < size; r++) holders[d][r] = size == 1 || r % NDS == d;
    mn_trainer_dataset ds[NDS] = {{0, "ds0", classes[0], holders[0]}, {1, "ds1", classes[1], holders[1]}};
    mn_trainer_config pc = config(sync, BATCH, MICRO);
    mn_trainer *t = NULL;
    MN_CALL(mn_trainer_create(MPI_COMM_WORLD, &pc, NDS, ds, NDS, NULL, &t));
    mn_model *m = mn_trainer_model(t);
    mn_parts *parts = mn_trainer_parts(t);
    for (int d = 0; d < NDS; d++) {
        char name[64];
        snprintf(name, sizeof name, sync ? "heads.%d.branch.weight" : "heads.%d.conv_seg.0.weight", d);
        TEST_EXPECT((mn_model_find_tensor(m, name) >= 0) == holders[d][rank], "rank %d head %d presence", rank, d);
    }
    /* The single-rank reference: both heads, the same samples grouped otherwise. */
    mn_trainer_dataset rds[NDS] = {{0, "ds0", classes[0], self[0]}, {1, "ds1", classes[1], self[1]}};
    mn_trainer_config rc = config(sync, sync ? BATCH * size : BATCH, sync ? MICRO : MICRO * size);
    mn_trainer *ref = NULL;
    MN_CALL(mn_trainer_create(MPI_COMM_SELF, &rc, NDS, rds, NDS, NULL, &ref));
    mn_model *rm = mn_trainer_model(ref);
    mn_parts *rp = mn_trainer_parts(ref);

    float *init = malloc(sizeof(float) * mn_model_num_params(m));
    MN_CHECK(init, MN_ERR_MEM, "out of memory");
    double loss[1 + NDS], weight[1 + NDS];
    mn_step_stats st = {.loss = loss, .weight = weight};
    source src = {size, rank, 0, sync}, rsrc = {size, rank, 1, sync};
    double e_enc = 0, e_head = 0;
    for (int s = 0; s < STEPS; s++) {
        /* Each step from identical states (momentum included): the comparison measures the step, not the
         * divergence of two trajectories (a few steps of this tiny random problem amplify 1e-7 to 1e-2). */
        MN_CALL(sync_reference(t, ref));
        memcpy(init, mn_model_params(m), sizeof(float) * mn_model_num_params(m));
        MN_CALL(mn_trainer_step(t, s, draw, &src, &st));
        TEST_EXPECT(!st.skipped, "step %d skipped", s);
        MN_CALL(mn_trainer_step(ref, s, draw, &rsrc, &st));
        double e = update_relerr(mn_model_params(m) + parts->row[0].params.offset,
                                 mn_model_params(rm) + rp->row[0].params.offset, init + parts->row[0].params.offset,
                                 parts->row[0].params.count);
        TEST_EXPECT(e <= 1e-5, "rank %d step %d: encoder update differs from the 1-rank reference: %.3e", rank, s, e);
        if (e > e_enc) e_enc = e;
        for (int i = 1; i < parts->nrows; i++) {
            if (!parts->row[i].held) continue;
            mn_range a = parts->row[i].params, b = rp->row[i].params;
            TEST_EXPECT(a.count == b.count, "head sizes");
            e = update_relerr(mn_model_params(m) + a.offset, mn_model_params(rm) + b.offset, init + a.offset,
                              a.count);
            TEST_EXPECT(e <= 1e-5, "rank %d step %d: head %s update differs from the 1-rank reference: %.3e", rank, s,
                        parts->row[i].name, e);
            if (e > e_head) e_head = e;
        }
    }
    /* The objective is the weighted mean: multiplying every weight by 2 must leave every update as it is (a
     * gradient divided by the sample count instead of the weight sum would double). */
    double e_scale = 0;
    {
        const size_t np = mn_model_num_params(rm);
        float *base = malloc(sizeof(float) * np), *one = malloc(sizeof(float) * np);
        MN_CHECK(base && one, MN_ERR_MEM, "out of memory");
        MN_CALL(sync_reference(t, ref));
        memcpy(base, mn_model_params(rm), sizeof(float) * np);
        MN_CALL(mn_trainer_step(ref, STEPS, draw, &rsrc, &st));
        memcpy(one, mn_model_params(rm), sizeof(float) * np);
        MN_CALL(sync_reference(t, ref));
        weight_scale = 2.0f;
        MN_CALL(mn_trainer_step(ref, STEPS, draw, &rsrc, &st));
        weight_scale = 1.0f;
        for (int i = 0; i < rp->nrows; i++) {
            mn_range r = rp->row[i].params;
            double e = update_relerr(mn_model_params(rm) + r.offset, one + r.offset, base + r.offset, r.count);
            TEST_EXPECT(e <= 1e-6, "rank %d: %s update changes when every sample weight is doubled: %.3e", rank,
                        i ? rp->row[i].name : "encoder", e);
            if (e > e_scale) e_scale = e;
        }
        free(base);
        free(one);
    }
    MN_CALL(mn_parts_check_replicas(parts, mn_model_params(m)));
    double worst[3] = {e_enc, e_head, e_scale};
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, worst, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    if (rank == 0)
        printf("%s%d rank(s) x %d micro-batches, %d steps (weighted samples, ignored voxels, Dice, head_lr_mult 2, "
               "momentum): each step's updates vs the 1-rank %s reference from the same state: encoder %.2e, heads "
               "%.2e (worst relative 2-norm); every part bitwise identical on its holders; every update with all "
               "weights doubled %.2e\n",
               sync ? "SyncBN: " : "", size, MICRO, STEPS,
               sync ? "global-micro-batch" : "micro-batch-per-rank", worst[0], worst[1], worst[2]);
    free(init);
    mn_trainer_destroy(&ref);
    mn_trainer_destroy(&t);
    return MN_OK;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED)) return 1;
    mn_test_expect_size();
    int sync = argc > 1 && !strcmp(argv[1], "syncbn");
    mn_err e = run(sync);
    if (e) mn_mpi_exit_error(MPI_COMM_WORLD, e);
    int fails = mn_test_failures, any = 0;
    MPI_Allreduce(&fails, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int rc = rank == 0 ? mn_test_finish("test_equivalence") : (fails != 0);
    MPI_Finalize();
    return any ? 1 : rc;
}
