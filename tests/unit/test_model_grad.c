/* test_model_grad: finite-difference gradient checks of the model end to end.  The loss is the model's own
 * (cross-entropy, plus soft Dice in one case) on a tiny input; central differences of the loss with respect to
 * sampled entries of chosen tensors are compared with the analytic gradient of mn_model_backward.  The probed
 * tensors cover a basic block with a type-B shortcut (resnet10), basic blocks with the type-A shortcut whose
 * gradient must flow through the identity part (resnet18), a bottleneck block (resnet50), the stem, and every head
 * kind; BN in training and in eval mode.
 *
 * Error metric: |fd - an| / max(|fd|, |an|, 0.02 * max|an| over the tensor), worst over the samples; the float32
 * forward pass limits the finite differences to about 1e-2 relative, so the tolerance is 5e-2. */
#include "mednet/model.h"
#include "mednet/threads.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct probe {
    mn_model *m;
    const float *x;
    const int32_t *lab;
    mn_head_batch hb[2];
    int nhb, lab_stride;
} probe;

static double loss_of(probe *p)
{
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

static double check(const char *label, int depth, mn_shortcut sc, mn_head_kind kind, int training, float dice,
                    const char *const *names)
{
    mn_head_spec heads[2] = {{0, 3}, {1, 2}};
    mn_model_config c = mn_model_config_default();
    c.depth = depth;
    c.shortcut = sc;
    c.head_kind = kind;
    c.nheads = 2;
    c.heads = heads;
    c.input = (mn_shape){3, 1, 16, 16, 16};
    c.loss.dice_weight = dice;
    c.seed = 7;
    mn_model *m = NULL;
    TEST_EXPECT(mn_model_create(&c, &m) == MN_OK, "%s: create", label);
    if (!m) return 1;
    size_t vox = 16 * 16 * 16, nx = 3 * vox;
    float *x = malloc(nx * sizeof *x);
    int32_t *lab = malloc(nx * sizeof *lab);
    mn_test_rng r = {99 + (uint64_t)depth};
    mn_test_fill(&r, x, nx, 1.0f);
    for (size_t i = 0; i < nx; i++) lab[i] = (int32_t)(mn_test_rng_u64(&r) % 2);
    probe p = {m, x, lab, {{0, 0, 2}, {1, 2, 1}}, 2, kind == MN_HEAD_CLS ? 1 : (int)vox};
    if (!training) {
        /* Eval mode: give the running statistics non-trivial values with a few training passes first. */
        for (int i = 0; i < 3; i++) loss_of(&p);
        mn_model_set_training(m, 0);
    }
    double l0 = loss_of(&p);
    mn_model_zero_grad(m);
    TEST_EXPECT(isfinite(l0) && mn_model_backward(m) == MN_OK, "%s: backward", label);
    float *P = mn_model_params(m);
    const float *G = mn_model_grads(m);
    float *gcopy = malloc(mn_model_num_params(m) * sizeof *gcopy);
    memcpy(gcopy, G, mn_model_num_params(m) * sizeof *gcopy);
    double worst_all = 0;
    for (int k = 0; names[k]; k++) {
        int ti = mn_model_find_tensor(m, names[k]);
        TEST_EXPECT(ti >= 0, "%s: no tensor %s", label, names[k]);
        if (ti < 0) continue;
        const mn_tensor_info *t = mn_model_tensor(m, ti);
        const float *g = gcopy + t->offset;
        double gmax = 0;
        size_t imax = 0;
        for (size_t i = 0; i < t->numel; i++)
            if (fabs(g[i]) > gmax) {
                gmax = fabs(g[i]);
                imax = i;
            }
        /* Step: 2% of the tensor's RMS for weights (small against their scale, so max-pool and ReLU switches are
         * rare), 1e-3 for BN parameters (scale 1). */
        double rms = 0;
        for (size_t i = 0; i < t->numel; i++) rms += (double)P[t->offset + i] * P[t->offset + i];
        rms = sqrt(rms / (double)t->numel);
        float eps = t->ndim == 1 ? 1e-3f : (float)(0.02 * rms > 1e-4 ? 0.02 * rms : 1e-4);
        double worst = 0;
        for (int s = 0; s < 6; s++) {
            size_t i = s == 0 ? imax : (size_t)(mn_test_rng_u64(&r) % t->numel);
            float *w = &P[t->offset + i];
            float w0 = *w;
            *w = w0 + eps;
            double lp = loss_of(&p);
            *w = w0 - eps;
            double lm = loss_of(&p);
            *w = w0;
            double fd = (lp - lm) / (2.0 * (double)eps);
            double e = mn_test_relerr(fd, g[i], 0.02 * gmax + 1e-30);
            if (e > worst || e != e) worst = e;
            if (e > 5e-2) printf("  %s %s[%zu]: fd %.6e analytic %.6e\n", label, t->name, i, fd, (double)g[i]);
        }
        printf("%-28s %-34s max|g| %.3e worst rel err %.2e\n", label, t->name, gmax, worst);
        TEST_EXPECT(worst < 5e-2 && gmax > 0, "%s: %s gradient rel err %.3e (max|g| %.3e)", label, t->name, worst,
                    gmax);
        if (worst > worst_all) worst_all = worst;
    }
    free(gcopy);
    free(x);
    free(lab);
    mn_model_destroy(&m);
    return worst_all;
}

int main(void)
{
    if (mn_threads_init(1) != MN_OK) return 1;
    static const char *const basic[] = {"conv1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer2.0.conv1.weight",
                                        "layer2.0.bn2.weight", "layer2.0.downsample.0.weight",
                                        "layer2.0.downsample.1.bias", "layer3.0.conv2.weight", "layer4.0.bn1.weight",
                                        "heads.0.conv_seg.0.weight", "heads.0.conv_seg.0.bias",
                                        "heads.1.conv_seg.1.weight", "heads.0.conv_seg.3.weight",
                                        "heads.1.conv_seg.6.weight", NULL};
    check("resnet10 B seg train", 10, MN_SHORTCUT_DEFAULT, MN_HEAD_SEG, 1, 0.0f, basic);
    check("resnet10 B seg eval+dice", 10, MN_SHORTCUT_DEFAULT, MN_HEAD_SEG, 0, 0.5f, basic);
    static const char *const typea[] = {"conv1.weight", "layer1.1.conv2.weight", "layer2.0.conv1.weight",
                                        "layer2.1.bn2.bias", "layer3.0.bn1.weight", "heads.0.branch.weight",
                                        "heads.1.branch.weight", NULL};
    check("resnet18 A branch train", 18, MN_SHORTCUT_DEFAULT, MN_HEAD_BRANCH, 1, 0.0f, typea);
    static const char *const bott[] = {"conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv3.weight",
                                       "layer1.0.bn3.bias", "layer1.0.downsample.0.weight", "layer2.0.conv2.weight",
                                       "layer3.1.bn2.weight", "heads.0.fc.weight", "heads.1.fc.bias", NULL};
    check("resnet50 B cls train", 50, MN_SHORTCUT_DEFAULT, MN_HEAD_CLS, 1, 0.0f, bott);
    return mn_test_finish("test_model_grad");
}
