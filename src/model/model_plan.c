/* model_plan.c: mn_model_conv_plan, the report of which algorithm each convolution of a created model runs on each
 * pass (mn_conv3d_pass_algo).  Convolutions are named by their weight tensors' state-dict names and grouped by
 * geometry, input shape and per-pass algorithm, in order of first use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_impl.h"

typedef struct plan_group {
    const mn_conv3d *c;
    mn_shape in;
    char first[96];
    int count;
} plan_group;

typedef struct plan_list {
    const mn_model *m;
    plan_group g[64];
    int n;
} plan_list;

static int same_conv(const mn_conv3d *a, const mn_shape *ain, const mn_conv3d *b, const mn_shape *bin)
{
    if (a->cin != b->cin || a->cout != b->cout || memcmp(ain, bin, sizeof *ain)) return 0;
    for (int i = 0; i < 3; i++)
        if (a->k[i] != b->k[i] || a->s[i] != b->s[i] || a->p[i] != b->p[i] || a->dil[i] != b->dil[i]) return 0;
    for (int p = 0; p < MN_CONV_NPASS; p++)
        if (strcmp(mn_conv3d_pass_algo(a, ain, p), mn_conv3d_pass_algo(b, bin, p))) return 0;
    return 1;
}

/* The state-dict name of c: its weight tensor's name without ".weight". */
static void conv_name(const mn_model *m, const mn_conv3d *c, char *out, size_t len)
{
    snprintf(out, len, "conv");
    const size_t off = (size_t)(c->w - m->params);
    for (int i = 0; i < m->ntensors; i++) {
        const mn_tensor_info *t = &m->tensors[i];
        if (t->kind != MN_TENSOR_PARAM || t->offset != off) continue;
        const char *dot = strrchr(t->name, '.');
        snprintf(out, len, "%.*s", dot ? (int)(dot - t->name) : (int)strlen(t->name), t->name);
        return;
    }
}

static void plan_add(plan_list *pl, const mn_conv3d *c, const mn_shape *in)
{
    for (int i = 0; i < pl->n; i++)
        if (same_conv(pl->g[i].c, &pl->g[i].in, c, in)) {
            pl->g[i].count++;
            return;
        }
    if (pl->n >= (int)(sizeof pl->g / sizeof pl->g[0])) return;
    plan_group *g = &pl->g[pl->n++];
    g->c = c;
    g->in = *in;
    g->count = 1;
    conv_name(pl->m, c, g->first, sizeof g->first);
}

size_t mn_model_conv_plan(const mn_model *m, char *buf, size_t len)
{
    if (!m || m->cfg.input.n <= 0) return 0;
    if (buf && len) buf[0] = '\0';
    plan_list *pl = calloc(1, sizeof *pl);
    if (!pl) return 0;
    pl->m = m;
    plan_add(pl, &m->conv1, &m->in_shape);
    for (int i = 0; i < m->nblocks; i++) {
        const mn_block *b = &m->blocks[i];
        plan_add(pl, &b->c1, &b->in);
        plan_add(pl, &b->c2, &b->s1);
        if (b->bottleneck) plan_add(pl, &b->c3, &b->s2);
        if (b->shortcut == SC_B) plan_add(pl, &b->dsc, &b->in);
    }
    for (int h = 0; h < m->nheads && m->cfg.head_kind == MN_HEAD_SEG; h++) {
        const mn_head *hd = &m->heads[h];
        mn_shape q = m->head_q_shape;
        q.c = hd->hc2.cin;
        plan_add(pl, &hd->hc2, &q);
        q.c = hd->hc3.cin;
        plan_add(pl, &hd->hc3, &q);
    }
    size_t k = 0;
    for (int i = 0; i < pl->n; i++) {
        const plan_group *g = &pl->g[i];
        const mn_conv3d *c = g->c;
        char ext[48], more[32] = "";
        if (g->in.d == g->in.h && g->in.h == g->in.w)
            snprintf(ext, sizeof ext, "%d^3", g->in.d);
        else
            snprintf(ext, sizeof ext, "%dx%dx%d", g->in.d, g->in.h, g->in.w);
        if (g->count > 1) snprintf(more, sizeof more, " +%d like it", g->count - 1);
        int n = snprintf(buf && k < len ? buf + k : NULL, buf && k < len ? len - k : 0,
                         "%s%s: %d->%d k%d s%d d%d @%dx%s: %s/%s/%s\n", g->first, more, c->cin, c->cout, c->k[0],
                         c->s[0], c->dil[0], g->in.n, ext, mn_conv3d_pass_algo(c, &g->in, MN_CONV_PASS_FWD),
                         mn_conv3d_pass_algo(c, &g->in, MN_CONV_PASS_BWD_DATA),
                         mn_conv3d_pass_algo(c, &g->in, MN_CONV_PASS_BWD_WEIGHTS));
        if (n > 0) k += (size_t)n;
    }
    free(pl);
    return k;
}
