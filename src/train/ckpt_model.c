/* ckpt_model.c: a model rebuilt from a training checkpoint alone, or from a safetensors file and what its metadata
 * says (mednet/train.h), for export and inference; the one path by which both rebuild a model.
 *
 * The checkpoint records the run config (depth, shortcut, head kind, loss), its preprocessing record (an attribute,
 * absent in checkpoints of older mednet versions) and holds one group per head, heads/<dataset name>; a head's class
 * count is not recorded, so it is solved from the length of its parameter array: for every head kind that length is
 * affine in the class count, a + b * classes, with a and b measured on two parameter-only models.  Nothing here
 * needs the corpus the checkpoint was trained on.
 *
 * A safetensors file carries the tensors alone; `mednet export` writes what rebuilding needs into the header's
 * __metadata__ (the keys in mednet/train.h), and a hint (a run config, a record) fills what a file of another
 * origin lacks.  mn_ckpt_model_bcast keeps the rule of every multi-rank reader: one rank reads, the others receive.
 */
#include "mednet/train.h"

#include "mednet/ckpt.h"
#include "mednet/config.h"
#include "mednet/corpus.h"
#include "mednet/dist.h"
#include "mednet/mem.h"
#include "mednet/mpicheck.h"
#include "mednet/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_HEADS = MN_MODEL_MAX_HEADS };

/* Parameter count of head 0 of a parameter-only model of `base` with one head of `classes` classes. */
static mn_err head_params(const mn_model_config *base, int classes, size_t *count)
{
    mn_model_config c = *base;
    mn_head_spec h = {0, classes};
    c.nheads = 1;
    c.heads = &h;
    c.input = (mn_shape){0, 1, 0, 0, 0};
    mn_model *m = NULL;
    MN_CALL(mn_model_create(&c, &m));
    *count = mn_model_param_range(m, 0).count;
    mn_model_destroy(&m);
    return MN_OK;
}

/* The class count whose head has exactly `count` parameters. */
static mn_err solve_classes(const mn_model_config *base, size_t count, const char *path, const char *head,
                            int *classes)
{
    size_t one, two;
    MN_CALL(head_params(base, 1, &one));
    MN_CALL(head_params(base, 2, &two));
    MN_CHECK(two > one, MN_ERR_INTERNAL, "head parameter count does not grow with the class count");
    size_t per = two - one, base_count = one - per;
    MN_CHECK(count > base_count && (count - base_count) % per == 0 && (count - base_count) / per <= 100000,
             MN_ERR_FORMAT, "checkpoint %s: head '%s' has %zu parameters, which no %s head of this encoder has", path,
             head, count, base->head_kind == MN_HEAD_SEG ? "conv_seg" : "branch");
    *classes = (int)((count - base_count) / per);
    return MN_OK;
}

/* Read the arrays of one part (encoder: part -1) into the model. */
static mn_err read_part(mn_ckpt *ck, mn_model *m, int part, const char *prefix)
{
    char pn[256], bn[256];
    snprintf(pn, sizeof pn, "%s/params", prefix);
    snprintf(bn, sizeof bn, "%s/bn", prefix);
    mn_range pr = mn_model_param_range(m, part), br = mn_model_bn_range(m, part);
    mn_ckpt_array a[2] = {{pn, MN_CKPT_F32, mn_model_params(m) + pr.offset, pr.count},
                          {bn, MN_CKPT_F32, mn_model_bn_buffers(m) + br.offset, br.count}};
    MN_CALL(mn_ckpt_read(ck, a, 2));
    return MN_OK;
}

static mn_err load(mn_ckpt *ck, const char *path, mn_shape input, const char *only, mn_ckpt_model *out)
{
    MN_CALL(mn_ckpt_attr_get(ck, "config", &out->config_text));
    out->step = (long)mn_ckpt_step(ck);
    mn_config *cfg = NULL;
    MN_CALL(mn_config_parse(out->config_text, path, &cfg));
    mn_err e = mn_model_config_read(cfg, "model", &out->cfg);
    mn_config_destroy(&cfg);
    MN_CHECK(e == MN_OK, e, "checkpoint %s: its recorded [model] section is not usable", path);

    int has_rec = 0;
    MN_CALL(mn_ckpt_attr_exists(ck, "preprocessing", &has_rec));
    if (has_rec) MN_CALL(mn_ckpt_attr_get(ck, "preprocessing", &out->prep_text));
    if (out->prep_text && !*out->prep_text) mn_free(&out->prep_text);

    MN_CALL(mn_calloc(sizeof(char *) * MAX_HEADS, "head names", (void **)&out->head_names));
    MN_CALL(mn_calloc(sizeof(mn_head_spec) * MAX_HEADS, "head specs", (void **)&out->heads));
    MN_CALL(mn_ckpt_list(ck, "heads", out->head_names, MAX_HEADS, &out->nheads));
    if (only) {
        /* Keep one head (or none): its name moves to slot 0, the others are freed. */
        int keep = -1;
        for (int h = 0; h < out->nheads; h++)
            if (*only && !strcmp(out->head_names[h], only)) keep = h;
        if (*only && keep < 0) {
            char list[1024] = "";
            size_t k = 0;
            for (int h = 0; h < out->nheads && k + 1 < sizeof list; h++)
                k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", h ? ", " : "", out->head_names[h]);
            MN_FAIL(MN_ERR_ARG, "checkpoint %s has no head '%s'; its heads: %s", path, only,
                    out->nheads ? list : "(none)");
        }
        for (int h = 0; h < out->nheads; h++)
            if (h != keep) mn_free(&out->head_names[h]);
        if (keep >= 0) {
            out->head_names[0] = out->head_names[keep];
            if (keep) out->head_names[keep] = NULL;
        }
        out->nheads = keep >= 0;
    }
    for (int h = 0; h < out->nheads; h++) {
        char name[512];
        int exists = 0;
        size_t count = 0;
        snprintf(name, sizeof name, "heads/%s/params", out->head_names[h]);
        MN_CALL(mn_ckpt_info(ck, name, &exists, NULL, &count));
        MN_CHECK(exists, MN_ERR_FORMAT, "checkpoint %s: head group 'heads/%s' has no params array", path,
                 out->head_names[h]);
        out->heads[h].id = h;
        MN_CALL(solve_classes(&out->cfg, count, path, out->head_names[h], &out->heads[h].classes));
    }
    out->cfg.nheads = out->nheads;
    out->cfg.heads = out->heads;
    out->cfg.prefix_heads = out->nheads > 1;
    out->cfg.input = input;
    MN_CALL(mn_model_create(&out->cfg, &out->model));
    e = read_part(ck, out->model, -1, "encoder");
    for (int h = 0; !e && h < out->nheads; h++) {
        char prefix[400];
        snprintf(prefix, sizeof prefix, "heads/%s", out->head_names[h]);
        e = read_part(ck, out->model, h, prefix);
    }
    MN_CHECK(!e, e, "checkpoint %s: its arrays do not fit the resnet%d that its configuration describes (a damaged "
             "or edited checkpoint?)", path, out->cfg.depth);
    return MN_OK;
}

mn_err mn_ckpt_model_load(const char *path, mn_shape input, const char *only_head, mn_ckpt_model *out)
{
    MN_CHECK(path && out, MN_ERR_ARG, "NULL argument");
    memset(out, 0, sizeof *out);
    mn_ckpt *ck = NULL;
    mn_err e = mn_ckpt_open(path, &ck);
    if (!e) e = load(ck, path, input, only_head, out);
    mn_ckpt_close(&ck);
    if (e) mn_ckpt_model_free(out);
    MN_CHECK(e == MN_OK, e, "cannot rebuild the model of checkpoint %s", path);
    return MN_OK;
}

int mn_ckpt_model_head(const mn_ckpt_model *cm, const char *name)
{
    for (int h = 0; h < cm->nheads; h++)
        if (!strcmp(cm->head_names[h], name)) return h;
    return -1;
}

void mn_ckpt_model_free(mn_ckpt_model *cm)
{
    if (!cm) return;
    mn_model_destroy(&cm->model);
    for (int h = 0; cm->head_names && h < cm->nheads; h++) mn_free(&cm->head_names[h]);
    mn_free(&cm->head_names);
    mn_free(&cm->heads);
    mn_free(&cm->config_text);
    mn_free(&cm->prep_text);
    memset(cm, 0, sizeof *cm);
}

/* ---- safetensors ---------------------------------------------------------------------------------------------- */

/* The record keys `mednet export` writes as prep.<key> (mn_prep_record_append's lines). */
static const char *const prep_keys[] = {"classes", "modality", "spacing", "normalisation", "norm_clip", "norm_mean",
                                        "norm_std", "antialias"};
enum { NPREP = (int)(sizeof prep_keys / sizeof prep_keys[0]) };

/* One setting from the metadata (m) or the hint (h): both given and different is an error. */
static mn_err pick(const char *path, const char *what, const char *m, const char *h, const char *origin,
                   const char **out)
{
    MN_CHECK(!m || !h || !strcmp(m, h), MN_ERR_ARG, "%s: its metadata says %s = %s, but %s says %s", path, what, m,
             origin, h);
    *out = m ? m : h;
    return MN_OK;
}

/* Append printf text to the malloc'ed *text. */
static mn_err text_add(char **text, const char *fmt, const char *a, const char *b)
{
    size_t old = *text ? strlen(*text) : 0, n = strlen(fmt) + strlen(a) + (b ? strlen(b) : 0) + 1;
    char *t = realloc(*text, old + n);
    MN_CHECK(t, MN_ERR_MEM, "out of memory for a model description");
    snprintf(t + old, n, fmt, a, b ? b : "");
    *text = t;
    return MN_OK;
}

/* The description of safetensors file `st`: out->config_text, prep_text, head name and class count. */
static mn_err st_describe(const mn_safetensors *st, const char *path, const mn_model_file_hint *hint,
                          mn_config *hc, mn_ckpt_model *out)
{
    const char *origin = hint && hint->config_origin ? hint->config_origin : "the given config";
    const char *hv[4] = {NULL, NULL, NULL, NULL};  /* depth, shortcut, head, crop from the hint's config */
    const char *hk[4][2] = {{"model", "depth"}, {"model", "shortcut"}, {"model", "head"}, {"sampler", "crop"}};
    for (int i = 0; hc && i < 4; i++)
        if (mn_config_has(hc, hk[i][0], hk[i][1])) MN_CALL(mn_config_string(hc, hk[i][0], hk[i][1], NULL, &hv[i]));
    if (hv[1] && !strcmp(hv[1], "default")) hv[1] = NULL;
    const char *mhead = mn_st_metadata(st, "head");
    if (mhead && !strcmp(mhead, "conv_seg")) mhead = "seg";
    const char *depth = NULL, *shortcut = NULL, *kind = NULL, *crop = NULL, *dataset = NULL;
    MN_CALL(pick(path, "depth", mn_st_metadata(st, "depth"), hv[0], origin, &depth));
    MN_CALL(pick(path, "shortcut", mn_st_metadata(st, "shortcut_type"), hv[1], origin, &shortcut));
    MN_CALL(pick(path, "head kind", mhead, hv[2], origin, &kind));
    MN_CALL(pick(path, "crop", mn_st_metadata(st, "crop"), hv[3], origin, &crop));
    MN_CALL(pick(path, "dataset", mn_st_metadata(st, "dataset"), hint ? hint->head : NULL, "--head", &dataset));
    MN_CHECK(!kind || !strcmp(kind, "seg") || !strcmp(kind, "branch"), MN_ERR_ARG, "%s: head kind '%s' is not a "
             "segmentation head (seg or branch): mednet infer cannot apply it", path, kind);
    const char *producer = mn_st_metadata(st, "producer");
    const int ours = producer && !strncmp(producer, "mednet", 6);
    MN_CHECK(!ours || dataset, MN_ERR_ARG, "%s: its metadata names no head dataset: an "
             "encoder alone (`mednet export --encoder`) or several heads (--all-heads), nothing mednet infer can "
             "apply\n---> HINT: export one head (--head NAME), or name the dataset of its head with --head", path);
    MN_CHECK(depth && dataset, MN_ERR_ARG, "%s: the file does not say its model's %s%s%s (its __metadata__ lacks "
             "what `mednet export` records)\n---> HINT: give --config RUN.ini (its [model] depth, shortcut, head and "
             "[sampler] crop) and --corpus CORPUS.h5 --head DATASET (the classes and the preprocessing)", path,
             depth ? "" : "depth", !depth && !dataset ? " and " : "", dataset ? "" : "dataset");
    /* The preprocessing record: the metadata's, complete, or the hint's section of the dataset. */
    int nmeta = 0;
    for (int k = 0; k < NPREP; k++) {
        char key[64];
        snprintf(key, sizeof key, "prep.%s", prep_keys[k]);
        nmeta += mn_st_metadata(st, key) != NULL;
    }
    MN_CHECK(nmeta == 0 || nmeta == NPREP, MN_ERR_FORMAT, "%s: its metadata holds %d of the %d prep.* keys of a "
             "preprocessing record (an edited file?)", path, nmeta, NPREP);
    mn_prep_record rec;
    if (nmeta) {
        MN_CALL(text_add(&out->prep_text, "[%s]\n%s", dataset, NULL));
        for (int k = 0; k < NPREP; k++) {
            char key[64];
            snprintf(key, sizeof key, "prep.%s", prep_keys[k]);
            MN_CALL(text_add(&out->prep_text, "%s = %s\n", prep_keys[k], mn_st_metadata(st, key)));
        }
    } else if (hint && hint->prep_text) {
        mn_config *pc = NULL;
        MN_CALL(mn_config_parse(hint->prep_text, path, &pc));
        mn_err e = mn_prep_record_read(pc, dataset, &rec);
        mn_config_destroy(&pc);
        MN_CHECK(!e, e, "%s: no usable preprocessing record of dataset '%s'", path, dataset);
        MN_CALL(mn_prep_record_append(&rec, &out->prep_text));
    }
    int classes = 0;
    if (out->prep_text) {
        mn_config *pc = NULL;
        MN_CALL(mn_config_parse(out->prep_text, path, &pc));
        mn_err e = mn_prep_record_read(pc, dataset, &rec);
        mn_config_destroy(&pc);
        MN_CHECK(!e, e, "%s: its preprocessing record of dataset '%s' is not usable", path, dataset);
        classes = rec.num_classes;
    }
    const char *mc = mn_st_metadata(st, "classes");
    if (mc) {
        char *end = NULL;
        long c = strtol(mc, &end, 10);
        MN_CHECK(*mc && !*end && c >= 1 && c <= 100000, MN_ERR_FORMAT, "%s: metadata classes = '%s' is not a class "
                 "count", path, mc);
        MN_CHECK(!classes || classes == c, MN_ERR_ARG, "%s: its metadata says %ld classes, its preprocessing record "
                 "of '%s' lists %d", path, c, dataset, classes);
        classes = (int)c;
    }
    MN_CHECK(classes > 0, MN_ERR_ARG, "%s: the file does not say its head's class count (no classes in its "
             "__metadata__ and no preprocessing record of '%s')\n---> HINT: give --corpus CORPUS.h5 --head DATASET",
             path, dataset);
    MN_CALL(text_add(&out->config_text, "[model]\ndepth = %s\n%s", depth, NULL));
    if (shortcut) MN_CALL(text_add(&out->config_text, "shortcut = %s\n%s", shortcut, NULL));
    if (kind) MN_CALL(text_add(&out->config_text, "head = %s\n%s", kind, NULL));
    if (crop) MN_CALL(text_add(&out->config_text, "[sampler]\ncrop = %s\n%s", crop, NULL));
    MN_CALL(mn_calloc(sizeof(char *), "head names", (void **)&out->head_names));
    MN_CALL(mn_calloc(sizeof(mn_head_spec), "head specs", (void **)&out->heads));
    MN_CALL(mn_malloc(strlen(dataset) + 1, "head name", (void **)&out->head_names[0]));
    memcpy(out->head_names[0], dataset, strlen(dataset) + 1);
    out->nheads = 1;
    out->heads[0] = (mn_head_spec){0, classes};
    const char *step = mn_st_metadata(st, "step");
    out->step = step ? strtol(step, NULL, 10) : 0;
    return MN_OK;
}

static mn_err st_load(const char *path, mn_shape input, const mn_model_file_hint *hint, mn_ckpt_model *out)
{
    mn_safetensors *st = NULL;
    mn_config *hc = NULL, *cfg = NULL;
    mn_err e = MN_OK;
    if (hint && hint->config_text)
        e = mn_config_parse(hint->config_text, hint->config_origin ? hint->config_origin : "config", &hc);
    if (!e) e = mn_st_open(path, &st);
    if (!e) e = st_describe(st, path, hint, hc, out);
    mn_st_close(&st);
    mn_config_destroy(&hc);
    MN_CHECK(!e, e, "called from reading %s", path);
    MN_CALL(mn_config_parse(out->config_text, path, &cfg));
    e = mn_model_config_read(cfg, "model", &out->cfg);
    mn_config_destroy(&cfg);
    MN_CHECK(!e, e, "%s: the model it describes is not usable", path);
    out->cfg.nheads = 1;
    out->cfg.heads = out->heads;
    out->cfg.prefix_heads = 0;
    out->cfg.input = input;
    MN_CALL(mn_model_create(&out->cfg, &out->model));
    e = mn_model_load_safetensors(out->model, path, 1, NULL);
    MN_CHECK(!e, e, "%s: its tensors are not those of a resnet%d with a %d-class %s head (an encoder-only file, as "
             "`mednet export --encoder` writes, has no head to apply)", path, out->cfg.depth, out->heads[0].classes,
             out->cfg.head_kind == MN_HEAD_SEG ? "conv_seg" : "branch");
    return MN_OK;
}

mn_err mn_model_file_load(const char *path, mn_shape input, const mn_model_file_hint *hint, mn_ckpt_model *out)
{
    MN_CHECK(path && out, MN_ERR_ARG, "NULL argument");
    size_t n = strlen(path), k = strlen(".safetensors");
    if (n <= k || strcmp(path + n - k, ".safetensors"))
        return mn_ckpt_model_load(path, input, hint && hint->head ? hint->head : NULL, out);
    memset(out, 0, sizeof *out);
    mn_err e = st_load(path, input, hint, out);
    if (e) mn_ckpt_model_free(out);
    MN_CHECK(e == MN_OK, e, "cannot rebuild the model of %s", path);
    return MN_OK;
}

/* ---- one reader, every rank a model --------------------------------------------------------------------------- */

/* Broadcast a malloc'ed string that may be NULL from root (allocated on the others). */
static mn_err bcast_text(MPI_Comm comm, int root, int rank, char **text)
{
    long len = rank == root ? (*text ? (long)strlen(*text) : -1) : 0;
    MN_MPI(MPI_Bcast(&len, 1, MPI_LONG, root, comm));
    if (len < 0) return MN_OK;
    if (rank != root) MN_CALL(mn_malloc((size_t)len + 1, "broadcast text", (void **)text));
    MN_MPI(MPI_Bcast(*text, (int)len + 1, MPI_CHAR, root, comm));
    return MN_OK;
}

mn_err mn_ckpt_model_bcast(MPI_Comm comm, int root, mn_shape input, mn_ckpt_model *cm)
{
    int rank = 0;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    struct { mn_model_config cfg; int nheads; long step; } d;
    memset(&d, 0, sizeof d);
    if (rank == root) d.cfg = cm->cfg, d.nheads = cm->nheads, d.step = cm->step;
    MN_MPI(MPI_Bcast(&d, (int)sizeof d, MPI_BYTE, root, comm));
    mn_err e = MN_OK;
    if (rank != root) {
        cm->cfg = d.cfg, cm->nheads = d.nheads, cm->step = d.step;
        e = mn_calloc(sizeof(char *) * (size_t)(d.nheads + 1), "head names", (void **)&cm->head_names);
        if (!e) e = mn_calloc(sizeof(mn_head_spec) * (size_t)(d.nheads + 1), "head specs", (void **)&cm->heads);
    }
    MN_CALL(mn_agree(comm, e));
    MN_MPI(MPI_Bcast(cm->heads, (int)(sizeof(mn_head_spec) * (size_t)d.nheads), MPI_BYTE, root, comm));
    for (int h = 0; h < d.nheads; h++) MN_CALL(bcast_text(comm, root, rank, &cm->head_names[h]));
    MN_CALL(bcast_text(comm, root, rank, &cm->config_text));
    MN_CALL(bcast_text(comm, root, rank, &cm->prep_text));
    /* Every rank its model for `input`; root copies the weights it read, then everyone receives them. */
    mn_model *m = NULL;
    cm->cfg.heads = cm->heads;
    cm->cfg.input = input;
    e = mn_model_create(&cm->cfg, &m);
    if (!e && rank == root) {
        size_t np = mn_model_num_params(m), nb = mn_model_num_bn_buffers(m);
        if (np != mn_model_num_params(cm->model) || nb != mn_model_num_bn_buffers(cm->model))
            e = mn_error_report(MN_ERR_INTERNAL, __FILE__, __LINE__, __func__, "the model for the input shape has "
                                "another parameter layout than the one read");
        if (!e) memcpy(mn_model_params(m), mn_model_params(cm->model), sizeof(float) * np);
        if (!e) memcpy(mn_model_bn_buffers(m), mn_model_bn_buffers(cm->model), sizeof(float) * nb);
    }
    e = mn_agree(comm, e);
    if (e) {
        mn_model_destroy(&m);
        return e;
    }
    mn_model_destroy(&cm->model);
    cm->model = m;
    MN_CALL(mn_dist_bcast_floats(comm, mn_model_params(m), mn_model_num_params(m), root));
    MN_CALL(mn_dist_bcast_floats(comm, mn_model_bn_buffers(m), mn_model_num_bn_buffers(m), root));
    return MN_OK;
}
