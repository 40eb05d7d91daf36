/* ckpt_model.c: a model rebuilt from a training checkpoint alone (mednet/train.h), for export and inference.
 *
 * The checkpoint records the run config (depth, shortcut, head kind, loss) and holds one group per head,
 * heads/<dataset name>; a head's class count is not recorded, so it is solved from the length of its parameter
 * array: for every head kind that length is affine in the class count, a + b * classes, with a and b measured on two
 * parameter-only models.  Nothing here needs the corpus the checkpoint was trained on.
 */
#include "mednet/train.h"

#include "mednet/ckpt.h"
#include "mednet/config.h"
#include "mednet/mem.h"

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
    MN_CALL(read_part(ck, out->model, -1, "encoder"));
    for (int h = 0; h < out->nheads; h++) {
        char prefix[400];
        snprintf(prefix, sizeof prefix, "heads/%s", out->head_names[h]);
        MN_CALL(read_part(ck, out->model, h, prefix));
    }
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
    memset(cm, 0, sizeof *cm);
}
