/* test_model_heads: the multi-head contract the distributed loop relies on.  A model holding heads {3, 8} runs a
 * local batch of 3 samples grouped by dataset (head 3: samples 0-1, head 8: sample 2); a second model holding only
 * head 8 (as a rank that holds only dataset 8) gets the same weights by name through safetensors and runs sample 2
 * alone.  In eval mode the encoder treats samples independently, so head 8's logits, loss and parameter gradients
 * must agree between the two models, and the encoder gradient of the big model must equal the sum of the per-head
 * contributions (linearity of backward in the logit gradients, checked with the scales). */
#include "mednet/model.h"
#include "mednet/threads.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static mn_model *make(const mn_head_spec *h, int nh, int n)
{
    mn_model_config c = mn_model_config_default();
    c.depth = 10;
    c.nheads = nh;
    c.heads = h;
    c.prefix_heads = 1;
    c.input = (mn_shape){n, 1, 16, 20, 24};
    c.loss.dice_weight = 0.3f;
    mn_model *m = NULL;
    TEST_EXPECT(mn_model_create(&c, &m) == MN_OK, "create");
    return m;
}

int main(void)
{
    if (mn_threads_init(1) != MN_OK) return 1;
    mn_head_spec both[2] = {{3, 4}, {8, 2}};
    mn_model *big = make(both, 2, 3), *small = make(&both[1], 1, 1);
    if (!big || !small) return mn_test_finish("test_model_heads");
    size_t vox = 16 * 20 * 24;
    float *x = malloc(3 * vox * sizeof *x);
    int32_t *lab = malloc(3 * vox * sizeof *lab);
    mn_test_rng r = {2718};
    mn_test_fill(&r, x, 3 * vox, 1.0f);
    for (size_t i = 0; i < 3 * vox; i++) lab[i] = (int32_t)(mn_test_rng_u64(&r) % (i < 2 * vox ? 4 : 2));
    /* Non-trivial running statistics, then the same weights in both models (by name). */
    for (int i = 0; i < mn_model_num_tensors(big); i++) {
        const mn_tensor_info *t = mn_model_tensor(big, i);
        float *v = mn_model_bn_buffers(big) + t->offset;
        if (t->kind != MN_TENSOR_BUFFER) continue;
        mn_test_fill(&r, v, t->numel, 0.1f);
        if (strstr(t->name, "running_var"))
            for (size_t j = 0; j < t->numel; j++) v[j] += 1.0f;
    }
    char path[] = "/tmp/mn_heads_XXXXXX";
    int fd = mkstemp(path);
    TEST_EXPECT(fd >= 0, "temp file");
    if (fd >= 0) close(fd);
    mn_import_report rep;
    TEST_EXPECT(mn_model_save_safetensors(big, path, 1) == MN_OK, "export encoder + head 8");
    TEST_EXPECT(mn_model_load_safetensors(small, path, 1, &rep) == MN_OK, "strict import into the head-8 model");
    remove(path);
    mn_model_set_training(big, 0);
    mn_model_set_training(small, 0);

    mn_head_batch hb[2] = {{0, 0, 2}, {1, 2, 1}}, hs = {0, 0, 1};
    double l3 = 0, l8 = 0, ls = 0;
    TEST_EXPECT(mn_model_forward(big, x, hb, 2) == MN_OK, "big forward");
    TEST_EXPECT(mn_model_loss(big, 0, lab, 0.5f, &l3) == MN_OK && mn_model_loss(big, 1, lab + 2 * vox, 2.0f, &l8) ==
                MN_OK, "big losses");
    TEST_EXPECT(mn_model_forward(small, x + 2 * vox, &hs, 1) == MN_OK, "small forward");
    TEST_EXPECT(mn_model_loss(small, 0, lab + 2 * vox, 2.0f, &ls) == MN_OK, "small loss");
    mn_shape sb, ss;
    const float *gb = mn_model_logits(big, 1, &sb), *gs = mn_model_logits(small, 0, &ss);
    TEST_EXPECT(mn_shape_eq(&sb, &ss) && sb.c == 2, "head-8 logits shapes");
    double elog = mn_test_max_relerr(gb, gs, mn_shape_numel(&ss), 1e-3);
    TEST_EXPECT(elog < 1e-5, "head-8 logits differ: %.3e", elog);
    TEST_EXPECT(mn_test_relerr(l8, ls, 1e-12) < 1e-6, "head-8 loss %.8f vs %.8f", l8, ls);

    mn_model_zero_grad(big);
    mn_model_zero_grad(small);
    TEST_EXPECT(mn_model_backward(big) == MN_OK && mn_model_backward(small) == MN_OK, "backward");
    mn_range hb8 = mn_model_param_range(big, 1), hs8 = mn_model_param_range(small, 0);
    TEST_EXPECT(hb8.count == hs8.count, "head ranges");
    double eh = 0, gmax = 0;
    for (size_t i = 0; i < hs8.count; i++) gmax = fmax(gmax, fabs(mn_model_grads(small)[hs8.offset + i]));
    for (size_t i = 0; i < hs8.count; i++)
        eh = fmax(eh, fabs(mn_model_grads(big)[hb8.offset + i] - mn_model_grads(small)[hs8.offset + i]) / gmax);
    TEST_EXPECT(eh < 1e-5 && gmax > 0, "head-8 gradients differ: %.3e", eh);

    /* Encoder gradient = head-3 part + head-8 part: rerun the big model with head 8 only on its slice. */
    mn_range er = mn_model_param_range(big, -1);
    float *g_all = malloc(er.count * sizeof *g_all);
    memcpy(g_all, mn_model_grads(big), er.count * sizeof *g_all);
    mn_head_batch only3 = {0, 0, 2};
    double tmp = 0;
    mn_model_forward(big, x, &only3, 1);
    mn_model_loss(big, 0, lab, 0.5f, &tmp);
    mn_model_zero_grad(big);
    mn_model_backward(big);
    /* small's encoder gradient is head 8's contribution (eval mode: per-sample independent). */
    double eenc = 0, emax = 0;
    for (size_t i = 0; i < er.count; i++) emax = fmax(emax, fabs(g_all[i]));
    for (size_t i = 0; i < er.count; i++)
        eenc = fmax(eenc, fabs(g_all[i] - mn_model_grads(big)[i] - mn_model_grads(small)[i]) / emax);
    TEST_EXPECT(eenc < 1e-4 && emax > 0, "encoder gradient is not the sum of the head contributions: %.3e", eenc);
    printf("head 8 alone vs in a 2-head model: logits %.2e, loss %.2e, head grads %.2e; encoder grad = sum of head "
           "parts to %.2e\n", elog, mn_test_relerr(l8, ls, 1e-12), eh, eenc);
    free(g_all);
    free(x);
    free(lab);
    mn_model_destroy(&big);
    mn_model_destroy(&small);
    return mn_test_finish("test_model_heads");
}
