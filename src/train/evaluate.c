/* evaluate.c: the evaluator (src/train/train_impl.h): mean foreground Dice per dataset on fixed crops of each
 * rank's shard, with batch norm in eval mode; for a classifier (model.head = cls) the accuracy and the mean
 * per-class accuracy instead, from counts summed over the ranks.  The crops come from a second sampler with its own seed and no
 * intensity jitter, so every evaluation of a run sees the same crops; with sampler.holdout > 0 their labels are
 * those of the held-out slab only (mednet/sampler.h). */
#include "train/train_impl.h"

#include "mednet/layers.h"
#include "mednet/loss.h"
#include "mednet/mem.h"
#include "mednet/mpicheck.h"

#include <math.h>
#include <string.h>

struct mn_evaluator {
    mn_sampler *sampler;
    mn_prefetch *pf;
    int batch, crop[3];
    float *x;
    int32_t *labels, *labels_small;
    int *ds;
};

mn_err mn_eval_create(mn_reader *rd, mn_prefetch *pf, const mn_sampler_config *scfg, int rank, int batch,
                      mn_evaluator **out)
{
    *out = NULL;
    mn_evaluator *ev = NULL;
    MN_CALL(mn_calloc(sizeof *ev, "evaluator", (void **)&ev));
    mn_sampler_config ecfg = *scfg;
    ecfg.seed = scfg->seed + 0x5eedULL; /* evaluation crops: fixed, disjoint from the training stream */
    ecfg.jitter_scale = ecfg.jitter_shift = 0;
    ecfg.holdout_side = 1; /* with sampler.holdout > 0: Dice on the held-out slab only */
    ev->batch = batch;
    ev->pf = pf;
    memcpy(ev->crop, scfg->crop, sizeof ev->crop);
    size_t vox = (size_t)scfg->crop[0] * scfg->crop[1] * scfg->crop[2];
    mn_err e = mn_sampler_create_reader(rd, &ecfg, rank, &ev->sampler);
    if (!e) e = mn_malloc(sizeof(float) * vox * (size_t)batch, "evaluation batch", (void **)&ev->x);
    if (!e) e = mn_malloc(sizeof(int32_t) * vox * (size_t)batch, "evaluation labels", (void **)&ev->labels);
    if (!e)
        e = mn_malloc(sizeof(int32_t) * vox * (size_t)batch, "evaluation labels (logit size)",
                      (void **)&ev->labels_small);
    if (!e) e = mn_malloc(sizeof(int) * (size_t)batch, "evaluation dataset ids", (void **)&ev->ds);
    if (e) {
        mn_eval_destroy(&ev);
        MN_CALL(e);
    }
    *out = ev;
    return MN_OK;
}

void mn_eval_destroy(mn_evaluator **pev)
{
    if (!pev || !*pev) return;
    mn_evaluator *ev = *pev;
    mn_sampler_destroy(&ev->sampler);
    mn_free(&ev->x);
    mn_free(&ev->labels);
    mn_free(&ev->labels_small);
    mn_free(&ev->ds);
    mn_free(pev);
}

static double mean_finite(const double *v, int n)
{
    double s = 0;
    int c = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) s += v[i], c++;
    return c ? s / c : NAN;
}

/* Per dataset row: Dice sum and count (segmentation), or correct and total per class (classification). */
#define EVAL_SLOTS (2 + 2 * MN_CORPUS_MAX_CLASSES)

/* Classification: add each sample's outcome to acc (correct and total, overall then per class); a sample whose
 * label is ignored (outside the held-out slab) does not count. */
static void count_classes(const mn_shape *ls, const float *logits, const int32_t *lab, size_t vox, double *acc)
{
    for (int j = 0; j < ls->n; j++) {
        int y = lab[(size_t)j * vox];
        if (y < 0 || y >= ls->c) continue;
        const float *l = logits + (size_t)j * ls->c;
        int best = 0;
        for (int k = 1; k < ls->c; k++)
            if (l[k] > l[best]) best = k;
        acc[0] += best == y, acc[1] += 1;
        acc[2 + 2 * y] += best == y, acc[3 + 2 * y] += 1;
    }
}

mn_err mn_eval_run(mn_evaluator *ev, mn_trainer *t, long nbatches, double *score, double *balanced)
{
    mn_parts *p = mn_trainer_parts(t);
    mn_model *m = mn_trainer_model(t);
    const int cls = mn_model_config_of(m)->head_kind == MN_HEAD_CLS;
    int n = ev->batch;
    size_t vox = (size_t)ev->crop[0] * ev->crop[1] * ev->crop[2];
    double *acc = NULL; /* [EVAL_SLOTS * nrows] */
    MN_CALL(mn_calloc(sizeof(double) * EVAL_SLOTS * (size_t)p->nrows, "eval sums", (void **)&acc));
    mn_model_set_training(m, 0);
    mn_err e = MN_OK;
    mn_head_batch hb[MN_MODEL_MAX_HEADS];
    int rows[MN_MODEL_MAX_HEADS];
    for (long b = 0; b < nbatches && !e; b++) {
        e = mn_prefetch_next(ev->pf, ev->sampler, b, n, ev->x, ev->labels, ev->ds, NULL, 0);
        int nhb = 0;
        for (int i = 0; i < n && !e;) {
            int j = i;
            while (j < n && ev->ds[j] == ev->ds[i]) j++;
            rows[nhb] = mn_parts_row_of(p, ev->ds[i]);
            hb[nhb] = (mn_head_batch){.head = p->row[rows[nhb]].head, .offset = i, .count = j - i};
            nhb++;
            i = j;
        }
        if (!e) e = mn_model_forward(m, ev->x, hb, nhb);
        for (int i = 0; i < nhb && !e; i++) {
            mn_shape ls;
            const float *logits = mn_model_logits(m, i, &ls);
            const int32_t *lab = ev->labels + (size_t)hb[i].offset * vox;
            double *a = acc + EVAL_SLOTS * (size_t)rows[i];
            if (cls) {
                count_classes(&ls, logits, lab, vox, a);
                continue;
            }
            mn_shape full = {hb[i].count, 1, ev->crop[0], ev->crop[1], ev->crop[2]};
            if (ls.d != full.d || ls.h != full.h || ls.w != full.w) {
                mn_shape small = {ls.n, 1, ls.d, ls.h, ls.w};
                e = mn_labels_resize_nearest(&full, lab, &small, ev->labels_small);
                lab = ev->labels_small;
            }
            double dc[MN_CORPUS_MAX_CLASSES];
            if (!e) e = mn_dice_hard(&ls, logits, lab, MN_LABEL_IGNORE, dc);
            double s = 0;
            int cnt = 0;
            for (int cl = 1; cl < ls.c && !e; cl++)
                if (!isnan(dc[cl])) s += dc[cl], cnt++;
            if (cnt) a[0] += s / cnt, a[1] += 1;
        }
    }
    mn_model_set_training(m, 1);
    /* A local failure here (a bad label) must not leave the others in the reduction: agree first. */
    e = mn_agree(p->dist->world, e);
    if (!e)
        e = mn_mpi_report_if(MPI_Allreduce(MPI_IN_PLACE, acc, EVAL_SLOTS * p->nrows, MPI_DOUBLE, MPI_SUM,
                                           p->dist->world));
    for (int k = 1; k < p->nrows && !e; k++) {
        const double *a = acc + EVAL_SLOTS * (size_t)k;
        score[k] = a[1] > 0 ? a[0] / a[1] : NAN;
        double s = 0;
        int c = 0;
        for (int y = 0; cls && y < MN_CORPUS_MAX_CLASSES; y++)
            if (a[3 + 2 * y] > 0) s += a[2 + 2 * y] / a[3 + 2 * y], c++;
        balanced[k] = c ? s / c : NAN;
    }
    score[0] = e ? NAN : mean_finite(score + 1, p->nrows - 1);
    balanced[0] = e ? NAN : mean_finite(balanced + 1, p->nrows - 1);
    mn_free(&acc);
    MN_CALL(e);
    return MN_OK;
}
