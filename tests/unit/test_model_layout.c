/* test_model_layout: parameter layout of the seven MedicalNet depths without activations: exact encoder parameter
 * counts, state-dict names, contiguous ranges (encoder, then each head, in params and BN buffers), head naming with
 * and without the heads.<id>. prefix, seeded initialisation (reproducible, Kaiming std, independent of which heads
 * are held), and config validation. */
#include "mednet/model.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

static mn_model *make(int depth, mn_shortcut sc, mn_head_kind kind, int nheads, const mn_head_spec *h, int prefix)
{
    mn_model_config c = mn_model_config_default();
    c.depth = depth;
    c.shortcut = sc;
    c.head_kind = kind;
    c.nheads = nheads;
    c.heads = h;
    c.prefix_heads = prefix;
    mn_model *m = NULL;
    TEST_EXPECT(mn_model_create(&c, &m) == MN_OK, "create depth %d", depth);
    return m;
}

int main(void)
{
    /* Exact trainable encoder parameter counts (MedicalNet's defaults A for 18/34, B otherwise). */
    static const struct {
        int depth;
        size_t count;
    } want[] = {{10, 14355520}, {18, 32986176}, {34, 63295808}, {50, 46155072},
                {101, 85201216}, {152, 117359936}, {200, 126559552}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        size_t got = mn_model_encoder_param_count(want[i].depth, MN_SHORTCUT_DEFAULT);
        printf("resnet%-3d encoder parameters %zu (expected %zu)\n", want[i].depth, got, want[i].count);
        TEST_EXPECT(got == want[i].count, "resnet%d: %zu parameters, expected %zu", want[i].depth, got,
                    want[i].count);
    }

    /* Names and order for resnet10 + one conv_seg head (plain MedicalNet names). */
    mn_head_spec one = {3, 2};
    mn_model *m = make(10, MN_SHORTCUT_DEFAULT, MN_HEAD_SEG, 1, &one, 0);
    if (!m) return mn_test_finish("test_model_layout");
    static const char *names[] = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                                  "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                                  "layer2.0.downsample.1.running_var", "layer4.0.bn2.bias", "conv_seg.0.weight",
                                  "conv_seg.0.bias", "conv_seg.1.running_mean", "conv_seg.3.weight",
                                  "conv_seg.4.weight", "conv_seg.6.weight"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        TEST_EXPECT(mn_model_find_tensor(m, names[i]) >= 0, "tensor %s missing", names[i]);
    TEST_EXPECT(mn_model_find_tensor(m, "module.conv1.weight") == 0, "module. prefix accepted");
    TEST_EXPECT(!strcmp(mn_model_tensor(m, 0)->name, "conv1.weight"), "first tensor is conv1.weight");
    const mn_tensor_info *t = mn_model_tensor(m, mn_model_find_tensor(m, "conv_seg.0.weight"));
    TEST_EXPECT(t && t->ndim == 5 && t->shape[0] == 512 && t->shape[1] == 32 && t->shape[2] == 2, "convT shape");
    t = mn_model_tensor(m, mn_model_find_tensor(m, "conv_seg.6.weight"));
    TEST_EXPECT(t && t->shape[0] == 2 && t->shape[1] == 32 && t->shape[2] == 1, "last conv shape (classes 2)");

    /* Ranges: encoder then head, both tiling params and BN buffers; tensor offsets contiguous. */
    mn_range er = mn_model_param_range(m, -1), hr = mn_model_param_range(m, 0);
    mn_range eb = mn_model_bn_range(m, -1), hb = mn_model_bn_range(m, 0);
    TEST_EXPECT(er.offset == 0 && er.count == 14355520 && hr.offset == er.count &&
                    hr.offset + hr.count == mn_model_num_params(m),
                "param ranges enc [%zu,+%zu) head [%zu,+%zu) of %zu", er.offset, er.count, hr.offset, hr.count,
                mn_model_num_params(m));
    TEST_EXPECT(eb.offset == 0 && hb.offset == eb.count && hb.offset + hb.count == mn_model_num_bn_buffers(m),
                "bn ranges");
    /* conv_seg: 512*32*8 + 32 + 2*32 + 32*32*27 + 2*32 + 2*32 */
    TEST_EXPECT(hr.count == (size_t)(512 * 32 * 8 + 32 + 64 + 32 * 32 * 27 + 64 + 2 * 32), "head params %zu",
                hr.count);
    size_t po = 0, bo = 0;
    for (int i = 0; i < mn_model_num_tensors(m); i++) {
        t = mn_model_tensor(m, i);
        size_t *o = t->kind == MN_TENSOR_PARAM ? &po : &bo;
        TEST_EXPECT(t->offset == *o, "tensor %s at %zu, expected %zu", t->name, t->offset, *o);
        *o += t->numel;
    }
    TEST_EXPECT(po == mn_model_num_params(m) && bo == mn_model_num_bn_buffers(m), "table covers all buffers");

    /* Initialisation: BN weights 1, biases 0, running var 1; conv1 std close to sqrt(2 / (64*343)). */
    const float *p = mn_model_params(m);
    t = mn_model_tensor(m, mn_model_find_tensor(m, "bn1.weight"));
    TEST_EXPECT(p[t->offset] == 1.0f && p[t->offset + 63] == 1.0f, "bn weight 1");
    t = mn_model_tensor(m, mn_model_find_tensor(m, "bn1.running_var"));
    TEST_EXPECT(mn_model_bn_buffers(m)[t->offset] == 1.0f, "running var 1");
    t = mn_model_tensor(m, 0);
    double s2 = 0, mean = 0;
    for (size_t i = 0; i < t->numel; i++) {
        s2 += (double)p[i] * p[i];
        mean += p[i];
    }
    double sd = sqrt(s2 / (double)t->numel), want_sd = sqrt(2.0 / (64.0 * 343.0));
    printf("conv1 init std %.5f (Kaiming fan_out %.5f), mean %.2e\n", sd, want_sd, mean / (double)t->numel);
    TEST_EXPECT(fabs(sd / want_sd - 1) < 0.03 && fabs(mean / (double)t->numel) < 0.2 * want_sd, "kaiming std");

    /* Multi-head naming and init independent of which heads are held. */
    mn_head_spec two[2] = {{0, 4}, {3, 2}};
    mn_model *m2 = make(10, MN_SHORTCUT_DEFAULT, MN_HEAD_SEG, 2, two, 0);
    mn_model *m1 = make(10, MN_SHORTCUT_DEFAULT, MN_HEAD_SEG, 1, &two[1], 1);
    if (m2 && m1) {
        int a = mn_model_find_tensor(m2, "heads.3.conv_seg.3.weight");
        int b = mn_model_find_tensor(m1, "heads.3.conv_seg.3.weight");
        TEST_EXPECT(a >= 0 && b >= 0 && mn_model_find_tensor(m2, "heads.0.conv_seg.6.weight") >= 0, "prefixed names");
        TEST_EXPECT(mn_model_find_tensor(m2, "conv_seg.3.weight") < 0, "no plain names with two heads");
        if (a >= 0 && b >= 0) {
            const mn_tensor_info *ta = mn_model_tensor(m2, a), *tb = mn_model_tensor(m1, b);
            TEST_EXPECT(ta->part == 1 && tb->part == 0, "parts");
            TEST_EXPECT(!memcmp(mn_model_params(m2) + ta->offset, mn_model_params(m1) + tb->offset,
                                ta->numel * sizeof(float)),
                        "head 3 init independent of the other heads held");
        }
        TEST_EXPECT(!memcmp(mn_model_params(m2), mn_model_params(m), 14355520 * sizeof(float)),
                    "encoder init identical across head sets");
        mn_range r0 = mn_model_param_range(m2, 0), r1 = mn_model_param_range(m2, 1);
        TEST_EXPECT(r0.offset == 14355520 && r1.offset == r0.offset + r0.count &&
                        r1.offset + r1.count == mn_model_num_params(m2),
                    "two head ranges contiguous");
    }
    /* Re-init with another seed changes conv weights, the same seed restores them. */
    if (m1) {
        float w0 = mn_model_params(m1)[100];
        mn_model_init(m1, 99);
        TEST_EXPECT(mn_model_params(m1)[100] != w0, "seed changes init");
        mn_model_init(m1, 1);
        TEST_EXPECT(mn_model_params(m1)[100] == w0, "same seed, same init");
    }

    /* Other head kinds and shortcut B on 18. */
    mn_model *mc = make(18, MN_SHORTCUT_B, MN_HEAD_CLS, 1, &one, 0);
    if (mc) {
        TEST_EXPECT(mn_model_find_tensor(mc, "fc.weight") >= 0 && mn_model_find_tensor(mc, "fc.bias") >= 0, "fc");
        TEST_EXPECT(mn_model_find_tensor(mc, "layer2.0.downsample.0.weight") >= 0, "18 type B has downsample");
    }
    mn_model *ma = make(18, MN_SHORTCUT_DEFAULT, MN_HEAD_BRANCH, 1, &one, 0);
    if (ma) {
        TEST_EXPECT(mn_model_find_tensor(ma, "branch.weight") >= 0, "branch");
        TEST_EXPECT(mn_model_find_tensor(ma, "layer2.0.downsample.0.weight") < 0, "18 type A has no downsample");
    }

    /* Bad configs. */
    mn_error_set_quiet(1);
    mn_model_config c = mn_model_config_default();
    mn_model *bad = NULL;
    c.depth = 11;
    TEST_EXPECT(mn_model_create(&c, &bad) == MN_ERR_ARG && !bad && strstr(mn_error_last(), "11"), "bad depth");
    c = mn_model_config_default();
    mn_head_spec dup[2] = {{1, 2}, {1, 3}};
    c.nheads = 2;
    c.heads = dup;
    TEST_EXPECT(mn_model_create(&c, &bad) == MN_ERR_ARG && strstr(mn_error_last(), "twice"), "duplicate head id");
    c = mn_model_config_default();
    c.input = (mn_shape){1, 2, 16, 16, 16};
    TEST_EXPECT(mn_model_create(&c, &bad) == MN_ERR_ARG, "input with 2 channels");
    mn_error_set_quiet(0);

    mn_model_destroy(&m);
    mn_model_destroy(&m1);
    mn_model_destroy(&m2);
    mn_model_destroy(&mc);
    mn_model_destroy(&ma);
    TEST_EXPECT(m == NULL, "destroy sets NULL");
    return mn_test_finish("test_model_layout");
}
