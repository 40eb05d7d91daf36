/* test_model_grad: finite-difference gradient checks of residual blocks and of whole tiny models.
 *
 * Blocks (through the internal mn_model_block_forward/backward of model_impl.h): a basic block with a type-B
 * shortcut (resnet10 layer2.0, stride 2), a basic block with the type-A shortcut whose gradient must flow through
 * the identity part (resnet18 layer2.0), a basic identity block (resnet18 layer1.1), a bottleneck with a type-B
 * shortcut (resnet50 layer2.0) and an identity bottleneck (resnet50 layer1.1); loss L = sum r*y with a fixed random
 * r, summed in double; BN in training mode, and in eval mode for one block.  Whole models: the model's own loss
 * (cross-entropy, plus soft Dice in one case) through encoder and two heads on sub-batches.
 *
 * Method (gradcheck.h, directional mode).  For every parameter tensor (and the block input), the directional
 * derivative along a random +-1 direction is compared with sum(g * dir).  A float32 forward pass of a residual block
 * has rounding noise of about 1e-7 * |y| * sqrt(numel) in L, and ReLU / max-pool kinks make L piecewise smooth, so no
 * single step is right for every tensor: the check takes the best of four steps (1e-4 .. 1e-2 of the tensor's RMS,
 * of 1 for BN parameters), as a bug shows up at every step.  Error |fd - an| / max(|fd|, |an|, floor), floor = 1e-2 *
 * mean|g| * sqrt(numel) (for gradients that are zero in exact arithmetic, such as a bias before training-mode BN).
 * Tolerance 3e-2 (blocks).  For whole models per-tensor differences drown in the rounding noise of a deep float32
 * forward pass, so one end-to-end check moves all parameters at once along a random direction (each tensor scaled by
 * its RMS): tolerance 3e-2.  (conv_seg in eval mode is left to the parity test: its loss is nearly flat there, so the
 * kinks of the piecewise-linear network dominate any difference quotient.)
 * Exact agreement of every gradient with PyTorch is test_model_parity's job. */
#include "mednet/model.h"
#include "mednet/threads.h"
#include "model/model_impl.h"
#include "gradcheck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Steps of the directional check, relative to each tensor's RMS (1 for BN parameters). */
static const double g_steps[] = {1e-4, 4e-4, 2e-3, 1e-2};

/* ---- blocks ---- */

typedef struct bctx {
    mn_model *m;
    mn_block *b;
    const float *r;
} bctx;

static double block_loss(void *p)
{
    bctx *c = p;
    if (mn_model_block_forward(c->m, c->b) != MN_OK) return NAN;
    double s = 0;
    for (size_t i = 0; i < mn_shape_numel(&c->b->out); i++) s += (double)c->r[i] * c->b->y[i];
    return s;
}

static void block_check(const char *label, int depth, mn_shortcut sc, int bi, int training)
{
    mn_model_config c = mn_model_config_default();
    c.depth = depth;
    c.shortcut = sc;
    c.input = (mn_shape){2, 1, 16, 16, 16};
    c.seed = 11;
    mn_model *m = NULL;
    TEST_EXPECT(mn_model_create(&c, &m) == MN_OK, "%s: create", label);
    if (!m) return;
    mn_model_set_training(m, training);
    mn_block *b = &m->blocks[bi];
    size_t nin = mn_shape_numel(&b->in), nout = mn_shape_numel(&b->out);
    float *x = (float *)b->x; /* the previous layer's output buffer: ours to fill here */
    float *r = malloc(nout * sizeof *r), *dy = malloc(nout * sizeof *dy), *dx = malloc(nin * sizeof *dx);
    mn_test_rng rng = {5 + (uint64_t)bi * 31 + (uint64_t)depth};
    mn_test_fill(&rng, x, nin, 1.0f);
    mn_test_fill(&rng, r, nout, 1.0f);
    float *P = mn_model_params(m), *B = mn_model_bn_buffers(m);
    /* BN affine parameters and running statistics away from 1/0 so that every term is generic. */
    for (int i = 0; i < mn_model_num_tensors(m); i++) {
        const mn_tensor_info *t = mn_model_tensor(m, i);
        float *v = (t->kind == MN_TENSOR_PARAM ? P : B) + t->offset;
        int ones = strstr(t->name, ".weight") || strstr(t->name, "running_var");
        if (t->ndim != 1) continue;
        for (size_t j = 0; j < t->numel; j++) v[j] = 0.2f * mn_test_rng_uniform(&rng) + (ones ? 1.0f : 0.0f);
    }
    bctx ctx = {m, b, r};
    mn_model_zero_grad(m);
    block_loss(&ctx);
    memcpy(dy, r, nout * sizeof *dy);
    TEST_EXPECT(mn_model_block_backward(m, b, dy, dx) == MN_OK, "%s: backward", label);
    float *G = mn_model_grads(m);
    mn_gc_case gc = {.ctx = &ctx, .loss = block_loss, .t = {{"input", x, dx, nin}}, .tol = 3e-2, .floor_rel = 1e-2,
                     .dsteps = g_steps, .ndsteps = 4, .seed = rng.s};
    char name[96];
    snprintf(name, sizeof name, "block %s, %s", label, training ? "train" : "eval");
    gc.name = name;
    int nt = 1;
    for (int i = 0; i < mn_model_num_tensors(m); i++) {
        const mn_tensor_info *t = mn_model_tensor(m, i);
        if (t->kind != MN_TENSOR_PARAM || t->offset < b->p_off || t->offset >= b->p_off + b->p_len) continue;
        TEST_EXPECT(nt < MN_GC_MAX_TENSORS, "%s: too many tensors", label);
        if (nt < MN_GC_MAX_TENSORS)
            gc.t[nt++] = (mn_gc_tensor){t->name, P + t->offset, G + t->offset, t->numel, .unit = t->ndim == 1};
    }
    mn_gc_run(&gc);
    free(r);
    free(dy);
    free(dx);
    mn_model_destroy(&m);
}

/* ---- whole models ---- */

typedef struct probe {
    mn_model *m;
    const float *x;
    const int32_t *lab;
    mn_head_batch hb[2];
    int nhb, lab_stride;
} probe;

static double model_loss(void *ctx)
{
    probe *p = ctx;
    double total = 0;
    if (mn_model_forward(p->m, p->x, p->hb, p->nhb) != MN_OK) return NAN;
    for (int i = 0; i < p->nhb; i++) {
        double l = 0;
        if (mn_model_loss(p->m, i, p->lab + (size_t)p->hb[i].offset * (size_t)p->lab_stride, 1.0f, &l) != MN_OK)
            return NAN;
        total += l;
    }
    return total;
}

static void model_check(const char *label, int depth, mn_head_kind kind, int training, float dice)
{
    mn_head_spec heads[2] = {{0, 3}, {1, 2}};
    mn_model_config c = mn_model_config_default();
    c.depth = depth;
    c.head_kind = kind;
    c.nheads = 2;
    c.heads = heads;
    c.input = (mn_shape){3, 1, 16, 16, 16};
    c.loss.dice_weight = dice;
    c.seed = 7;
    mn_model *m = NULL;
    TEST_EXPECT(mn_model_create(&c, &m) == MN_OK, "%s: create", label);
    if (!m) return;
    size_t vox = 16 * 16 * 16, nx = 3 * vox;
    float *x = malloc(nx * sizeof *x);
    int32_t *lab = malloc(nx * sizeof *lab);
    mn_test_rng r = {99 + (uint64_t)depth};
    mn_test_fill(&r, x, nx, 1.0f);
    for (size_t i = 0; i < nx; i++) lab[i] = (int32_t)(mn_test_rng_u64(&r) % 2);
    probe p = {m, x, lab, {{0, 0, 2}, {1, 2, 1}}, 2, kind == MN_HEAD_CLS ? 1 : (int)vox};
    /* Small logits keep the loss in the smooth regime of the softmax (a random deep net gives logits of tens). */
    float *P = mn_model_params(m);
    for (int h = 0; h < 2; h++) {
        mn_range hr = mn_model_param_range(m, h);
        for (size_t j = hr.offset; j < hr.offset + hr.count; j++) P[j] *= 0.1f;
    }
    if (!training) {
        for (int i = 0; i < 3; i++) model_loss(&p); /* non-trivial running statistics */
        mn_model_set_training(m, 0);
    }
    double l0 = model_loss(&p);
    mn_model_zero_grad(m);
    TEST_EXPECT(isfinite(l0) && mn_model_backward(m) == MN_OK, "%s: backward", label);
    /* One end-to-end check: every parameter moves at once, each tensor along a random +-1 direction scaled by its
     * RMS (BN parameters by 0.1), so the step is the same relative size everywhere. */
    size_t np = mn_model_num_params(m);
    float *G = malloc(np * sizeof *G), *scale = malloc(np * sizeof *scale);
    memcpy(G, mn_model_grads(m), np * sizeof *G);
    for (int i = 0; i < mn_model_num_tensors(m); i++) {
        const mn_tensor_info *t = mn_model_tensor(m, i);
        if (t->kind != MN_TENSOR_PARAM) continue;
        double rms = 0;
        for (size_t j = 0; j < t->numel; j++) rms += (double)P[t->offset + j] * P[t->offset + j];
        rms = t->ndim == 1 ? 0.1 : sqrt(rms / (double)t->numel);
        for (size_t j = 0; j < t->numel; j++) scale[t->offset + j] = (float)rms;
    }
    char name[96];
    snprintf(name, sizeof name, "model %s, all %zu parameters", label, np);
    mn_gc_run(&(mn_gc_case){.name = name, .ctx = &p, .loss = model_loss,
                            .t = {{"params", P, G, np, .unit = 1, .dscale = scale}}, .tol = 3e-2, .floor_rel = 1e-2,
                            .dsteps = g_steps, .ndsteps = 4, .seed = r.s});
    free(scale);
    free(G);
    free(x);
    free(lab);
    mn_model_destroy(&m);
}

int main(void)
{
    if (mn_threads_init(1) != MN_OK) return 1;
    block_check("resnet10 layer2.0 basic, type B", 10, MN_SHORTCUT_B, 1, 1);
    block_check("resnet10 layer2.0 basic, type B", 10, MN_SHORTCUT_B, 1, 0);
    block_check("resnet18 layer2.0 basic, type A", 18, MN_SHORTCUT_A, 2, 1);
    block_check("resnet18 layer1.1 basic, identity", 18, MN_SHORTCUT_A, 1, 1);
    block_check("resnet50 layer2.0 bottleneck, type B", 50, MN_SHORTCUT_B, 3, 1);
    block_check("resnet50 layer1.1 bottleneck, identity", 50, MN_SHORTCUT_B, 1, 1);
    model_check("resnet10 conv_seg x2 heads, train, CE", 10, MN_HEAD_SEG, 1, 0.0f);
    model_check("resnet10 conv_seg x2 heads, train, CE+Dice", 10, MN_HEAD_SEG, 1, 0.5f);
    model_check("resnet18 A branch x2 heads, train, CE", 18, MN_HEAD_BRANCH, 1, 0.0f);
    model_check("resnet18 A branch x2 heads, eval, CE+Dice", 18, MN_HEAD_BRANCH, 0, 0.5f);
    return mn_test_finish("test_model_grad");
}
