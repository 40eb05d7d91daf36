/* test_equivalence: the data-parallel contract of DESIGN.md, on P ranks.
 *
 * Two datasets; rank r holds dataset r % 2 (with one rank: both).  Each rank trains a ResNet-10 + conv_seg replica
 * for a few SGD steps on its own deterministic synthetic batch (virtual rank v = r), with the encoder gradient
 * reduced by the bucketed reducer during backward and each head over the ranks that hold its dataset.  Every rank
 * then replays the same global batches on one model holding both heads, as P micro-batches accumulated on one
 * rank, with the gradients divided by the global (encoder) and per-dataset (head) sample counts, and checks:
 *   - the encoder and head UPDATES (parameters after minus before) equal the single-rank reference's to 1e-5
 *     relative in the 2-norm, ||u_P - u_1|| / ||u_1||; the worst element-wise difference of the parameters is
 *     printed too (float32 sums in another order: a few ulps);
 *   - the encoder is bitwise identical on every rank, each head among its holders (replica checksums);
 *   - a rank that does not hold dataset d holds no head d (the model has only the heads it was given).
 * With the argument `syncbn`: synchronised batch norm of the encoder (sums all-reduced per layer in forward and
 * backward), Med3D branch heads (no batch norm), and the reference is ONE batch of P x BATCH samples on one rank,
 * the global batch whose statistics SyncBN reproduces.
 */
#include "mednet/dist.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"
#include "mednet/optim.h"
#include "mednet/threads.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

enum { NDS = 2, STEPS = 3, BATCH = 2, SIDE = 16 };
static const int classes[NDS] = {3, 2};

/* Batch of virtual rank v at step s: inputs in [-1, 1), labels in [0, classes) of dataset v % 2. */
static void make_batch(int v, int s, float *x, int32_t *lab, size_t vox)
{
    mn_test_rng rng = {0x9e3779b97f4a7c15ULL ^ ((uint64_t)(v + 1) << 20) ^ (uint64_t)(s + 1)};
    mn_test_fill(&rng, x, BATCH * vox, 1.0f);
    for (size_t i = 0; i < BATCH * vox; i++) lab[i] = (int32_t)(mn_test_rng_u64(&rng) % (uint64_t)classes[v % NDS]);
}

static int g_sync; /* 1: SyncBN mode */

static mn_model_config model_cfg(const mn_head_spec *heads, int nheads, int batch)
{
    mn_model_config c = mn_model_config_default();
    c.depth = 10;
    c.head_kind = g_sync ? MN_HEAD_BRANCH : MN_HEAD_SEG;
    c.nheads = nheads;
    c.heads = heads;
    c.prefix_heads = 1;
    c.input = (mn_shape){batch, 1, SIDE, SIDE, SIDE};
    c.loss.ce_weight = 1;
    c.loss.ignore_label = -1;
    c.seed = 5;
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

/* SyncBN callback: all-reduce the sums and the count over the world. */
static mn_err sync_world(void *ctx, double *sums, int n, double *count)
{
    (void)ctx;
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, sums, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, count, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
    return MN_OK;
}

typedef struct hook_ctx {
    mn_reducer *red;
    mn_err err;
} hook_ctx;
static void on_ready(void *p, size_t off, size_t n)
{
    hook_ctx *h = p;
    if (!h->err) h->err = mn_reducer_ready(h->red, off, n);
}
static void on_progress(void *p)
{
    hook_ctx *h = p;
    if (!h->err) h->err = mn_reducer_progress(h->red);
}

static mn_err run(void)
{
    int rank, size;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    MN_CALL(mn_threads_init(1));
    const size_t vox = (size_t)SIDE * SIDE * SIDE;
    float *x = malloc(sizeof(float) * BATCH * vox);
    int32_t *lab = malloc(sizeof(int32_t) * BATCH * vox);
    MN_CHECK(x && lab, MN_ERR_MEM, "out of memory");

    /* Holder table: dataset d on ranks r with r % 2 == d (one rank holds both). */
    int holders[NDS * 4 * 64];
    for (int d = 0; d < NDS; d++)
        for (int r = 0; r < size; r++) holders[d * size + r] = size == 1 || r % NDS == d;
    mn_dist *dist = NULL;
    MN_CALL(mn_dist_create(MPI_COMM_WORLD, NDS, holders, &dist));
    mn_head_spec held[NDS];
    int nheld = 0, hidx[NDS] = {-1, -1};
    for (int d = 0; d < NDS; d++)
        if (mn_dist_holds(dist, d)) hidx[d] = nheld, held[nheld++] = (mn_head_spec){d, classes[d]};
    mn_model_config mc = model_cfg(held, nheld, BATCH);
    mn_model *m = NULL;
    MN_CALL(mn_model_create(&mc, &m));
    if (g_sync) mn_model_set_bn_sync(m, sync_world, NULL);
    float *init = malloc(sizeof(float) * mn_model_num_params(m));
    MN_CHECK(init, MN_ERR_MEM, "out of memory");
    memcpy(init, mn_model_params(m), sizeof(float) * mn_model_num_params(m));
    /* A rank not holding d has no head d: its model has exactly the held heads and no tensor named heads.<d>. */
    for (int d = 0; d < NDS; d++) {
        char name[64];
        snprintf(name, sizeof name, g_sync ? "heads.%d.branch.weight" : "heads.%d.conv_seg.0.weight", d);
        TEST_EXPECT((mn_model_find_tensor(m, name) >= 0) == mn_dist_holds(dist, d), "rank %d head %d presence", rank, d);
    }
    mn_optim_config oc = mn_optim_defaults();
    oc.lr = 0.01;
    oc.schedule = MN_SCHED_CONSTANT;
    mn_optim *opt = NULL;
    MN_CALL(mn_optim_create(&oc, mn_model_num_params(m), &opt));
    mn_range enc = mn_model_param_range(m, -1);
    mn_reducer *red = NULL;
    MN_CALL(mn_reducer_create(dist->world, mn_model_grads(m), enc, (size_t)4 << 20, NULL, &red));
    hook_ctx hc = {red, MN_OK};
    mn_model_set_hooks(m, on_ready, on_progress, &hc);

    /* ---- the P-rank run ---- */
    for (int s = 0; s < STEPS; s++) {
        make_batch(rank, s, x, lab, vox);
        int d = rank % NDS;
        mn_head_batch hb = {hidx[d], 0, BATCH};
        MN_CALL(mn_model_zero_grad(m));
        MN_CALL(mn_reducer_start(red, BATCH));
        MN_CALL(mn_model_forward(m, x, &hb, 1));
        double loss;
        MN_CALL(mn_model_loss(m, 0, lab, (float)BATCH, &loss));
        MN_CALL(mn_model_backward(m));
        MN_CALL(hc.err);
        mn_reducer_stats st;
        MN_CALL(mn_reducer_finish(red, &st));
        TEST_EXPECT(st.total_samples == (double)BATCH * size, "global sample count %g", st.total_samples);
        double total[NDS] = {0, 0};
        for (int dd = 0; dd < NDS; dd++)
            if (hidx[dd] >= 0)
                MN_CALL(mn_dist_reduce_head(dist, dd, mn_model_grads(m), mn_model_param_range(m, hidx[dd]),
                                            dd == d ? BATCH : 0, &total[dd]));
        MN_CALL(mn_optim_update(opt, mn_model_params(m), mn_model_grads(m), enc.offset, enc.count, oc.lr, s + 1));
        for (int dd = 0; dd < NDS; dd++) {
            if (hidx[dd] < 0 || total[dd] <= 0) continue;
            mn_range hr = mn_model_param_range(m, hidx[dd]);
            MN_CALL(mn_optim_update(opt, mn_model_params(m), mn_model_grads(m), hr.offset, hr.count, oc.lr, s + 1));
        }
    }
    /* Replicas: encoder bitwise identical over the world, each head among its holders. */
    int nbad = 0;
    MN_CALL(mn_dist_check_replicas(dist->world, mn_model_params(m) + enc.offset, enc.count * sizeof(float),
                                   "encoder", &nbad));
    for (int d = 0; d < NDS; d++)
        if (hidx[d] >= 0) {
            mn_range hr = mn_model_param_range(m, hidx[d]);
            MN_CALL(mn_dist_check_replicas(dist->dcomm[d], mn_model_params(m) + hr.offset, hr.count * sizeof(float),
                                           "head", &nbad));
        }

    /* ---- the single-rank reference ----
     * local BN: P micro-batches of BATCH accumulated; SyncBN: one batch of P x BATCH samples, grouped by dataset. */
    mn_head_spec all[NDS] = {{0, classes[0]}, {1, classes[1]}};
    int rbatch = g_sync ? BATCH * size : BATCH;
    mn_model_config rc = model_cfg(all, NDS, rbatch);
    mn_model *ref = NULL;
    MN_CALL(mn_model_create(&rc, &ref));
    mn_optim *ropt = NULL;
    MN_CALL(mn_optim_create(&oc, mn_model_num_params(ref), &ropt));
    mn_range renc = mn_model_param_range(ref, -1);
    float *gx = malloc(sizeof(float) * (size_t)rbatch * vox);
    int32_t *glab = malloc(sizeof(int32_t) * (size_t)rbatch * vox);
    MN_CHECK(gx && glab, MN_ERR_MEM, "out of memory");
    for (int s = 0; s < STEPS; s++) {
        MN_CALL(mn_model_zero_grad(ref));
        double count[NDS] = {0, 0};
        if (g_sync) {
            /* The global batch, samples of dataset 0 first. */
            int at = 0;
            mn_head_batch hb[NDS];
            int nhb = 0;
            for (int d = 0; d < NDS; d++) {
                int start = at;
                for (int v = d; v < size; v += NDS) {
                    make_batch(v, s, gx + (size_t)at * vox, glab + (size_t)at * vox, vox);
                    at += BATCH;
                }
                if (at > start) hb[nhb++] = (mn_head_batch){d, start, at - start};
                count[d] = at - start;
            }
            MN_CALL(mn_model_forward(ref, gx, hb, nhb));
            for (int i = 0; i < nhb; i++) {
                double loss;
                /* scale = BATCH per virtual rank: the sum over ranks of each rank's mean loss */
                MN_CALL(mn_model_loss(ref, i, glab + (size_t)hb[i].offset * vox, (float)hb[i].count, &loss));
            }
            MN_CALL(mn_model_backward(ref));
        } else {
            for (int v = 0; v < size; v++) {
                make_batch(v, s, x, lab, vox);
                mn_head_batch hb = {v % NDS, 0, BATCH};
                MN_CALL(mn_model_forward(ref, x, &hb, 1));
                double loss;
                MN_CALL(mn_model_loss(ref, 0, lab, (float)BATCH, &loss));
                MN_CALL(mn_model_backward(ref));
                count[v % NDS] += BATCH;
            }
        }
        float *g = mn_model_grads(ref);
        for (size_t i = 0; i < renc.count; i++) g[renc.offset + i] /= (float)(BATCH * size);
        MN_CALL(mn_optim_update(ropt, mn_model_params(ref), g, renc.offset, renc.count, oc.lr, s + 1));
        for (int d = 0; d < NDS; d++) {
            if (count[d] <= 0) continue;
            mn_range hr = mn_model_param_range(ref, d);
            for (size_t i = 0; i < hr.count; i++) g[hr.offset + i] /= (float)count[d];
            MN_CALL(mn_optim_update(ropt, mn_model_params(ref), g, hr.offset, hr.count, oc.lr, s + 1));
        }
    }
    free(gx);
    free(glab);
    /* Compare the updates (from the common initialisation): encoder, and each held head against the reference
     * head of the same dataset.  Both models were initialised from the same seed by tensor name. */
    double e_enc = update_relerr(mn_model_params(m) + enc.offset, mn_model_params(ref) + renc.offset,
                                 init + enc.offset, enc.count);
    double a_enc = mn_test_max_relerr(mn_model_params(m) + enc.offset, mn_model_params(ref) + renc.offset, enc.count,
                                      1e-3);
    TEST_EXPECT(e_enc <= 1e-5, "rank %d: encoder update differs from the 1-rank reference: %.3e", rank, e_enc);
    double e_head = 0;
    for (int d = 0; d < NDS; d++) {
        if (hidx[d] < 0) continue;
        mn_range a = mn_model_param_range(m, hidx[d]), b = mn_model_param_range(ref, d);
        TEST_EXPECT(a.count == b.count, "head sizes");
        double e = update_relerr(mn_model_params(m) + a.offset, mn_model_params(ref) + b.offset, init + a.offset,
                                 a.count);
        if (e > e_head) e_head = e;
    }
    TEST_EXPECT(e_head <= 1e-5, "rank %d: head update differs from the 1-rank reference: %.3e", rank, e_head);
    double worst[3] = {e_enc, e_head, a_enc};
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, worst, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    if (rank == 0)
        printf("%s%d rank(s), %d steps: updates vs the 1-rank %s reference: encoder %.2e, heads %.2e "
               "(relative 2-norm); worst parameter element %.2e (relative, floor 1e-3); replicas bitwise identical\n",
               g_sync ? "SyncBN: " : "", size, STEPS, g_sync ? "global-batch" : "micro-batch", worst[0], worst[1],
               worst[2]);
    free(init);
    mn_reducer_destroy(&red);
    mn_optim_destroy(&opt);
    mn_optim_destroy(&ropt);
    mn_model_destroy(&m);
    mn_model_destroy(&ref);
    MN_CALL(mn_dist_destroy(&dist));
    free(x);
    free(lab);
    return MN_OK;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED)) return 1;
    g_sync = argc > 1 && !strcmp(argv[1], "syncbn");
    mn_err e = run();
    if (e) mn_mpi_abort(MPI_COMM_WORLD, e);
    int fails = mn_test_failures, any = 0;
    MPI_Allreduce(&fails, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int rc = rank == 0 ? mn_test_finish("test_equivalence") : (fails != 0);
    MPI_Finalize();
    return any ? 1 : rc;
}
