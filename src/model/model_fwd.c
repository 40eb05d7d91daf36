/* model_fwd.c: forward pass, losses and backward pass of the model (see model.h for the contracts).
 *
 * Forward runs the encoder over the whole local batch, then each head batch through its head on the sample slice
 * [offset, offset+count) of the encoder output; heads write the same slice of the shared head buffers.  Every
 * activation that backward needs was planned at create time (model.c); nothing is allocated here.
 *
 * Backward walks the same way back.  Gradients of activations live in the scratch buffers: g0/g1 carry the
 * gradient of block outputs/inputs (ping-pong), t1/t2 the gradients inside a block.  Layers accumulate (+=), so
 * every scratch target is zeroed before the layer that writes it, except batch norm's fused backward, which
 * overwrites.  The block output's ReLU backward is done in place on the incoming gradient (g = 0 where the saved
 * output is not positive; the shortcut and the residual branch share it); the inner ReLUs' backward is the mask
 * argument of the batch-norm backward below them.  Forward fuses batch norm, the residual add and ReLU into one
 * pass per layer (mn_bn3d_forward_fused).  After each block the
 * block's parameter range is final and grad_ready is called for it (reverse layer order), so the caller can start
 * a non-blocking all-reduce of that bucket while earlier blocks are still being differentiated.
 */
#include "mednet/model.h"

#include <math.h>
#include <string.h>

#include "mednet/loss.h"
#include "mednet/prof.h"
#include "model/model_impl.h"
#include "nn/simd_clones.h"

/* g = 0 where y <= 0 (ReLU backward from its output, in place).  Every element is stored (a select, not a
 * conditional store): the conditional store stayed scalar without AVX-512 masked stores. */
MN_SIMD_CLONES
static void relu_mask(size_t n, float *g, const float *y)
{
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) g[i] = y[i] > 0.0f ? g[i] : 0.0f;
}

/* Run `stmt` charged to a kind of the step's time breakdown (mednet/prof.h; one branch when it is off). */
#define PROF(kind, stmt)       \
    do {                       \
        mn_prof_push(kind);    \
        stmt;                  \
        mn_prof_pop();         \
    } while (0)

static void progress(mn_model *m)
{
    if (m->progress) m->progress(m->hook_ctx);
}

/* Encoder batch norm in training mode: local batch statistics (DDP's default), or, when a synchronisation callback
 * is set (mn_model_set_bn_sync), statistics of the global batch: the per-channel sums of the split form (layers.h)
 * are replaced by their all-reduced values between the two halves, in forward (sum x, sum x^2) and in backward
 * (sum dy, sum dy*xhat).  Head batch norm always uses the local sub-batch (see model.h). */
static mn_err enc_bn_forward(mn_model *m, const mn_bn3d *l, const mn_shape *s, const float *x, float *y, float *save,
                             int tr, const float *res, int relu)
{
    if (!tr || !m->bn_sync) return mn_bn3d_forward_fused(l, s, x, y, save, tr, res, relu);
    MN_CHECK(2 * l->c <= MN_MODEL_BN_SYNC_MAX, MN_ERR_INTERNAL, "batch norm with %d channels: sync buffer too small", l->c);
    double count = (double)s->n * (double)mn_shape_voxels(s);
    MN_CALL(mn_bn3d_stats(l, s, x, m->bn_sums));
    MN_CALL(m->bn_sync(m->bn_sync_ctx, m->bn_sums, 2 * l->c, &count));
    MN_CALL(mn_bn3d_apply_fused(l, s, x, y, save, m->bn_sums, count, res, relu));
    return MN_OK;
}

/* dx is OVERWRITTEN with the input gradient of batch norm for dy masked by the ReLU output `mask` (NULL: none). */
static mn_err enc_bn_backward(mn_model *m, const mn_bn3d *l, const mn_shape *s, const float *x, const float *dy,
                              const float *mask, float *dx, const float *save, int tr)
{
    if (!tr || !m->bn_sync) return mn_bn3d_backward_fused(l, s, x, dy, mask, dx, save, tr);
    double count = (double)s->n * (double)mn_shape_voxels(s);
    MN_CALL(mn_bn3d_bwd_stats_masked(l, s, x, dy, mask, save, m->bn_sums));
    MN_CALL(m->bn_sync(m->bn_sync_ctx, m->bn_sums, 2 * l->c, &count));
    MN_CALL(mn_bn3d_bwd_apply_fused(l, s, x, dy, mask, dx, save, m->bn_sums, count));
    return MN_OK;
}

/* ---- encoder ---- */

/* Training mode of the encoder's batch norm: the model's, unless the encoder is frozen (running statistics). */
static int enc_training(const mn_model *m) { return m->training && !m->enc_frozen; }

mn_err mn_model_block_forward(mn_model *m, mn_block *b)
{
    int tr = enc_training(m);
    size_t nout = mn_shape_numel(&b->out);
    /* Batch norm, ReLU and the residual add run as fused passes (mn_bn3d_forward_fused).  The post-ReLU activations
     * inside the block go to the scratch r, which the next convolution reads; backward recomputes them. */
    PROF(MN_PROF_CONV_FWD, MN_CALL(mn_conv3d_forward(&b->c1, &b->in, b->x, b->c1o, m->ws)));
    PROF(MN_PROF_BN_FWD, MN_CALL(enc_bn_forward(m, &b->b1.l, &b->s1, b->c1o, m->r, b->b1.save, tr, NULL, 1)));
    PROF(MN_PROF_CONV_FWD, MN_CALL(mn_conv3d_forward(&b->c2, &b->s1, m->r, b->c2o, m->ws)));
    const mn_bn3d *last = &b->b2.l;
    const mn_shape *last_s = &b->s2;
    const float *last_x = b->c2o;
    float *last_save = b->b2.save;
    if (b->bottleneck) {
        PROF(MN_PROF_BN_FWD, MN_CALL(enc_bn_forward(m, &b->b2.l, &b->s2, b->c2o, m->r, b->b2.save, tr, NULL, 1)));
        PROF(MN_PROF_CONV_FWD, MN_CALL(mn_conv3d_forward(&b->c3, &b->s2, m->r, b->c3o, m->ws)));
        last = &b->b3.l, last_s = &b->out, last_x = b->c3o, last_save = b->b3.save;
    }
    if (b->shortcut == SC_NONE) {
        /* y = relu(bn(last) + x) in one pass */
        PROF(MN_PROF_BN_FWD, MN_CALL(enc_bn_forward(m, last, last_s, last_x, b->y, last_save, tr, b->x, 1)));
        return MN_OK;
    } else if (b->shortcut == SC_B) {
        PROF(MN_PROF_CONV_FWD, MN_CALL(mn_conv3d_forward(&b->dsc, &b->in, b->x, b->dso, m->ws)));
        PROF(MN_PROF_BN_FWD, MN_CALL(enc_bn_forward(m, &b->dsb.l, &b->out, b->dso, m->t1, b->dsb.save, tr, NULL, 0)));
        PROF(MN_PROF_BN_FWD, MN_CALL(enc_bn_forward(m, last, last_s, last_x, b->y, last_save, tr, m->t1, 1)));
        return MN_OK;
    } else {
        PROF(MN_PROF_BN_FWD, MN_CALL(enc_bn_forward(m, last, last_s, last_x, b->y, last_save, tr, NULL, 0)));
        /* Type A: subsample x with the stride, add it to the first cin channels; the rest get zeros (no-op). */
        mn_shape one = b->in;
        one.n = 1;
        size_t in_per = mn_shape_numel(&one), out_per = nout / (size_t)b->out.n;
        size_t part = (size_t)b->in.c * mn_shape_voxels(&b->out);
        for (int n = 0; n < b->in.n; n++) {
            PROF(MN_PROF_POOL, MN_CALL(mn_avgpool3d_forward(&b->pool, &one, b->x + (size_t)n * in_per, m->t1)));
            mn_add_inplace(part, b->y + (size_t)n * out_per, m->t1);
        }
    }
    PROF(MN_PROF_RELU, mn_relu_forward(nout, b->y, b->y));
    return MN_OK;
}

mn_err mn_model_block_recompute(mn_model *m, mn_block *b)
{
    const mn_bnl *last = b->bottleneck ? &b->b3 : &b->b2;
    const float *last_x = b->bottleneck ? b->c3o : b->c2o;
    MN_CHECK(b->shortcut != SC_A, MN_ERR_INTERNAL, "block recompute: a type-A shortcut block's output is stored");
    const float *res = b->x;
    if (b->shortcut == SC_B) {
        PROF(MN_PROF_BN_FWD, MN_CALL(mn_bn3d_recompute(&b->dsb.l, &b->out, b->dso, b->dsb.save, NULL, 0, m->t1)));
        res = m->t1;
    }
    PROF(MN_PROF_BN_FWD, MN_CALL(mn_bn3d_recompute(&last->l, &b->out, last_x, last->save, res, 1, b->y)));
    return MN_OK;
}

/* dy: gradient of the block output (masked in place); dx: receives (overwritten) the gradient of the block input. */
mn_err mn_model_block_backward(mn_model *m, mn_block *b, float *dy, float *dx)
{
    int tr = enc_training(m);
    size_t nout = mn_shape_numel(&b->out), nin = mn_shape_numel(&b->in);
    size_t n1 = mn_shape_numel(&b->s1), n2 = mn_shape_numel(&b->s2);
    float *t1 = m->t1, *t2 = m->t2;
    PROF(MN_PROF_RELU, relu_mask(nout, dy, b->y));

    /* Shortcut: the identity part first (it initialises dx). */
    if (b->shortcut == SC_NONE) {
        memcpy(dx, dy, nout * sizeof *dx);
    } else if (b->shortcut == SC_B) {
        PROF(MN_PROF_BN_BWD, MN_CALL(enc_bn_backward(m, &b->dsb.l, &b->out, b->dso, dy, NULL, t1, b->dsb.save, tr)));
        mn_zero(nin, dx);
        PROF(MN_PROF_CONV_BWD, MN_CALL(mn_conv3d_backward(&b->dsc, &b->in, b->x, t1, dx, m->ws)));
        progress(m);
    } else {
        mn_shape one = b->in;
        one.n = 1;
        size_t in_per = nin / (size_t)b->in.n, out_per = nout / (size_t)b->out.n;
        mn_zero(nin, dx);
        for (int n = 0; n < b->in.n; n++)
            PROF(MN_PROF_POOL, MN_CALL(mn_avgpool3d_backward(&b->pool, &one, dy + (size_t)n * out_per, dx + (size_t)n * in_per)));
    }

    /* Residual branch.  The inner ReLUs' outputs are recomputed into r from the batch norms' inputs and what their
     * forward saved (bit for bit the forward's); r is the next convolution's input for its weight gradient and
     * the mask argument of the batch-norm backward, which overwrites its output: no masking or zeroing passes. */
    const float *g = dy, *gmask = NULL;
    if (b->bottleneck) {
        PROF(MN_PROF_BN_BWD, MN_CALL(enc_bn_backward(m, &b->b3.l, &b->out, b->c3o, dy, NULL, t1, b->b3.save, tr)));
        PROF(MN_PROF_BN_FWD, MN_CALL(mn_bn3d_recompute(&b->b2.l, &b->s2, b->c2o, b->b2.save, NULL, 1, m->r)));
        mn_zero(n2, t2);
        PROF(MN_PROF_CONV_BWD, MN_CALL(mn_conv3d_backward(&b->c3, &b->s2, m->r, t1, t2, m->ws)));
        progress(m);
        g = t2;
        gmask = m->r;
    }
    PROF(MN_PROF_BN_BWD, MN_CALL(enc_bn_backward(m, &b->b2.l, &b->s2, b->c2o, g, gmask, t1, b->b2.save, tr)));
    PROF(MN_PROF_BN_FWD, MN_CALL(mn_bn3d_recompute(&b->b1.l, &b->s1, b->c1o, b->b1.save, NULL, 1, m->r)));
    mn_zero(n1, t2);
    PROF(MN_PROF_CONV_BWD, MN_CALL(mn_conv3d_backward(&b->c2, &b->s1, m->r, t1, t2, m->ws)));
    progress(m);
    PROF(MN_PROF_BN_BWD, MN_CALL(enc_bn_backward(m, &b->b1.l, &b->s1, b->c1o, t2, m->r, t1, b->b1.save, tr)));
    PROF(MN_PROF_CONV_BWD, MN_CALL(mn_conv3d_backward(&b->c1, &b->in, b->x, t1, dx, m->ws)));
    progress(m);
    return MN_OK;
}

/* ---- heads ---- */

static const float *feat(const mn_model *m) { return m->blocks[m->nblocks - 1].y; }

static mn_shape full_shape(const mn_model *m, int count, int c)
{
    mn_shape s = m->in_shape;
    s.n = count;
    s.c = c;
    return s;
}

static mn_err head_forward(mn_model *m, const mn_head_batch *hb)
{
    mn_head *hd = &m->heads[hb->head];
    int tr = m->training, k = hd->classes;
    size_t off = (size_t)hb->offset, C = (size_t)m->max_classes;
    mn_shape fs = m->feat_shape;
    fs.n = hb->count;
    const float *f = feat(m) + off * (size_t)m->feat_c * mn_shape_voxels(&m->feat_shape);
    float *logits = m->logits + off * C * m->logit_vox;
    if (m->cfg.head_kind == MN_HEAD_SEG) {
        mn_shape q = m->head_q_shape, lq;
        q.n = hb->count;
        size_t qoff = off * 32 * mn_shape_voxels(&q);
        float *h0 = m->h0 + qoff, *h3 = m->h3 + qoff;
        /* batch norm + ReLU into r, the next convolution's input; backward recomputes it */
        MN_CALL(mn_convt3d_forward(&hd->up, &fs, f, h0, m->ws));
        MN_CALL(mn_bn3d_forward_fused(&hd->hb1.l, &q, h0, m->r, hd->hb1.save, tr, NULL, 1));
        MN_CALL(mn_conv3d_forward(&hd->hc2, &q, m->r, h3, m->ws));
        MN_CALL(mn_bn3d_forward_fused(&hd->hb2.l, &q, h3, m->r, hd->hb2.save, tr, NULL, 1));
        MN_CALL(mn_conv3d_forward(&hd->hc3, &q, m->r, logits, m->ws));
        if (m->cfg.loss_full_size) {
            lq = q;
            lq.c = k;
            mn_shape full = full_shape(m, hb->count, k);
            MN_CALL(mn_upsample3d_forward(&lq, logits, &full,
                                          m->up + off * C * mn_shape_voxels(&m->in_shape)));
        }
    } else if (m->cfg.head_kind == MN_HEAD_BRANCH) {
        mn_shape z = fs;
        z.c = k;
        float *hz = m->hz + off * C * mn_shape_voxels(&fs);
        MN_CALL(mn_conv3d_forward(&hd->br, &fs, f, hz, m->ws));
        mn_shape full = full_shape(m, hb->count, k);
        MN_CALL(mn_upsample3d_forward(&z, hz, &full, logits));
    } else {
        float *g = m->hg + off * (size_t)m->feat_c;
        MN_CALL(mn_gap3d_forward(&fs, f, g));
        MN_CALL(mn_linear_forward(&hd->fc, hb->count, g, logits));
    }
    if (tr && m->cfg.head_kind == MN_HEAD_SEG) hd->bn_batches++;
    return MN_OK;
}

/* Accumulates the head's input gradient into dfeat (the encoder-output gradient, whole batch). */
static mn_err head_backward(mn_model *m, const mn_head_batch *hb, float *dfeat)
{
    mn_head *hd = &m->heads[hb->head];
    int tr = m->training, k = hd->classes;
    size_t off = (size_t)hb->offset, C = (size_t)m->max_classes;
    mn_shape fs = m->feat_shape;
    fs.n = hb->count;
    size_t foff = off * (size_t)m->feat_c * mn_shape_voxels(&m->feat_shape);
    const float *f = feat(m) + foff;
    float *df = dfeat + foff;
    float *dlog = m->dlogits + off * C * m->logit_vox;
    if (m->cfg.head_kind == MN_HEAD_SEG) {
        mn_shape q = m->head_q_shape, lq;
        q.n = hb->count;
        lq = q;
        lq.c = k;
        size_t qoff = off * 32 * mn_shape_voxels(&q), qn = mn_shape_numel(&q);
        const float *h0 = m->h0 + qoff, *h3 = m->h3 + qoff;
        float *da = m->t1, *db = m->t2, *h = m->r; /* the encoder's scratch, free while a head runs */
        if (m->cfg.loss_full_size) {
            mn_shape full = full_shape(m, hb->count, k);
            mn_zero(mn_shape_numel(&lq), dlog);
            MN_CALL(mn_upsample3d_backward(&lq, &full, m->dup + off * C * mn_shape_voxels(&m->in_shape), dlog));
        }
        MN_CALL(mn_bn3d_recompute(&hd->hb2.l, &q, h3, hd->hb2.save, NULL, 1, h));
        mn_zero(qn, da);
        MN_CALL(mn_conv3d_backward(&hd->hc3, &q, h, dlog, da, m->ws));
        MN_CALL(mn_bn3d_backward_fused(&hd->hb2.l, &q, h3, da, h, db, hd->hb2.save, tr));
        MN_CALL(mn_bn3d_recompute(&hd->hb1.l, &q, h0, hd->hb1.save, NULL, 1, h));
        mn_zero(qn, da);
        MN_CALL(mn_conv3d_backward(&hd->hc2, &q, h, db, da, m->ws));
        MN_CALL(mn_bn3d_backward_fused(&hd->hb1.l, &q, h0, da, h, db, hd->hb1.save, tr));
        MN_CALL(mn_convt3d_backward(&hd->up, &fs, f, db, df, m->ws));
    } else if (m->cfg.head_kind == MN_HEAD_BRANCH) {
        mn_shape z = fs;
        z.c = k;
        mn_shape full = full_shape(m, hb->count, k);
        mn_zero(mn_shape_numel(&z), m->dhz);
        MN_CALL(mn_upsample3d_backward(&z, &full, dlog, m->dhz));
        MN_CALL(mn_conv3d_backward(&hd->br, &fs, f, m->dhz, df, m->ws));
    } else {
        const float *g = m->hg + off * (size_t)m->feat_c;
        mn_zero((size_t)hb->count * (size_t)m->feat_c, m->dhg);
        MN_CALL(mn_linear_backward(&hd->fc, hb->count, g, dlog, m->dhg));
        MN_CALL(mn_gap3d_backward(&fs, m->dhg, df));
    }
    progress(m);
    return MN_OK;
}

/* ---- public ---- */

mn_err mn_model_forward(mn_model *m, const float *x, const mn_head_batch *hb, int nhb)
{
    MN_CHECK(m && x, MN_ERR_ARG, "NULL model or input");
    MN_CHECK(m->cfg.input.n > 0, MN_ERR_ARG,
             "model was created without an input shape (parameters only): forward needs input.n > 0");
    MN_CHECK(nhb >= 0 && nhb <= m->nheads && (nhb == 0 || hb), MN_ERR_ARG,
             "forward: %d head batches for a model holding %d heads", nhb, m->nheads);
    int N = m->in_shape.n;
    for (int i = 0; i < nhb; i++) {
        MN_CHECK(hb[i].head >= 0 && hb[i].head < m->nheads, MN_ERR_ARG,
                 "forward: head batch %d names head %d, the model holds %d", i, hb[i].head, m->nheads);
        MN_CHECK(hb[i].offset >= 0 && hb[i].count >= 0 && hb[i].offset + hb[i].count <= N, MN_ERR_ARG,
                 "forward: head batch %d (head id %d) covers samples [%d, %d), outside the local batch [0, %d)", i,
                 m->heads[hb[i].head].id, hb[i].offset, hb[i].offset + hb[i].count, N);
        for (int j = 0; j < i; j++) {
            MN_CHECK(hb[j].head != hb[i].head, MN_ERR_ARG, "forward: head id %d given two head batches",
                     m->heads[hb[i].head].id);
            MN_CHECK(hb[i].count == 0 || hb[j].count == 0 || hb[i].offset >= hb[j].offset + hb[j].count ||
                         hb[j].offset >= hb[i].offset + hb[i].count,
                     MN_ERR_ARG, "forward: head batches %d and %d overlap", j, i);
        }
    }
    m->forwarded = 0;
    m->x = x;
    int tr = enc_training(m);

    /* Encoder. */
    PROF(MN_PROF_CONV_FWD, MN_CALL(mn_conv3d_forward(&m->conv1, &m->in_shape, x, m->stem_c, m->ws)));
    /* max(relu(a)) = relu(max(a)): the ReLU runs on the pooled output (8x smaller), and the batch norm's output is
     * a temporary in t1 (the largest tensor of the network is stored once, as the batch norm's input). */
    PROF(MN_PROF_BN_FWD, MN_CALL(enc_bn_forward(m, &m->bn1.l, &m->stem_shape, m->stem_c, m->t1, m->bn1.save, tr,
                                                NULL, 0)));
    PROF(MN_PROF_POOL, MN_CALL(mn_maxpool3d_forward(&m->pool, &m->stem_shape, m->t1, m->pooled, m->argmax)));
    PROF(MN_PROF_RELU, mn_relu_forward(mn_shape_numel(&m->pool_shape), m->pooled, m->pooled));
    for (int i = 0; i < m->nblocks; i++) MN_CALL(mn_model_block_forward(m, &m->blocks[i]));
    if (tr) m->enc_bn_batches++;

    /* Heads. */
    for (int i = 0; i < nhb; i++) {
        m->hbs[i].hb = hb[i];
        m->hbs[i].have_loss = 0;
        if (hb[i].count > 0) PROF(MN_PROF_HEAD, MN_CALL(head_forward(m, &hb[i])));
    }
    m->nhb = nhb;
    m->forwarded = 1;
    m->consumed = 0;
    return MN_OK;
}

const float *mn_model_logits(const mn_model *m, int i, mn_shape *shape)
{
    if (!m->forwarded || i < 0 || i >= m->nhb) return NULL;
    const mn_head_batch *hb = &m->hbs[i].hb;
    if (shape) *shape = mn_model_logits_shape(m, hb->head, hb->count);
    return m->logits + (size_t)hb->offset * (size_t)m->max_classes * m->logit_vox;
}

const float *mn_model_loss_logits(const mn_model *m, int i, mn_shape *shape)
{
    if (!m->forwarded || i < 0 || i >= m->nhb) return NULL;
    const mn_head_batch *hb = &m->hbs[i].hb;
    if (m->cfg.head_kind != MN_HEAD_SEG || !m->cfg.loss_full_size) return mn_model_logits(m, i, shape);
    if (shape) *shape = full_shape(m, hb->count, m->heads[hb->head].classes);
    return m->up + (size_t)hb->offset * (size_t)m->max_classes * mn_shape_voxels(&m->in_shape);
}

/* 1 if every float of v[0..n) is finite. */
static int all_finite(const float *v, size_t n)
{
    int ok = 1;
#pragma omp parallel for reduction(&& : ok) schedule(static)
    for (size_t i = 0; i < n; i++) ok = ok && isfinite(v[i]);
    return ok;
}

static mn_err loss_samples(mn_model *m, int i, const int32_t *labels, const float *weight, double *loss)
{
    MN_CHECK(m && labels && weight && loss, MN_ERR_ARG, "NULL model, labels, weights or losses");
    MN_CHECK(!m->consumed, MN_ERR_ARG, "loss: the last forward was consumed by a backward; run forward again");
    MN_CHECK(m->forwarded && i >= 0 && i < m->nhb, MN_ERR_ARG,
             "loss: head batch %d does not exist in the last forward (%d head batches)", i, m->nhb);
    mn_hb_state *st = &m->hbs[i];
    const mn_head_batch *hb = &st->hb;
    mn_head *hd = &m->heads[hb->head];
    st->have_loss = 1;
    if (hb->count == 0) return MN_OK;
    size_t off = (size_t)hb->offset, C = (size_t)m->max_classes;
    const mn_loss_config *lc = &m->cfg.loss;
    mn_shape ls = mn_model_logits_shape(m, hb->head, hb->count);
    const float *L = m->logits + off * C * m->logit_vox;
    float *dL = m->dlogits + off * C * m->logit_vox;
    const int32_t *lab = labels;
    if (m->cfg.head_kind == MN_HEAD_SEG) {
        if (m->cfg.loss_full_size) {
            ls = full_shape(m, hb->count, hd->classes);
            L = m->up + off * C * mn_shape_voxels(&m->in_shape);
            dL = m->dup + off * C * mn_shape_voxels(&m->in_shape);
        } else {
            mn_shape lin = full_shape(m, hb->count, 1), lout = ls;
            lout.c = 1;
            int32_t *ds = m->labels_ds + off * m->logit_vox;
            MN_CALL(mn_labels_resize_nearest(&lin, labels, &lout, ds));
            lab = ds;
        }
    }
    size_t numel = mn_shape_numel(&ls);
    mn_zero(numel, dL);
    /* Non-finite logits are numerical state, not an error: NaN losses and no gradient, for the caller to agree on. */
    if (!all_finite(L, numel)) {
        for (int j = 0; j < hb->count; j++) loss[j] = NAN;
        return MN_OK;
    }
    /* One sample at a time: the loss of a sample does not depend on which samples share its batch. */
    mn_shape one = ls;
    one.n = 1;
    size_t per = mn_shape_numel(&one), lper = numel / (size_t)ls.c / (size_t)hb->count;
    for (int j = 0; j < hb->count; j++) {
        const float *Lj = L + (size_t)j * per;
        float *dLj = dL + (size_t)j * per;
        const int32_t *labj = lab + (size_t)j * lper;
        loss[j] = 0;
        if (lc->ce_weight != 0.0f) {
            double ce = 0;
            MN_CALL(mn_ce_loss(&one, Lj, labj, lc->ignore_label, NULL, weight[j] * lc->ce_weight, &ce, dLj, NULL));
            loss[j] += lc->ce_weight * ce;
        }
        if (lc->dice_weight != 0.0f && m->cfg.head_kind != MN_HEAD_CLS) {
            double dice = 0;
            MN_CALL(mn_dice_loss(&one, Lj, labj, lc->ignore_label, lc->dice_first_class, lc->dice_smooth,
                                 weight[j] * lc->dice_weight, &dice, dLj));
            loss[j] += lc->dice_weight * dice;
        }
    }
    return MN_OK;
}

mn_err mn_model_loss_samples(mn_model *m, int i, const int32_t *labels, const float *weight, double *loss)
{
    mn_prof_push(MN_PROF_LOSS);
    mn_err e = loss_samples(m, i, labels, weight, loss);
    mn_prof_pop();
    return e;
}

mn_err mn_model_loss(mn_model *m, int i, const int32_t *labels, float scale, double *loss)
{
    MN_CHECK(m && loss, MN_ERR_ARG, "NULL model or loss");
    MN_CHECK(m->forwarded && i >= 0 && i < m->nhb, MN_ERR_ARG,
             "loss: head batch %d does not exist in the last forward (%d head batches)", i, m->nhb);
    int n = m->hbs[i].hb.count;
    *loss = 0;
    float w[MN_MODEL_MAX_BATCH] = {0}; /* initialised: GCC 12 under -fsanitize=address warns otherwise */
    double l[MN_MODEL_MAX_BATCH];
    MN_CHECK(n <= MN_MODEL_MAX_BATCH, MN_ERR_ARG, "loss: head batch of %d samples (at most %d)", n,
             MN_MODEL_MAX_BATCH);
    for (int j = 0; j < n; j++) w[j] = n ? scale / (float)n : 0;
    MN_CALL(mn_model_loss_samples(m, i, labels, w, l));
    for (int j = 0; j < n; j++) *loss += l[j] / n;
    MN_CHECK(isfinite(*loss), MN_ERR_NUMERIC, "loss: non-finite logits in head batch %d", i);
    return MN_OK;
}

mn_err mn_model_backward(mn_model *m)
{
    MN_CHECK(m && m->forwarded && !m->consumed, MN_ERR_ARG,
             "backward needs a preceding forward (one backward per forward: backward reuses saved activations)");
    float *G = m->g0, *Gi = m->g1;

    /* Heads, into the encoder-output gradient. */
    mn_zero(mn_shape_numel(&m->feat_shape), G);
    for (int i = m->nhb - 1; i >= 0; i--)
        if (m->hbs[i].have_loss && m->hbs[i].hb.count > 0) PROF(MN_PROF_HEAD, MN_CALL(head_backward(m, &m->hbs[i].hb, G)));

    /* A frozen encoder gets no gradient: its ranges are announced as final (the hooks' contract: every encoder
     * range once per backward) with whatever the grad buffer holds, zero after mn_model_zero_grad. */
    if (m->enc_frozen) {
        for (int i = m->nblocks - 1; i >= 0; i--)
            if (m->grad_ready) m->grad_ready(m->hook_ctx, m->blocks[i].p_off, m->blocks[i].p_len);
        m->consumed = 1;
        if (m->grad_ready) m->grad_ready(m->hook_ctx, 0, m->stem_p_len);
        progress(m);
        return MN_OK;
    }

    /* Blocks, last to first; each block's parameter range is final after its backward. */
    for (int i = m->nblocks - 1; i >= 0; i--) {
        mn_block *b = &m->blocks[i];
        /* the input, when it is a recomputed output: from here to the end of the previous block's backward */
        if (i > 0 && m->blocks[i - 1].ry) MN_CALL(mn_model_block_recompute(m, &m->blocks[i - 1]));
        MN_CALL(mn_model_block_backward(m, b, G, Gi));
        if (m->grad_ready) m->grad_ready(m->hook_ctx, b->p_off, b->p_len);
        float *t = G;
        G = Gi;
        Gi = t;
    }

    /* Stem: ReLU (on the pooled output, as in forward), max pool, BN, conv1 (no input gradient).  The batch-norm
     * backward overwrites its output gradient in place: one stem-sized scratch buffer (the largest tensor of the
     * network).  The ReLU mask consumes G, the gradient of the pooled output. */
    size_t ns = mn_shape_numel(&m->stem_shape);
    PROF(MN_PROF_RELU, relu_mask(mn_shape_numel(&m->pool_shape), G, m->pooled));
    mn_zero(ns, m->t1);
    PROF(MN_PROF_POOL, MN_CALL(mn_maxpool3d_backward(&m->pool, &m->stem_shape, G, m->argmax, m->t1)));
    PROF(MN_PROF_BN_BWD, MN_CALL(enc_bn_backward(m, &m->bn1.l, &m->stem_shape, m->stem_c, m->t1, NULL, m->t1,
                                                m->bn1.save, enc_training(m))));
    PROF(MN_PROF_CONV_BWD, MN_CALL(mn_conv3d_backward(&m->conv1, &m->in_shape, m->x, m->t1, NULL, m->ws)));
    m->consumed = 1;
    if (m->grad_ready) m->grad_ready(m->hook_ctx, 0, m->stem_p_len);
    progress(m);
    return MN_OK;
}
