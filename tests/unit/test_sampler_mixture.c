/* test_sampler_mixture.c: the sampling rule with importance weights (mednet/sampler.h) gives the rule's dataset
 * mixture for every rank count, although each rank draws uniformly from its own shard.
 *
 * For two in-memory corpora (4 pre-training datasets of 1 volume each, like the default mricron corpus, and an
 * uneven one of 1, 2, 3 and 6 volumes) and P = 1..5 ranks: the plan comes from mn_shard_assign, each rank gets an
 * in-memory shard of tiny volumes (8^3, label 1 everywhere) in plan order, a sampler with the weights of
 * mn_sampler_weights, and draws STEPS x BATCH samples with mn_sampler_next_weighted.  The weighted mixture
 *
 *     share(d) = sum of the weights of the samples of dataset d (all ranks) / sum of all weights
 *
 * must match the rule: MN_MIXTURE_VOLUMES -> the dataset's share of the volumes, MN_MIXTURE_DATASETS -> 1/4.
 *
 * Tolerance: TOL = 0.03 absolute.  share(d) is a ratio of sums of independent draws; its standard deviation
 * follows exactly from the plan and the weights (delta method, computed below as `sd` for every cell and printed).
 * Importance weights raise it: on the uneven corpus under the `datasets` rule one rank's weights differ by 6x, and
 * with 800 draws per rank sd reaches 0.024 there (P = 1), so TOL would be barely one sd.  With 10000 draws per
 * rank (5000 steps x batch 2, a fraction of a second) the largest sd is about 0.007, and TOL >= 4 sd is checked
 * in every cell.  The draws are deterministic from (seed, rank, step), so the verdict is the same every run.
 *
 * The defect the weights fix: without them (all weights 1) the mixture follows the shard sizes, at P = 3 on the
 * 4 x 1 corpus 1/3, 1/3, 1/6, 1/6 instead of 1/4 each.  The UNWEIGHTED mixture is checked to be that far off
 * (more than 0.06 from the rule, more than twice TOL), so the test would fail with weights all 1.
 *
 * Serial, no files: only the plan, the weights and the sampler are exercised.
 */
#include "mednet/corpus.h"
#include "mednet/sampler.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NDS 4
#define EDGE 8
#define STEPS 5000
#define BATCH 2
#define TOL 0.03

/* A corpus of NDS pre-training datasets with nvol[d] volumes of EDGE^3 voxels each (metadata only). */
static mn_corpus_info *make_info(const int *nvol)
{
    mn_corpus_info *info = calloc(1, sizeof *info);
    int total = 0;
    for (int d = 0; d < NDS; d++) total += nvol[d];
    info->datasets = calloc(NDS, sizeof *info->datasets);
    info->volumes = calloc((size_t)total, sizeof *info->volumes);
    if (!info->datasets || !info->volumes) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    snprintf(info->path, sizeof info->path, "(in memory)");
    snprintf(info->name, sizeof info->name, "mixture");
    info->num_datasets = NDS;
    info->num_volumes = total;
    int v = 0;
    for (int d = 0; d < NDS; d++) {
        mn_corpus_dataset *ds = &info->datasets[d];
        snprintf(ds->name, sizeof ds->name, "ds%d", d);
        ds->role = MN_ROLE_PRETRAIN;
        ds->num_classes = 2;
        ds->num_volumes = nvol[d];
        ds->first_volume = v;
        for (int i = 0; i < nvol[d]; i++, v++) {
            info->volumes[v].dataset = d;
            info->volumes[v].index = i;
            info->volumes[v].shape[0] = info->volumes[v].shape[1] = info->volumes[v].shape[2] = EDGE;
            info->volumes[v].foreground_share = 1;
        }
    }
    return info;
}

static void free_info(mn_corpus_info *info)
{
    free(info->datasets);
    free(info->volumes);
    free(info);
}

/* Draw STEPS x BATCH samples on every rank of a P-rank plan; wsum/nsum[d] receive the weight sums and sample
 * counts per dataset over all ranks, sd[d] the standard deviation of the weighted share (see the file comment). */
static int run_plan(const mn_corpus_info *info, int P, mn_mixture mix, const float *image, const uint8_t *label,
                    double *wsum, double *nsum, double *expect_share, double *sd)
{
    mn_shard_plan *plan = NULL;
    if (mn_shard_assign(info, P, 0, MN_ROLE_PRETRAIN, &plan) != MN_OK) return 1;
    for (int d = 0; d < NDS; d++) wsum[d] = nsum[d] = 0;
    /* Rule's probability of each dataset: volumes -> its share of the volumes; datasets -> 1/NDS. */
    for (int d = 0; d < NDS; d++)
        expect_share[d] = mix == MN_MIXTURE_DATASETS ? 1.0 / NDS
                                                     : (double)info->datasets[d].num_volumes / info->num_volumes;
    double var[NDS] = {0}, wmean_total = 0;
    int rc = 0;
    const int vox = EDGE * EDGE * EDGE;
    for (int r = 0; r < P && !rc; r++) {
        int nr = plan->offset[r + 1] - plan->offset[r];
        mn_shard shard = {.num_volumes = nr, .volumes = calloc((size_t)nr, sizeof(mn_shard_volume))};
        double *w = calloc((size_t)nr, sizeof *w);
        float *x = malloc(sizeof(float) * BATCH * vox);
        int32_t *lab = malloc(sizeof(int32_t) * BATCH * vox);
        if (!shard.volumes || !w || !x || !lab) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        for (int k = 0; k < nr; k++) {
            const mn_shard_item *it = &plan->items[plan->offset[r] + k];
            shard.volumes[k] = (mn_shard_volume){.dataset = it->dataset,
                                                 .volume = it->volume,
                                                 .shape = {EDGE, EDGE, EDGE},
                                                 .image = (float *)image,
                                                 .label = (uint8_t *)label};
        }
        mn_sampler_config cfg = {.crop = {4, 4, 4}, .fg_share = 0.5, .flip = {1, 1, 1}, .seed = 7, .mixture = mix};
        mn_sampler *s = NULL;
        mn_err e = mn_sampler_create(&shard, &cfg, r, &s);
        if (!e) e = mn_sampler_weights(info, plan, r, mix, w);
        if (!e) e = mn_sampler_set_weights(s, w);
        /* The exact variance of this rank's contribution to share(d) (delta method): per draw, the volume is
         * uniform over the shard, Z = w (1[dataset = d] - share(d)), variance mean(Z^2) - mean(Z)^2. */
        for (int d = 0; d < NDS && !e; d++) {
            double m1 = 0, m2 = 0;
            for (int k = 0; k < nr; k++) {
                double z = w[k] * ((shard.volumes[k].dataset == d) - expect_share[d]);
                m1 += z / nr, m2 += z * z / nr;
            }
            var[d] += (double)STEPS * BATCH * (m2 - m1 * m1);
        }
        for (int k = 0; k < nr && !e; k++) wmean_total += (double)STEPS * BATCH * w[k] / nr;
        int ds[BATCH];
        float wt[BATCH];
        for (int64_t step = 0; step < STEPS && !e; step++) {
            e = mn_sampler_next_weighted(s, step, BATCH, x, lab, ds, wt);
            for (int i = 0; i < BATCH && !e; i++) {
                TEST_EXPECT(ds[i] >= 0 && ds[i] < NDS && wt[i] > 0, "P=%d rank %d: sample dataset %d weight %g", P,
                            r, ds[i], wt[i]);
                if (ds[i] >= 0 && ds[i] < NDS) wsum[ds[i]] += wt[i], nsum[ds[i]] += 1;
            }
        }
        if (e) {
            fprintf(stderr, "FAIL: sampler error %s at P=%d rank %d\n", mn_err_name(e), P, r);
            rc = 1;
        }
        mn_sampler_destroy(&s);
        free(shard.volumes);
        free(w);
        free(x);
        free(lab);
    }
    for (int d = 0; d < NDS; d++) sd[d] = sqrt(var[d] > 0 ? var[d] : 0) / wmean_total;
    mn_shard_plan_destroy(&plan);
    return rc;
}

/* Checks one corpus layout under one rule for P = 1..5; prints the table.  Returns the worst weighted error. */
static double check_layout(const char *label_, const int *nvol, mn_mixture mix, const float *image,
                           const uint8_t *label)
{
    mn_corpus_info *info = make_info(nvol);
    double worst = 0;
    printf("\n%s, mixture = %s\n", label_, mix == MN_MIXTURE_DATASETS ? "datasets" : "volumes");
    printf("  P  dataset  volumes  expected  weighted  unweighted     sd\n");
    for (int P = 1; P <= 5; P++) {
        double wsum[NDS], nsum[NDS], expect[NDS], sd[NDS];
        if (run_plan(info, P, mix, image, label, wsum, nsum, expect, sd)) {
            mn_test_failures++;
            continue;
        }
        double wt = 0, nt = 0;
        for (int d = 0; d < NDS; d++) wt += wsum[d], nt += nsum[d];
        for (int d = 0; d < NDS; d++) {
            double ws = wsum[d] / wt, us = nsum[d] / nt, err = fabs(ws - expect[d]);
            printf("  %d  %7d  %7d  %8.4f  %8.4f  %10.4f  %.4f\n", P, d, nvol[d], expect[d], ws, us, sd[d]);
            TEST_EXPECT(err <= TOL, "%s, P=%d, dataset %d: weighted share %.4f, rule %.4f (|diff| %.4f > %.2f)",
                        label_, P, d, ws, expect[d], err, TOL);
            TEST_EXPECT(TOL >= 4 * sd[d], "%s, P=%d, dataset %d: tolerance %.2f is less than 4 sd = %.4f", label_, P,
                        d, TOL, 4 * sd[d]);
            if (err > worst) worst = err;
        }
    }
    free_info(info);
    return worst;
}

int main(void)
{
    static float image[EDGE * EDGE * EDGE];
    static uint8_t label[EDGE * EDGE * EDGE];
    for (int i = 0; i < EDGE * EDGE * EDGE; i++) image[i] = (float)(i % 7) * 0.1f, label[i] = 1;
    const int one[NDS] = {1, 1, 1, 1}, uneven[NDS] = {1, 2, 3, 6};

    double worst = 0, w;
    w = check_layout("4 datasets x 1 volume", one, MN_MIXTURE_VOLUMES, image, label);
    worst = w > worst ? w : worst;
    w = check_layout("4 datasets x 1 volume", one, MN_MIXTURE_DATASETS, image, label);
    worst = w > worst ? w : worst;
    w = check_layout("datasets of 1, 2, 3, 6 volumes", uneven, MN_MIXTURE_VOLUMES, image, label);
    worst = w > worst ? w : worst;
    w = check_layout("datasets of 1, 2, 3, 6 volumes", uneven, MN_MIXTURE_DATASETS, image, label);
    worst = w > worst ? w : worst;

    /* The defect the weights fix: P = 3 on the 4 x 1 corpus, unweighted shares follow the shards (1/3, 1/3, 1/6,
     * 1/6), far from the rule's 1/4. */
    mn_corpus_info *info = make_info(one);
    double wsum[NDS], nsum[NDS], expect[NDS], sd[NDS], nt = 0, off = 0;
    if (run_plan(info, 3, MN_MIXTURE_VOLUMES, image, label, wsum, nsum, expect, sd)) mn_test_failures++;
    for (int d = 0; d < NDS; d++) nt += nsum[d];
    for (int d = 0; d < NDS; d++) off = fmax(off, fabs(nsum[d] / nt - expect[d]));
    printf("\nunweighted at P=3 on 4 x 1: shares %.4f %.4f %.4f %.4f, worst |diff| from 1/4 = %.4f (must be > %.2f)\n",
           nsum[0] / nt, nsum[1] / nt, nsum[2] / nt, nsum[3] / nt, off, 2 * TOL);
    TEST_EXPECT(off > 2 * TOL, "unweighted mixture at P=3 is within %.4f of the rule: the test cannot tell the "
                "weights from none", off);
    free_info(info);

    printf("worst weighted |share - rule| over all layouts, rules and P = 1..5: %.4f (tolerance %.2f)\n", worst, TOL);
    return mn_test_finish("test_sampler_mixture");
}
