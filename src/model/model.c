/* model.c: the MedicalNet 3-D ResNet model object: configuration, parameter layout and tensor names, seeded
 * initialisation, and the memory plan (see model.h for the topology and layout, model_impl.h for the structure).
 *
 * Layout.  plan() walks the network once in PyTorch state-dict order (conv1, bn1, layer1.0.conv1, ..., then each
 * head) and appends every parameter to the flat parameter buffer, every BN running statistic to the BN buffer, and
 * every saved activation to one activation arena; it runs twice (count, then point into the allocations), so the
 * layout, the name table and the layer structs cannot disagree.  Parameters of one block are contiguous, which is
 * what lets the backward pass announce per-block gradient ranges.
 *
 * Initialisation follows MedicalNet: Kaiming-normal (fan_out, gain sqrt 2) on every Conv3d weight, BN weight 1 and
 * bias 0, running mean 0 / var 1; the ConvTranspose3d of conv_seg and the fc layer keep PyTorch's default
 * (uniform +-1/sqrt(fan_in) for weight and bias).  Each tensor draws from its own stream seeded with (seed, name),
 * so a head's initial values do not depend on which other heads a rank holds.
 */
#include "mednet/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mednet/config.h"
#include "mednet/mem.h"
#include "model/model_impl.h"

enum { INIT_KAIMING = 0, INIT_UNIFORM, INIT_ONE, INIT_ZERO };

/* Blocks per stage of each depth. */
static int depth_layers(int depth, int layers[4], int *bottleneck)
{
    static const struct {
        int depth, l[4], bottleneck;
    } t[] = {{10, {1, 1, 1, 1}, 0},  {18, {2, 2, 2, 2}, 0},  {34, {3, 4, 6, 3}, 0},    {50, {3, 4, 6, 3}, 1},
             {101, {3, 4, 23, 3}, 1}, {152, {3, 8, 36, 3}, 1}, {200, {3, 24, 36, 3}, 1}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (t[i].depth == depth) {
            memcpy(layers, t[i].l, sizeof t[i].l);
            *bottleneck = t[i].bottleneck;
            return 1;
        }
    return 0;
}

mn_shortcut mn_model_default_shortcut(int depth) { return (depth == 18 || depth == 34) ? MN_SHORTCUT_A : MN_SHORTCUT_B; }

mn_model_config mn_model_config_default(void)
{
    mn_model_config c;
    memset(&c, 0, sizeof c);
    c.depth = 10;
    c.shortcut = MN_SHORTCUT_DEFAULT;
    c.head_kind = MN_HEAD_SEG;
    c.loss.ce_weight = 1.0f;
    c.loss.dice_weight = 0.0f;
    c.loss.ignore_label = -1;
    c.loss.dice_first_class = 1;
    c.loss.dice_smooth = 1e-5f;
    c.seed = 1;
    return c;
}

/* ---- the planner ---- */

typedef struct planner {
    mn_model *m;
    int pass;       /* 0: count, 1: assign */
    int acts;       /* 1: activations are planned (input.n > 0) */
    size_t np, nb;  /* parameter and BN-buffer floats so far */
    size_t na;      /* activation floats so far */
    int nt;         /* tensors so far */
    int part;       /* -1 encoder, h head */
    char prefix[40];
    float *arena;   /* pass 1: the activation arena */
} planner;

static void add_tensor(planner *pl, const char *name, mn_tensor_kind kind, size_t offset, int ndim, const int *shape,
                       int init, float bound)
{
    if (pl->pass == 1) {
        mn_tensor_info *t = &pl->m->tensors[pl->nt];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s%s", pl->prefix, name);
        t->kind = kind;
        t->part = pl->part;
        t->offset = offset;
        t->ndim = ndim;
        t->numel = 1;
        for (int i = 0; i < ndim; i++) {
            t->shape[i] = shape[i];
            t->numel *= (size_t)shape[i];
        }
        pl->m->tinit[pl->nt] = (unsigned char)init;
        pl->m->tbound[pl->nt] = bound;
    }
    pl->nt++;
}

/* A parameter: returns its pointer (pass 1) and its gradient in *grad. */
static float *param(planner *pl, const char *name, int ndim, const int *shape, int init, float bound, float **grad)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    size_t off = pl->np;
    add_tensor(pl, name, MN_TENSOR_PARAM, off, ndim, shape, init, bound);
    pl->np += n;
    if (pl->pass == 0) {
        if (grad) *grad = NULL;
        return NULL;
    }
    if (grad) *grad = pl->m->grads + off;
    return pl->m->params + off;
}

static float *buffer(planner *pl, const char *name, int c, int init)
{
    size_t off = pl->nb;
    add_tensor(pl, name, MN_TENSOR_BUFFER, off, 1, &c, init, 0);
    pl->nb += (size_t)c;
    return pl->pass ? pl->m->bufs + off : NULL;
}

/* An activation of n floats, 64-byte aligned within the arena. */
static float *act(planner *pl, size_t n)
{
    if (!pl->acts) return NULL;
    size_t off = pl->na;
    pl->na += (n + 15) & ~(size_t)15;
    return pl->pass ? pl->arena + off : NULL;
}

static void conv(planner *pl, mn_conv3d *c, const char *name, int cin, int cout, int k, int s, int p, int dil)
{
    char nm[80];
    memset(c, 0, sizeof *c);
    c->cin = cin;
    c->cout = cout;
    for (int i = 0; i < 3; i++) {
        c->k[i] = k;
        c->s[i] = s;
        c->p[i] = p;
        c->dil[i] = dil;
    }
    int shape[5] = {cout, cin, k, k, k};
    snprintf(nm, sizeof nm, "%s.weight", name);
    float fan_out = (float)cout * (float)(k * k * k);
    c->w = param(pl, nm, 5, shape, INIT_KAIMING, sqrtf(2.0f / fan_out), &c->dw);
}

static void bn(planner *pl, mn_bnl *b, const char *name, int c)
{
    char nm[80];
    memset(b, 0, sizeof *b);
    b->l.c = c;
    b->l.eps = 1e-5f;
    b->l.momentum = 0.1f;
    snprintf(nm, sizeof nm, "%s.weight", name);
    b->l.gamma = param(pl, nm, 1, &c, INIT_ONE, 0, &b->l.dgamma);
    snprintf(nm, sizeof nm, "%s.bias", name);
    b->l.beta = param(pl, nm, 1, &c, INIT_ZERO, 0, &b->l.dbeta);
    snprintf(nm, sizeof nm, "%s.running_mean", name);
    b->l.running_mean = buffer(pl, nm, c, INIT_ZERO);
    snprintf(nm, sizeof nm, "%s.running_var", name);
    b->l.running_var = buffer(pl, nm, c, INIT_ONE);
    b->save = act(pl, MN_BN3D_SAVE(c));
}

/* Track the largest encoder activations, which size the gradient scratch: *max is m->max_io (block inputs and
 * outputs: g0/g1), m->max_int (tensors inside a block: t1/t2), m->max_relu (post-ReLU tensors inside a block: r)
 * or m->max_stem (the stem, t1 only). */
static size_t shape_act(size_t *max, const mn_shape *s)
{
    size_t n = mn_shape_numel(s);
    if (n > *max) *max = n;
    return n;
}

static void ws_need(mn_model *m, size_t floats)
{
    if (floats > m->ws_floats) m->ws_floats = floats;
}

static mn_err conv_shape(mn_model *m, const mn_conv3d *c, const mn_shape *in, mn_shape *out)
{
    MN_CALL(mn_conv3d_out_shape(c, in, out));
    ws_need(m, mn_conv3d_workspace_floats(c, in));
    return MN_OK;
}

/* Per-layer algorithm choice (mn_conv3d_choose_algo), timed once per distinct geometry and input shape: ResNets
 * repeat the same conv many times (resnet50's layer3 has 6 identical blocks). */
typedef struct algo_cache {
    int n;
    struct {
        int geom[14]; /* cin, cout, k, s, p, dil */
        mn_shape in;
        int has_dw;
        unsigned char algo[MN_CONV_NPASS];
    } e[64];
} algo_cache;

static mn_err tune_conv(mn_model *m, algo_cache *ac, mn_conv3d *c, const mn_shape *in)
{
    int geom[14] = {c->cin, c->cout};
    for (int i = 0; i < 3; i++) {
        geom[2 + i] = c->k[i];
        geom[5 + i] = c->s[i];
        geom[8 + i] = c->p[i];
        geom[11 + i] = c->dil[i];
    }
    for (int i = 0; i < ac->n; i++)
        if (!memcmp(ac->e[i].geom, geom, sizeof geom) && !memcmp(&ac->e[i].in, in, sizeof *in) &&
            ac->e[i].has_dw == (c->dw != NULL)) {
            memcpy(c->algo, ac->e[i].algo, sizeof c->algo);
            return MN_OK;
        }
    MN_CALL(mn_conv3d_choose_algo(c, in, m->ws, m->ws_floats));
    if (ac->n < (int)(sizeof ac->e / sizeof ac->e[0])) {
        memcpy(ac->e[ac->n].geom, geom, sizeof geom);
        ac->e[ac->n].in = *in;
        ac->e[ac->n].has_dw = c->dw != NULL;
        memcpy(ac->e[ac->n].algo, c->algo, sizeof c->algo);
        ac->n++;
    }
    return MN_OK;
}

/* Choose every convolution's algorithm for the planned input shape (after the workspace exists). */
static mn_err tune_convs(mn_model *m)
{
    algo_cache *ac = calloc(1, sizeof *ac);
    MN_CHECK(ac != NULL, MN_ERR_MEM, "model: out of memory for the convolution algorithm table");
    mn_err err = tune_conv(m, ac, &m->conv1, &m->in_shape);
    for (int i = 0; i < m->nblocks && !err; i++) {
        mn_block *b = &m->blocks[i];
        err = tune_conv(m, ac, &b->c1, &b->in);
        if (!err) err = tune_conv(m, ac, &b->c2, &b->s1);
        if (!err && b->bottleneck) err = tune_conv(m, ac, &b->c3, &b->s2);
        if (!err && b->shortcut == SC_B) err = tune_conv(m, ac, &b->dsc, &b->in);
    }
    for (int h = 0; h < m->nheads && !err; h++) {
        mn_head *hd = &m->heads[h];
        if (m->cfg.head_kind == MN_HEAD_SEG) {
            mn_shape q = m->head_q_shape;
            q.c = hd->hc2.cin;
            err = tune_conv(m, ac, &hd->hc2, &q);
        }
    }
    free(ac);
    return err;
}

/* One residual block: names layer<stage>.<index>.*, parameters contiguous. */
static mn_err block(planner *pl, mn_block *b, int stage, int idx, int cin, int planes, int stride, int dil,
                    const mn_shape *in, const float *x, int may_recompute)
{
    mn_model *m = pl->m;
    char nm[64];
    int cout = planes * m->expansion;
    b->bottleneck = m->expansion == 4;
    b->p_off = pl->np;
    b->x = x;
    if (b->bottleneck) {
        snprintf(nm, sizeof nm, "layer%d.%d.conv1", stage, idx);
        conv(pl, &b->c1, nm, cin, planes, 1, 1, 0, 1);
        snprintf(nm, sizeof nm, "layer%d.%d.bn1", stage, idx);
        bn(pl, &b->b1, nm, planes);
        snprintf(nm, sizeof nm, "layer%d.%d.conv2", stage, idx);
        conv(pl, &b->c2, nm, planes, planes, 3, stride, dil, dil);
        snprintf(nm, sizeof nm, "layer%d.%d.bn2", stage, idx);
        bn(pl, &b->b2, nm, planes);
        snprintf(nm, sizeof nm, "layer%d.%d.conv3", stage, idx);
        conv(pl, &b->c3, nm, planes, cout, 1, 1, 0, 1);
        snprintf(nm, sizeof nm, "layer%d.%d.bn3", stage, idx);
        bn(pl, &b->b3, nm, cout);
    } else {
        snprintf(nm, sizeof nm, "layer%d.%d.conv1", stage, idx);
        conv(pl, &b->c1, nm, cin, planes, 3, stride, dil, dil);
        snprintf(nm, sizeof nm, "layer%d.%d.bn1", stage, idx);
        bn(pl, &b->b1, nm, planes);
        snprintf(nm, sizeof nm, "layer%d.%d.conv2", stage, idx);
        conv(pl, &b->c2, nm, planes, planes, 3, 1, dil, dil);
        snprintf(nm, sizeof nm, "layer%d.%d.bn2", stage, idx);
        bn(pl, &b->b2, nm, planes);
    }
    b->shortcut = SC_NONE;
    if (stride != 1 || cin != cout) {
        b->shortcut = m->shortcut;
        if (b->shortcut == SC_B) {
            snprintf(nm, sizeof nm, "layer%d.%d.downsample.0", stage, idx);
            conv(pl, &b->dsc, nm, cin, cout, 1, stride, 0, 1);
            snprintf(nm, sizeof nm, "layer%d.%d.downsample.1", stage, idx);
            bn(pl, &b->dsb, nm, cout);
        } else {
            for (int i = 0; i < 3; i++) {
                b->pool.k[i] = 1;
                b->pool.s[i] = stride;
                b->pool.p[i] = 0;
            }
        }
    }
    b->p_len = pl->np - b->p_off;
    if (!pl->acts) return MN_OK;

    /* Shapes and activations. */
    b->in = *in;
    b->y = NULL;
    MN_CALL(conv_shape(m, &b->c1, in, &b->s1));
    MN_CALL(conv_shape(m, &b->c2, &b->s1, &b->s2));
    shape_act(&m->max_io, &b->in);
    b->c1o = act(pl, shape_act(&m->max_int, &b->s1));
    shape_act(&m->max_relu, &b->s1);
    b->c2o = act(pl, shape_act(&m->max_int, &b->s2));
    if (b->bottleneck) {
        MN_CALL(conv_shape(m, &b->c3, &b->s2, &b->out));
        shape_act(&m->max_relu, &b->s2);
        b->c3o = act(pl, shape_act(&m->max_int, &b->out));
    } else {
        b->out = b->s2;
    }
    if (b->shortcut == SC_B) {
        mn_shape ds;
        MN_CALL(conv_shape(m, &b->dsc, in, &ds));
        MN_CHECK(mn_shape_eq(&ds, &b->out), MN_ERR_INTERNAL, "layer%d.%d: shortcut shape differs from the block's",
                 stage, idx);
        b->dso = act(pl, shape_act(&m->max_int, &ds));
    } else if (b->shortcut == SC_A) {
        mn_shape one = *in, ds;
        one.n = 1;
        MN_CALL(mn_avgpool3d_out_shape(&b->pool, &one, &ds));
        MN_CHECK(ds.d == b->out.d && ds.h == b->out.h && ds.w == b->out.w, MN_ERR_INTERNAL,
                 "layer%d.%d: type-A shortcut shape differs from the block's", stage, idx);
    }
    shape_act(&m->max_int, &b->out); /* the shortcut's BN output and the output gradient's temporaries */
    /* An output that backward recomputes from stored tensors (the last batch norm's input, and the block input or
     * the shortcut's batch-norm input) lives in the scratch yr, pointed to after the plan. */
    b->ry = may_recompute && b->shortcut != SC_A;
    shape_act(&m->max_io, &b->out);
    if (b->ry)
        shape_act(&m->max_yr, &b->out);
    else
        b->y = act(pl, mn_shape_numel(&b->out));
    return MN_OK;
}

/* The heads: names prefixed "heads.<id>." unless a single head with plain names. */
static mn_err heads(planner *pl)
{
    mn_model *m = pl->m;
    int plain = m->nheads == 1 && !m->cfg.prefix_heads;
    int fc = m->feat_c;
    for (int h = 0; h < m->nheads; h++) {
        mn_head *hd = &m->heads[h];
        hd->id = m->specs[h].id;
        hd->classes = m->specs[h].classes;
        pl->part = h;
        if (plain)
            pl->prefix[0] = '\0';
        else
            snprintf(pl->prefix, sizeof pl->prefix, "heads.%d.", hd->id);
        hd->p_off = pl->np;
        hd->b_off = pl->nb;
        int k = hd->classes;
        if (m->cfg.head_kind == MN_HEAD_SEG) {
            mn_convt3d *u = &hd->up;
            memset(u, 0, sizeof *u);
            u->cin = fc;
            u->cout = 32;
            for (int i = 0; i < 3; i++) {
                u->k[i] = 2;
                u->s[i] = 2;
                u->p[i] = 0;
                u->dil[i] = 1;
                u->op[i] = 0;
            }
            int ws[5] = {fc, 32, 2, 2, 2}, bs[1] = {32};
            float bound = 1.0f / sqrtf(32.0f * 8.0f); /* fan_in of a ConvTranspose3d weight = size(1) * kvol */
            u->w = param(pl, "conv_seg.0.weight", 5, ws, INIT_UNIFORM, bound, &u->dw);
            u->b = param(pl, "conv_seg.0.bias", 1, bs, INIT_UNIFORM, bound, &u->db);
            bn(pl, &hd->hb1, "conv_seg.1", 32);
            conv(pl, &hd->hc2, "conv_seg.3", 32, 32, 3, 1, 1, 1);
            bn(pl, &hd->hb2, "conv_seg.4", 32);
            conv(pl, &hd->hc3, "conv_seg.6", 32, k, 1, 1, 0, 1);
        } else if (m->cfg.head_kind == MN_HEAD_BRANCH) {
            conv(pl, &hd->br, "branch", fc, k, 1, 1, 0, 1);
        } else {
            int ws[2] = {k, fc}, bs[1] = {k};
            float bound = 1.0f / sqrtf((float)fc);
            memset(&hd->fc, 0, sizeof hd->fc);
            hd->fc.in = fc;
            hd->fc.out = k;
            hd->fc.w = param(pl, "fc.weight", 2, ws, INIT_UNIFORM, bound, &hd->fc.dw);
            hd->fc.b = param(pl, "fc.bias", 1, bs, INIT_UNIFORM, bound, &hd->fc.db);
        }
        hd->p_len = pl->np - hd->p_off;
        hd->b_len = pl->nb - hd->b_off;
    }
    if (!pl->acts || m->nheads == 0) return MN_OK;

    /* Shared head activations for the whole local batch and the largest class count. */
    size_t N = (size_t)m->in_shape.n, C = (size_t)m->max_classes;
    mn_shape full = m->in_shape;
    if (m->cfg.head_kind == MN_HEAD_SEG) {
        mn_head *hd = &m->heads[0];
        MN_CALL(mn_convt3d_out_shape(&hd->up, &m->feat_shape, &m->head_q_shape));
        ws_need(m, mn_convt3d_workspace_floats(&hd->up, &m->feat_shape));
        mn_shape q3 = m->head_q_shape, qk;
        MN_CALL(conv_shape(m, &hd->hc2, &q3, &qk));
        for (int h = 0; h < m->nheads; h++) MN_CALL(conv_shape(m, &m->heads[h].hc3, &q3, &qk));
        size_t qn = mn_shape_numel(&q3);
        m->h0 = act(pl, qn);
        m->h3 = act(pl, qn);
        /* The post-ReLU tensors and the gradients inside the head use the encoder's scratch r, t1 and t2, which
         * are free while a head runs: at least this large, and so made (q can exceed layer1's extent by one voxel
         * per dimension, which for tiny inputs is more than layer1's tensors). */
        if (qn > m->max_relu) m->max_relu = qn;
        if (qn > m->max_int) m->max_int = qn;
        m->logit_vox = mn_shape_voxels(&q3);
        m->logits = act(pl, N * C * m->logit_vox);
        m->dlogits = act(pl, N * C * m->logit_vox);
        m->labels_ds = (int32_t *)act(pl, N * m->logit_vox);
        if (m->cfg.loss_full_size) {
            m->up = act(pl, N * C * mn_shape_voxels(&full));
            m->dup = act(pl, N * C * mn_shape_voxels(&full));
        }
    } else if (m->cfg.head_kind == MN_HEAD_BRANCH) {
        mn_shape fk;
        for (int h = 0; h < m->nheads; h++) MN_CALL(conv_shape(m, &m->heads[h].br, &m->feat_shape, &fk));
        size_t fv = mn_shape_voxels(&m->feat_shape);
        m->hz = act(pl, N * C * fv);
        m->dhz = act(pl, N * C * fv);
        m->logit_vox = mn_shape_voxels(&full);
        m->logits = act(pl, N * C * m->logit_vox);
        m->dlogits = act(pl, N * C * m->logit_vox);
    } else {
        m->hg = act(pl, N * (size_t)m->feat_c);
        m->dhg = act(pl, N * (size_t)m->feat_c);
        m->logit_vox = 1;
        m->logits = act(pl, N * C);
        m->dlogits = act(pl, N * C);
    }
    return MN_OK;
}

static mn_err plan(mn_model *m, int pass)
{
    planner pl;
    memset(&pl, 0, sizeof pl);
    pl.m = m;
    pl.pass = pass;
    pl.acts = m->cfg.input.n > 0;
    pl.part = -1;
    pl.arena = (float *)m->act_arena;
    m->max_io = m->max_int = m->max_stem = m->max_relu = m->max_yr = 0;
    m->ws_floats = 0;

    /* Stem. */
    conv(&pl, &m->conv1, "conv1", 1, 64, 7, 2, 3, 1);
    bn(&pl, &m->bn1, "bn1", 64);
    m->stem_p_len = pl.np;
    for (int i = 0; i < 3; i++) {
        m->pool.k[i] = 3;
        m->pool.s[i] = 2;
        m->pool.p[i] = 1;
    }
    if (pl.acts) {
        m->in_shape = m->cfg.input;
        MN_CALL(conv_shape(m, &m->conv1, &m->in_shape, &m->stem_shape));
        MN_CALL(mn_maxpool3d_out_shape(&m->pool, &m->stem_shape, &m->pool_shape));
        m->stem_c = act(&pl, shape_act(&m->max_stem, &m->stem_shape));
        m->pooled = act(&pl, shape_act(&m->max_io, &m->pool_shape));
        m->argmax = (int32_t *)act(&pl, mn_shape_numel(&m->pool_shape));
    }

    /* Four stages. */
    static const int planes[4] = {64, 128, 256, 512}, strides[4] = {1, 2, 1, 1}, dils[4] = {1, 1, 2, 4};
    int layers[4], bott = 0;
    depth_layers(m->cfg.depth, layers, &bott);
    int cin = 64, nb = 0;
    mn_shape cur = m->pool_shape;
    const float *x = m->pooled;
    for (int s = 0; s < 4; s++)
        for (int i = 0; i < layers[s]; i++) {
            mn_block *b = &m->blocks[nb++];
            /* Every other block output is recomputed in backward: never two in a row (one scratch holds it from the
             * next block's backward to the end of its own, and it is recomputed from the stored output before it),
             * never the last (the heads' input). */
            const int may = pl.acts && nb < m->nblocks && (nb == 1 || !m->blocks[nb - 2].ry);
            MN_CALL(block(&pl, b, s + 1, i, cin, planes[s], i == 0 ? strides[s] : 1, dils[s], &cur, x, may));
            cin = planes[s] * m->expansion;
            cur = b->out;
            x = b->y;
        }
    m->feat_shape = cur;
    m->enc_p_len = pl.np;
    m->enc_b_len = pl.nb;

    MN_CALL(heads(&pl));
    m->nparams = pl.np;
    m->nbufs = pl.nb;
    m->ntensors = pl.nt;
    m->act_floats = pl.na;
    return MN_OK;
}

/* ---- seeded initialisation ---- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1). */
static double unif(uint64_t *s) { return ((double)(splitmix(s) >> 11) + 0.5) / 9007199254740992.0; }

static uint64_t name_seed(uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    uint64_t s = seed ^ h;
    return splitmix(&s);
}

mn_err mn_model_init(mn_model *m, uint64_t seed)
{
    MN_CHECK(m, MN_ERR_ARG, "NULL model");
    /* Tensors are independent streams, so they can be filled in parallel with identical results. */
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < m->ntensors; i++) {
        const mn_tensor_info *t = &m->tensors[i];
        float *p = (t->kind == MN_TENSOR_PARAM ? m->params : m->bufs) + t->offset;
        uint64_t s = name_seed(seed, t->name);
        float b = m->tbound[i];
        switch (m->tinit[i]) {
        case INIT_KAIMING: /* Box-Muller, two normals per pair of uniforms */
            for (size_t j = 0; j < t->numel; j += 2) {
                double r = sqrt(-2.0 * log(unif(&s))), a = 6.283185307179586 * unif(&s);
                p[j] = (float)(b * r * cos(a));
                if (j + 1 < t->numel) p[j + 1] = (float)(b * r * sin(a));
            }
            break;
        case INIT_UNIFORM:
            for (size_t j = 0; j < t->numel; j++) p[j] = (float)(b * (2.0 * unif(&s) - 1.0));
            break;
        case INIT_ONE:
            for (size_t j = 0; j < t->numel; j++) p[j] = 1.0f;
            break;
        default:
            memset(p, 0, t->numel * sizeof *p);
        }
    }
    m->enc_bn_batches = 0;
    for (int h = 0; h < m->nheads; h++) m->heads[h].bn_batches = 0;
    return MN_OK;
}

/* ---- create / destroy ---- */

static size_t pad16(size_t n) { return (n + 15) & ~(size_t)15; }

static mn_err check_config(const mn_model_config *cfg)
{
    int layers[4], bott;
    MN_CHECK(depth_layers(cfg->depth, layers, &bott), MN_ERR_ARG,
             "model depth must be one of 10, 18, 34, 50, 101, 152, 200; got %d", cfg->depth);
    MN_CHECK(cfg->shortcut >= MN_SHORTCUT_DEFAULT && cfg->shortcut <= MN_SHORTCUT_B, MN_ERR_ARG,
             "bad shortcut type %d", (int)cfg->shortcut);
    MN_CHECK(cfg->head_kind >= MN_HEAD_SEG && cfg->head_kind <= MN_HEAD_CLS, MN_ERR_ARG, "bad head kind %d",
             (int)cfg->head_kind);
    MN_CHECK(cfg->nheads >= 0 && cfg->nheads <= MN_MODEL_MAX_HEADS, MN_ERR_ARG, "number of heads %d not in [0, %d]",
             cfg->nheads, MN_MODEL_MAX_HEADS);
    MN_CHECK(cfg->nheads == 0 || cfg->heads, MN_ERR_ARG, "%d heads but no head list", cfg->nheads);
    for (int i = 0; i < cfg->nheads; i++) {
        MN_CHECK(cfg->heads[i].id >= 0 && cfg->heads[i].classes >= 1, MN_ERR_ARG,
                 "head %d: id must be >= 0 and classes >= 1, got id %d, classes %d", i, cfg->heads[i].id,
                 cfg->heads[i].classes);
        for (int j = 0; j < i; j++)
            MN_CHECK(cfg->heads[i].id != cfg->heads[j].id, MN_ERR_ARG, "head id %d listed twice", cfg->heads[i].id);
    }
    const mn_shape *in = &cfg->input;
    if (in->n != 0) {
        char buf[64];
        MN_CHECK(mn_shape_valid(in) && in->c == 1, MN_ERR_ARG,
                 "model input must be (N, 1, D, H, W) with positive extents, got %s", mn_shape_str(in, buf));
    }
    return MN_OK;
}

/* The scratch, in the order of model_impl.h: floats before g0, g1, t1, t2, r, yr and ws (off[0..6]) and the total
 * (off[7]).  t1 holds the block temporaries (max_int) and, with t2, r and yr, which follow it, the stem's batch-norm
 * output and gradient (max_stem), which live while no block runs. */
static void scratch_layout(const mn_model *m, size_t off[8])
{
    size_t io = pad16(m->max_io), relu = pad16(m->max_relu), yr = pad16(m->max_yr), t1 = pad16(m->max_int);
    const size_t stem = pad16(m->max_stem), inner = 2 * relu + yr;
    if (stem > t1 + inner) t1 = stem - inner;
    const size_t len[7] = {io, io, t1, relu, relu, yr, m->ws_floats};
    off[0] = 0;
    for (int i = 0; i < 7; i++) off[i + 1] = off[i] + len[i];
}

mn_err mn_model_create(const mn_model_config *cfg, mn_model **out)
{
    *out = NULL;
    MN_CHECK(cfg, MN_ERR_ARG, "NULL model config");
    MN_CALL(check_config(cfg));
    mn_model *m = calloc(1, sizeof *m);
    MN_CHECK(m, MN_ERR_MEM, "model struct");
    mn_err err = MN_OK;
    m->cfg = *cfg;
    m->nheads = cfg->nheads;
    m->training = 1;
    if (m->cfg.shortcut == MN_SHORTCUT_DEFAULT) m->cfg.shortcut = mn_model_default_shortcut(cfg->depth);
    m->shortcut = m->cfg.shortcut == MN_SHORTCUT_A ? SC_A : SC_B;
    int layers[4], bott = 0;
    depth_layers(cfg->depth, layers, &bott);
    m->expansion = bott ? 4 : 1;
    m->feat_c = 512 * m->expansion;
    m->nblocks = layers[0] + layers[1] + layers[2] + layers[3];
    m->specs = calloc((size_t)(cfg->nheads ? cfg->nheads : 1), sizeof *m->specs);
    m->heads = calloc((size_t)(cfg->nheads ? cfg->nheads : 1), sizeof *m->heads);
    m->blocks = calloc((size_t)m->nblocks, sizeof *m->blocks);
    if (!m->specs || !m->heads || !m->blocks) err = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "model tables");
    if (!err) {
        if (cfg->nheads) memcpy(m->specs, cfg->heads, sizeof *m->specs * (size_t)cfg->nheads);
        m->cfg.heads = m->specs;
        for (int h = 0; h < cfg->nheads; h++)
            if (m->specs[h].classes > m->max_classes) m->max_classes = m->specs[h].classes;
        err = plan(m, 0);
    }
    if (!err) {
        m->tensors = calloc((size_t)m->ntensors, sizeof *m->tensors);
        m->tinit = calloc((size_t)m->ntensors, 1);
        m->tbound = calloc((size_t)m->ntensors, sizeof *m->tbound);
        if (!m->tensors || !m->tinit || !m->tbound)
            err = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "tensor table");
    }
    if (!err) err = mn_calloc(m->nparams * sizeof(float), "model parameters", (void **)&m->params);
    if (!err) err = mn_calloc(m->nparams * sizeof(float), "model gradients", (void **)&m->grads);
    if (!err) err = mn_calloc(m->nbufs * sizeof(float), "model BN buffers", (void **)&m->bufs);
    if (!err && m->cfg.input.n > 0) {
        /* Zero-filled now, so every page is faulted in at setup and not during the first steps. */
        err = mn_calloc(m->act_floats * sizeof(float), "model activations", &m->act_arena);
        size_t off[8];
        scratch_layout(m, off);
        m->scratch_floats = off[7];
        /* The gradient scratch is zero-filled now, as the activations; the convolution workspace, which ends the
         * allocation, is not: it is sized for every path a layer might take, and only the pages the chosen paths use
         * are ever touched (in the first step), so a path that is never run costs address space, not memory. */
        if (!err) err = mn_malloc(m->scratch_floats * sizeof(float), "model gradient scratch and conv workspace",
                                  &m->scratch_arena);
        if (!err) memset(m->scratch_arena, 0, (m->scratch_floats - m->ws_floats) * sizeof(float));
    }
    if (!err) err = plan(m, 1);
    if (!err && m->scratch_arena) {
        size_t off[8];
        scratch_layout(m, off);
        float *s = m->scratch_arena;
        m->g0 = s + off[0], m->g1 = s + off[1], m->t1 = s + off[2], m->t2 = s + off[3];
        m->r = s + off[4], m->yr = s + off[5], m->ws = s + off[6];
        for (int i = 0; i < m->nblocks; i++)
            if (m->blocks[i].ry) {
                m->blocks[i].y = m->yr;
                if (i + 1 < m->nblocks) m->blocks[i + 1].x = m->yr;
            }
        err = tune_convs(m);
    }
    if (!err) err = mn_model_init(m, cfg->seed);
    if (err) {
        mn_model_destroy(&m);
        return err;
    }
    *out = m;
    return MN_OK;
}

void mn_model_destroy(mn_model **pm)
{
    if (!pm || !*pm) return;
    mn_model *m = *pm;
    mn_free(&m->params);
    mn_free(&m->grads);
    mn_free(&m->bufs);
    mn_free(&m->act_arena);
    mn_free(&m->scratch_arena);
    free(m->tensors);
    free(m->tinit);
    free(m->tbound);
    free(m->blocks);
    free(m->heads);
    free(m->specs);
    free(m);
    *pm = NULL;
}

/* ---- access ---- */

const mn_model_config *mn_model_config_of(const mn_model *m) { return &m->cfg; }
float *mn_model_params(mn_model *m) { return m->params; }
float *mn_model_grads(mn_model *m) { return m->grads; }
float *mn_model_bn_buffers(mn_model *m) { return m->bufs; }
size_t mn_model_num_params(const mn_model *m) { return m->nparams; }
size_t mn_model_num_bn_buffers(const mn_model *m) { return m->nbufs; }
int mn_model_feature_channels(const mn_model *m) { return m->feat_c; }

mn_range mn_model_param_range(const mn_model *m, int part)
{
    mn_range r = {0, 0};
    if (part < 0)
        r.count = m->enc_p_len;
    else if (part < m->nheads) {
        r.offset = m->heads[part].p_off;
        r.count = m->heads[part].p_len;
    }
    return r;
}

mn_range mn_model_bn_range(const mn_model *m, int part)
{
    mn_range r = {0, 0};
    if (part < 0)
        r.count = m->enc_b_len;
    else if (part < m->nheads) {
        r.offset = m->heads[part].b_off;
        r.count = m->heads[part].b_len;
    }
    return r;
}

int mn_model_num_tensors(const mn_model *m) { return m->ntensors; }
const mn_tensor_info *mn_model_tensor(const mn_model *m, int i)
{
    return (i >= 0 && i < m->ntensors) ? &m->tensors[i] : NULL;
}

int mn_model_find_tensor(const mn_model *m, const char *name)
{
    if (!strncmp(name, "module.", 7)) name += 7;
    for (int i = 0; i < m->ntensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return i;
    return -1;
}

size_t mn_model_encoder_param_count(int depth, mn_shortcut shortcut)
{
    /* Run the counting pass of the planner alone: no buffers, no initialisation. */
    int layers[4], bott = 0;
    if (!depth_layers(depth, layers, &bott)) return 0;
    mn_model m;
    memset(&m, 0, sizeof m);
    m.cfg = mn_model_config_default();
    m.cfg.depth = depth;
    m.shortcut = (shortcut == MN_SHORTCUT_DEFAULT ? mn_model_default_shortcut(depth) : shortcut) == MN_SHORTCUT_A
                     ? SC_A
                     : SC_B;
    m.expansion = bott ? 4 : 1;
    m.feat_c = 512 * m.expansion;
    m.nblocks = layers[0] + layers[1] + layers[2] + layers[3];
    m.blocks = calloc((size_t)m.nblocks, sizeof *m.blocks);
    if (!m.blocks) return 0;
    size_t n = plan(&m, 0) == MN_OK ? m.enc_p_len : 0;
    free(m.blocks);
    return n;
}

mn_shape mn_model_logits_shape(const mn_model *m, int head, int count)
{
    mn_shape s = {count, 1, 1, 1, 1};
    if (head < 0 || head >= m->nheads) return s;
    s.c = m->heads[head].classes;
    if (m->cfg.head_kind == MN_HEAD_SEG) {
        s.d = m->head_q_shape.d;
        s.h = m->head_q_shape.h;
        s.w = m->head_q_shape.w;
    } else if (m->cfg.head_kind == MN_HEAD_BRANCH) {
        s.d = m->in_shape.d;
        s.h = m->in_shape.h;
        s.w = m->in_shape.w;
    }
    return s;
}

mn_model_memory mn_model_memory_plan(const mn_model *m)
{
    mn_model_memory r;
    r.param_bytes = (2 * m->nparams + m->nbufs) * sizeof(float);
    r.activation_bytes = m->act_floats * sizeof(float);
    r.workspace_bytes = m->ws_floats * sizeof(float);
    r.scratch_bytes = (m->scratch_floats - (m->scratch_floats ? m->ws_floats : 0)) * sizeof(float);
    r.total_bytes = r.param_bytes + r.activation_bytes + r.workspace_bytes + r.scratch_bytes;
    return r;
}

double mn_model_forward_flops(const mn_model *m, const mn_head_batch *hb, int nhb)
{
    if (m->cfg.input.n <= 0) return 0;
    double f = mn_conv3d_flops(&m->conv1, &m->in_shape);
    for (int i = 0; i < m->nblocks; i++) {
        const mn_block *b = &m->blocks[i];
        f += mn_conv3d_flops(&b->c1, &b->in) + mn_conv3d_flops(&b->c2, &b->s1);
        if (b->bottleneck) f += mn_conv3d_flops(&b->c3, &b->s2);
        if (b->shortcut == SC_B) f += mn_conv3d_flops(&b->dsc, &b->in);
    }
    for (int i = 0; i < nhb; i++) {
        const mn_head *hd = &m->heads[hb[i].head];
        mn_shape fs = m->feat_shape, q = m->head_q_shape;
        fs.n = q.n = hb[i].count;
        if (m->cfg.head_kind == MN_HEAD_SEG) {
            /* The transposed conv costs what its adjoint convolution costs: 2 * cin * cout * kvol per input voxel. */
            f += 2.0 * hd->up.cin * hd->up.cout * 8.0 * (double)mn_shape_voxels(&fs) * fs.n;
            f += mn_conv3d_flops(&hd->hc2, &q) + mn_conv3d_flops(&hd->hc3, &q);
        } else if (m->cfg.head_kind == MN_HEAD_BRANCH) {
            f += mn_conv3d_flops(&hd->br, &fs);
        }
    }
    return f;
}

mn_err mn_model_zero_grad(mn_model *m)
{
    MN_CHECK(m, MN_ERR_ARG, "NULL model");
    memset(m->grads, 0, m->nparams * sizeof(float));
    return MN_OK;
}

mn_err mn_model_set_params(mn_model *m, const float *p, size_t n)
{
    MN_CHECK(m && p, MN_ERR_ARG, "NULL model or parameter array");
    MN_CHECK(n == m->nparams, MN_ERR_SHAPE, "set_params: model has %zu parameters, array has %zu", m->nparams, n);
    memcpy(m->params, p, n * sizeof(float));
    return MN_OK;
}

long mn_model_bn_batches(const mn_model *m, int part)
{
    if (part < 0) return m->enc_bn_batches;
    return part < m->nheads ? m->heads[part].bn_batches : 0;
}

void mn_model_set_bn_batches(mn_model *m, int part, long batches)
{
    if (part < 0)
        m->enc_bn_batches = batches;
    else if (part < m->nheads)
        m->heads[part].bn_batches = batches;
}

void mn_model_set_training(mn_model *m, int training) { m->training = training ? 1 : 0; }
void mn_model_set_encoder_frozen(mn_model *m, int frozen) { m->enc_frozen = frozen ? 1 : 0; }

void mn_model_set_bn_sync(mn_model *m, mn_bn_sync_fn fn, void *ctx)
{
    m->bn_sync = fn;
    m->bn_sync_ctx = ctx;
}

void mn_model_set_hooks(mn_model *m, mn_grad_ready_fn grad_ready, mn_progress_fn progress, void *ctx)
{
    m->grad_ready = grad_ready;
    m->progress = progress;
    m->hook_ctx = ctx;
}

mn_err mn_model_config_read(struct mn_config *c, const char *sec, mn_model_config *out)
{
    *out = mn_model_config_default();
    long depth;
    MN_CALL(mn_config_int(c, sec, "depth", 10, 0, 100000, &depth));
    static const int depths[] = {10, 18, 34, 50, 101, 152, 200};
    int ok = 0;
    for (size_t i = 0; i < sizeof depths / sizeof depths[0]; i++) ok |= depth == depths[i];
    MN_CHECK(ok, MN_ERR_CONFIG, "config %s: [%s] depth = %ld: MedicalNet's ResNets have depth 10, 18, 34, 50, 101, "
             "152 or 200", mn_config_origin(c), sec, depth);
    out->depth = (int)depth;
    static const char *const shortcuts[] = {"default", "A", "B", NULL};
    static const char *const heads[] = {"seg", "branch", "cls", NULL};
    int k;
    MN_CALL(mn_config_choice(c, sec, "shortcut", "default", shortcuts, &k));
    out->shortcut = k == 0 ? MN_SHORTCUT_DEFAULT : k == 1 ? MN_SHORTCUT_A : MN_SHORTCUT_B;
    MN_CALL(mn_config_choice(c, sec, "head", "seg", heads, &k));
    out->head_kind = k == 0 ? MN_HEAD_SEG : k == 1 ? MN_HEAD_BRANCH : MN_HEAD_CLS;
    MN_CALL(mn_config_bool(c, sec, "loss_full_size", 0, &out->loss_full_size));
    double w;
    MN_CALL(mn_config_double(c, sec, "ce_weight", 1.0, 0, 1e3, &w));
    out->loss.ce_weight = (float)w;
    MN_CALL(mn_config_double(c, sec, "dice_weight", 0.0, 0, 1e3, &w));
    out->loss.dice_weight = (float)w;
    long seed;
    MN_CALL(mn_config_int(c, sec, "seed", 1, 0, 1L << 40, &seed));
    out->seed = (uint64_t)seed;
    return MN_OK;
}
