/* sampler.c: random crops with foreground oversampling, flips and intensity jitter (see mednet/sampler.h).
 *
 * Every voxel comes through a shard reader (mednet/reader.h): the part of a crop inside its volume is read as one
 * box, and foreground centres come from the reader's per-chunk class counts, so the same code serves a shard in
 * memory and one streamed from the corpus file, with bitwise identical crops.
 *
 * A call first draws every random decision (volume, centre, flips, jitter) for its n samples in draw order from
 * one generator seeded by (seed, rank, step), then orders the samples by dataset (stable insertion sort: n is a
 * batch size), then copies the crops.  Drawing before ordering keeps the draws independent of the ordering.
 * The generator is splitmix64 (one 64-bit state, passes BigCrush, trivially seedable from a hash).
 * A crop of a classification volume carries the volume's class in every label voxel (the trainer and evaluator
 * take the first), so batches keep one layout whatever the task.
 */
#include "mednet/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct mn_sampler {
    mn_reader *rd;
    int own_reader;  /* created over an in-memory shard by mn_sampler_create */
    mn_sampler_config cfg;
    int rank;
    double *weight;  /* [shard volumes]: importance weight of a sample of each volume (default 1) */
    float *box;      /* one crop's image box and label box, read through the reader */
    uint8_t *boxl;
};

typedef struct draw {
    int vol;
    int64_t origin[3];
    int flip[3];
    float scale, shift;
} draw;

static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double next_unit(uint64_t *s) { return (double)(next_u64(s) >> 11) / 9007199254740992.0; }

/* Uniform integer in [lo, hi]. */
static int64_t next_range(uint64_t *s, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(next_u64(s) % (uint64_t)(hi - lo + 1));
}

mn_err mn_sampler_config_read(mn_config *cfg, const char *section, mn_sampler_config *out)
{
    memset(out, 0, sizeof *out);
    double c[3];
    int n = 0;
    MN_CALL(mn_config_doubles(cfg, section, "crop", c, 3, &n));
    MN_CHECK(n == 0 || n == 1 || n == 3, MN_ERR_CONFIG, "config %s: [%s] crop: expected 1 or 3 integers, got %d",
             mn_config_origin(cfg), section, n);
    for (int a = 0; a < 3; a++) {
        double v = n == 0 ? 32 : c[n == 1 ? 0 : a];
        MN_CHECK(v >= 1 && v <= 1024 && v == floor(v), MN_ERR_CONFIG, "config %s: [%s] crop: %g is not an integer "
                 "in [1, 1024]", mn_config_origin(cfg), section, v);
        out->crop[a] = (int)v;
    }
    MN_CALL(mn_config_double(cfg, section, "fg_share", 0.33, 0, 1, &out->fg_share));
    int flip;
    MN_CALL(mn_config_bool(cfg, section, "flip", 1, &flip));
    out->flip[0] = out->flip[1] = out->flip[2] = flip;
    MN_CALL(mn_config_double(cfg, section, "jitter_scale", 0.1, 0, 1, &out->jitter_scale));
    MN_CALL(mn_config_double(cfg, section, "jitter_shift", 0.1, 0, 10, &out->jitter_shift));
    long seed;
    MN_CALL(mn_config_int(cfg, section, "seed", 0, 0, 0x7fffffffL, &seed));
    out->seed = (uint64_t)seed;
    static const char *const mixtures[] = {"volumes", "datasets", NULL};
    int mix = 0;
    MN_CALL(mn_config_choice(cfg, section, "mixture", "volumes", mixtures, &mix));
    out->mixture = (mn_mixture)mix;
    MN_CALL(mn_config_double(cfg, section, "holdout", 0, 0, 0.9, &out->holdout));
    return MN_OK;
}

void mn_sampler_destroy(mn_sampler **ps)
{
    if (!ps || !*ps) return;
    mn_sampler *s = *ps;
    if (s->own_reader) mn_reader_destroy(&s->rd);
    free(s->weight);
    free(s->box);
    free(s->boxl);
    free(s);
    *ps = NULL;
}

mn_err mn_sampler_create_reader(mn_reader *rd, const mn_sampler_config *cfg, int rank, mn_sampler **out)
{
    *out = NULL;
    MN_CHECK(rd && mn_reader_num_volumes(rd) > 0, MN_ERR_ARG, "sampler: rank %d has an empty shard", rank);
    for (int a = 0; a < 3; a++)
        MN_CHECK(cfg->crop[a] > 0, MN_ERR_ARG, "sampler: crop extent %d on axis %d must be > 0", cfg->crop[a], a);
    MN_CHECK(cfg->fg_share >= 0 && cfg->fg_share <= 1, MN_ERR_ARG, "sampler: fg_share %g outside [0, 1]",
             cfg->fg_share);
    mn_sampler *s = calloc(1, sizeof *s);
    MN_CHECK(s, MN_ERR_MEM, "out of memory");
    s->rd = rd, s->cfg = *cfg, s->rank = rank;
    int nv = mn_reader_num_volumes(rd);
    size_t vox = (size_t)cfg->crop[0] * (size_t)cfg->crop[1] * (size_t)cfg->crop[2];
    s->weight = malloc((size_t)nv * sizeof *s->weight);
    s->box = malloc(vox * sizeof *s->box);
    s->boxl = malloc(vox);
    if (!s->weight || !s->box || !s->boxl) {
        mn_sampler_destroy(&s);
        MN_FAIL(MN_ERR_MEM, "out of memory");
    }
    for (int v = 0; v < nv; v++) s->weight[v] = 1.0;
    *out = s;
    return MN_OK;
}

mn_err mn_sampler_create(const mn_shard *shard, const mn_sampler_config *cfg, int rank, mn_sampler **out)
{
    *out = NULL;
    MN_CHECK(shard && shard->num_volumes > 0, MN_ERR_ARG, "sampler: rank %d has an empty shard", rank);
    mn_reader *rd = NULL;
    MN_CALL(mn_reader_create_memory(shard, &rd));
    mn_err e = mn_sampler_create_reader(rd, cfg, rank, out);
    if (e) {
        mn_reader_destroy(&rd);
        MN_CALL(e);
    }
    (*out)->own_reader = 1;
    return MN_OK;
}

/* Copy one crop (with flips, jitter and padding) into x and labels: the part inside the volume is read as one box
 * through the reader. */
static mn_err render(mn_sampler *s, const draw *dr, float *x, int32_t *labels)
{
    const int64_t *shape = mn_reader_shape(s->rd, dr->vol);
    const int *c = s->cfg.crop;
    /* The held-out slab starts at z = held (the depth when nothing is held out). */
    const int64_t held = s->cfg.holdout > 0 ? (int64_t)ceil((1.0 - s->cfg.holdout) * (double)shape[0]) : shape[0];
    const int val = s->cfg.holdout > 0 && s->cfg.holdout_side;
    int64_t lo[3], hi[3];
    int empty = 0;
    for (int a = 0; a < 3; a++) {
        lo[a] = dr->origin[a] < 0 ? 0 : dr->origin[a];
        hi[a] = dr->origin[a] + c[a] > shape[a] ? shape[a] : dr->origin[a] + c[a];
        if (lo[a] >= hi[a]) empty = 1;
    }
    if (!empty) MN_CALL(mn_reader_box(s->rd, dr->vol, lo, hi, s->box, s->boxl));
    const int64_t bh = hi[1] - lo[1], bw = hi[2] - lo[2];
    int64_t o = 0;
    for (int z = 0; z < c[0]; z++) {
        int64_t vz = dr->origin[0] + (dr->flip[0] ? c[0] - 1 - z : z);
        for (int y = 0; y < c[1]; y++) {
            int64_t vy = dr->origin[1] + (dr->flip[1] ? c[1] - 1 - y : y);
            for (int xx = 0; xx < c[2]; xx++, o++) {
                int64_t vx = dr->origin[2] + (dr->flip[2] ? c[2] - 1 - xx : xx);
                if (empty || vz < lo[0] || vz >= hi[0] || vy < lo[1] || vy >= hi[1] || vx < lo[2] || vx >= hi[2]) {
                    x[o] = 0;
                    labels[o] = MN_LABEL_IGNORE;
                    continue;
                }
                int64_t i = (vx - lo[2]) + bw * ((vy - lo[1]) + bh * (vz - lo[0]));
                x[o] = s->box[i] * dr->scale + dr->shift;
                labels[o] = (vz >= held) == val ? s->boxl[i] : MN_LABEL_IGNORE;
            }
        }
    }
    /* A classification volume: the whole crop carries the volume's class.  With a held-out slab a training crop
     * counts only when it lies wholly below the slab, a validation crop only when its centre lies in it, so no
     * validation crop is centred on voxels a training crop was labelled with. */
    const int cls = mn_reader_class(s->rd, dr->vol);
    if (cls >= 0) {
        int use = s->cfg.holdout <= 0 || (val ? dr->origin[0] + c[0] / 2 >= held : dr->origin[0] + c[0] <= held);
        const size_t vox = (size_t)c[0] * (size_t)c[1] * (size_t)c[2];
        for (size_t k = 0; k < vox; k++) labels[k] = use ? cls : MN_LABEL_IGNORE;
    }
    return MN_OK;
}

mn_err mn_sampler_next(mn_sampler *s, int64_t step, int n, float *x, int32_t *labels, int *dataset)
{
    return mn_sampler_next_weighted(s, step, n, x, labels, dataset, NULL);
}

mn_err mn_sampler_weights(const mn_corpus_info *info, const mn_shard_plan *plan, int rank, mn_mixture mixture,
                          double *weight)
{
    MN_CHECK(info && plan && weight && rank >= 0 && rank < plan->nranks, MN_ERR_ARG, "sampler weights: bad arguments");
    /* q(v): probability that one draw of a random rank lands on volume v; the rank draws its shard uniformly. */
    double *q = calloc((size_t)info->num_volumes, sizeof *q);
    int *dsvol = calloc((size_t)info->num_datasets, sizeof *dsvol);
    if (!q || !dsvol) {
        free(q);
        free(dsvol);
        MN_FAIL(MN_ERR_MEM, "out of memory for the sampling weights of %d volumes", info->num_volumes);
    }
    int nds = 0, nvol = 0;
    for (int r = 0; r < plan->nranks; r++) {
        int nr = plan->offset[r + 1] - plan->offset[r];
        for (int i = plan->offset[r]; i < plan->offset[r + 1]; i++)
            q[plan->items[i].volume] += 1.0 / ((double)plan->nranks * nr);
    }
    for (int v = 0; v < info->num_volumes; v++)
        if (q[v] > 0) {
            if (dsvol[info->volumes[v].dataset]++ == 0) nds++;
            nvol++;
        }
    /* pi(v): the rule's probability of volume v among the volumes in the plan. */
    int k = 0;
    for (int i = plan->offset[rank]; i < plan->offset[rank + 1]; i++, k++) {
        int v = plan->items[i].volume;
        double pi = mixture == MN_MIXTURE_DATASETS ? 1.0 / ((double)nds * dsvol[info->volumes[v].dataset])
                                                   : 1.0 / nvol;
        weight[k] = pi / q[v];
    }
    free(q);
    free(dsvol);
    return MN_OK;
}

mn_err mn_sampler_set_weights(mn_sampler *s, const double *weight)
{
    MN_CHECK(s && weight, MN_ERR_ARG, "sampler: NULL weights");
    for (int v = 0; v < mn_reader_num_volumes(s->rd); v++) {
        MN_CHECK(isfinite(weight[v]) && weight[v] > 0, MN_ERR_ARG, "sampler: weight %g of shard volume %d is not "
                 "positive", weight[v], v);
        s->weight[v] = weight[v];
    }
    return MN_OK;
}

mn_err mn_sampler_next_weighted(mn_sampler *s, int64_t step, int n, float *x, int32_t *labels, int *dataset,
                                float *weight)
{
    MN_CHECK(n > 0 && step >= 0, MN_ERR_ARG, "sampler: n = %d and step = %lld must be positive", n, (long long)step);
    draw *dr = malloc((size_t)n * sizeof *dr);
    MN_CHECK(dr, MN_ERR_MEM, "out of memory");
    /* The generator state is a hash of (seed, rank, step): no dependence on earlier calls. */
    uint64_t st = s->cfg.seed * 0x9E3779B97F4A7C15ULL;
    next_u64(&st);
    st ^= (uint64_t)s->rank * 0xD1B54A32D192ED03ULL;
    next_u64(&st);
    st ^= (uint64_t)step * 0x8CB92BA72F3D8DD7ULL;
    next_u64(&st);
    const int *c = s->cfg.crop;
    const int nv = mn_reader_num_volumes(s->rd);
    mn_err e = MN_OK;
    for (int k = 0; k < n && !e; k++) {
        draw *d = &dr[k];
        d->vol = (int)next_range(&st, 0, nv - 1);
        const int64_t *shape = mn_reader_shape(s->rd, d->vol);
        const mn_reader_fg *f = NULL;
        int fg = next_unit(&st) < s->cfg.fg_share;
        if (fg) {
            e = mn_reader_foreground(s->rd, d->vol, &f);
            fg = !e && f->n > 0;
        }
        if (fg) {
            /* A foreground class present in the volume, uniformly, then one of its voxels: small structures are
             * centred as often as large ones (nnU-Net's rule).  Voxels are counted in chunk order (reader.h). */
            int cls = (int)next_range(&st, 0, f->nclasses - 1);
            int64_t p[3];
            e = mn_reader_fg_voxel(s->rd, d->vol, cls, next_range(&st, 0, f->total[cls] - 1), p);
            for (int a = 0; a < 3; a++) d->origin[a] = p[a] - c[a] / 2;
        } else {
            for (int a = 0; a < 3; a++) {
                int64_t lo = shape[a] - c[a] < 0 ? shape[a] - c[a] : 0;
                int64_t hi = shape[a] - c[a] > 0 ? shape[a] - c[a] : 0;
                d->origin[a] = next_range(&st, lo, hi);
            }
        }
        for (int a = 0; a < 3; a++) d->flip[a] = s->cfg.flip[a] && (next_u64(&st) >> 63);
        d->scale = (float)(1.0 + s->cfg.jitter_scale * (2 * next_unit(&st) - 1));
        d->shift = (float)(s->cfg.jitter_shift * (2 * next_unit(&st) - 1));
    }
    /* Stable order by dataset index, so each head sees a contiguous sub-batch. */
    for (int i = 1; i < n && !e; i++)
        for (int j = i; j > 0 && mn_reader_dataset(s->rd, dr[j - 1].vol) > mn_reader_dataset(s->rd, dr[j].vol); j--) {
            draw t = dr[j];
            dr[j] = dr[j - 1], dr[j - 1] = t;
        }
    size_t vox = (size_t)c[0] * (size_t)c[1] * (size_t)c[2];
    for (int k = 0; k < n && !e; k++) {
        e = render(s, &dr[k], x + (size_t)k * vox, labels + (size_t)k * vox);
        if (dataset) dataset[k] = mn_reader_dataset(s->rd, dr[k].vol);
        if (weight) weight[k] = (float)s->weight[dr[k].vol];
    }
    free(dr);
    MN_CALL(e);
    return MN_OK;
}
