/* test_model_shapes: forward output shapes of every depth at an odd input size (1x1x40x48x56 by default) with the
 * conv_seg head (logits at 1/4: 10x12x14), finite logits and loss, a backward pass that fills every encoder gradient
 * range through the grad_ready hook exactly once, in reverse order; the branch head (full-size logits), the
 * classification head, and loss_full_size; the memory plan is printed. */
#include "mednet/model.h"
#include "mednet/threads.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct hook_log {
    size_t covered, last_off;
    int calls, ordered, progress;
} hook_log;

static void on_ready(void *ctx, size_t off, size_t count)
{
    hook_log *h = ctx;
    if (h->calls && off + count != h->last_off) h->ordered = 0;
    h->last_off = off;
    h->covered += count;
    h->calls++;
}
static void on_progress(void *ctx) { ((hook_log *)ctx)->progress++; }

static void run(int depth, mn_head_kind kind, int full, mn_shape in, int expect_d, int expect_h, int expect_w)
{
    mn_head_spec heads[2] = {{0, 3}, {5, 2}};
    mn_model_config c = mn_model_config_default();
    c.depth = depth;
    c.head_kind = kind;
    c.nheads = in.n > 1 ? 2 : 1;
    c.heads = heads;
    c.input = in;
    c.loss_full_size = full;
    mn_model *m = NULL;
    TEST_EXPECT(mn_model_create(&c, &m) == MN_OK, "create resnet%d", depth);
    if (!m) return;
    size_t nx = mn_shape_numel(&in), vox = mn_shape_voxels(&in);
    float *x = malloc(nx * sizeof *x);
    int32_t *lab = malloc((size_t)in.n * vox * sizeof *lab);
    mn_test_rng r = {12345};
    mn_test_fill(&r, x, nx, 1.0f);
    for (size_t i = 0; i < (size_t)in.n * vox; i++) lab[i] = (int32_t)(mn_test_rng_u64(&r) % 2);
    mn_head_batch hb[2] = {{0, 0, in.n > 1 ? 1 : in.n}, {1, 1, in.n - 1}};
    int nhb = c.nheads;
    TEST_EXPECT(mn_model_forward(m, x, hb, nhb) == MN_OK, "forward resnet%d", depth);
    mn_shape ls;
    const float *lg = mn_model_logits(m, 0, &ls);
    TEST_EXPECT(lg && ls.n == hb[0].count && ls.c == 3 && ls.d == expect_d && ls.h == expect_h && ls.w == expect_w,
                "resnet%d kind %d logits %dx%dx%dx%dx%d, expected %dx3x%dx%dx%d", depth, (int)kind, ls.n, ls.c, ls.d,
                ls.h, ls.w, hb[0].count, expect_d, expect_h, expect_w);
    mn_shape fs;
    const float *fl = mn_model_loss_logits(m, 0, &fs);
    int want_full = kind == MN_HEAD_BRANCH || (kind == MN_HEAD_SEG && full);
    TEST_EXPECT(fl && fs.c == 3 && (want_full ? (fs.d == in.d && fs.h == in.h && fs.w == in.w)
                                              : (fs.d == ls.d && fs.h == ls.h && fs.w == ls.w)),
                "loss-resolution logits %dx%dx%d", fs.d, fs.h, fs.w);
    int finite = 1;
    for (size_t i = 0; lg && i < mn_shape_numel(&ls); i++) finite &= isfinite(lg[i]) != 0;
    TEST_EXPECT(finite, "finite logits");
    hook_log hl = {0, 0, 0, 1, 0};
    mn_model_set_hooks(m, on_ready, on_progress, &hl);
    double total = 0;
    for (int i = 0; i < nhb; i++) {
        double loss = 0;
        int lab_off = hb[i].offset * (kind == MN_HEAD_CLS ? 1 : (int)vox);
        TEST_EXPECT(mn_model_loss(m, i, lab + lab_off, 1.0f, &loss) == MN_OK && isfinite(loss), "loss");
        total += loss;
    }
    TEST_EXPECT(mn_model_zero_grad(m) == MN_OK, "zero grad");
    TEST_EXPECT(mn_model_backward(m) == MN_OK, "backward resnet%d", depth);
    mn_range er = mn_model_param_range(m, -1);
    TEST_EXPECT(hl.covered == er.count && hl.ordered && hl.last_off == 0 && hl.progress > 0,
                "grad_ready covered %zu of %zu encoder params, ordered %d, %d calls", hl.covered, er.count, hl.ordered,
                hl.calls);
    double gn = 0;
    const float *g = mn_model_grads(m);
    for (size_t i = 0; i < mn_model_num_params(m); i++) gn += (double)g[i] * g[i];
    TEST_EXPECT(isfinite(gn) && gn > 0, "gradient norm %g", gn);
    mn_model_memory mp = mn_model_memory_plan(m);
    printf("resnet%-3d kind %d full %d input %dx1x%dx%dx%d: logits %dx%dx%dx%d loss %.4f |g| %.3e; memory: params %.1f "
           "MiB, activations %.1f MiB, workspace %.1f MiB, scratch %.1f MiB, total %.1f MiB; GFLOP fwd %.2f\n",
           depth, (int)kind, full, in.n, in.d, in.h, in.w, ls.c, ls.d, ls.h, ls.w, total, sqrt(gn),
           mp.param_bytes / 1048576.0, mp.activation_bytes / 1048576.0, mp.workspace_bytes / 1048576.0,
           mp.scratch_bytes / 1048576.0, mp.total_bytes / 1048576.0, mn_model_forward_flops(m, hb, nhb) / 1e9);
    free(x);
    free(lab);
    mn_model_destroy(&m);
}

int main(int argc, char **argv)
{
    if (mn_threads_init(mn_threads_resolve(0)) != MN_OK) return 1;
    mn_shape odd = {1, 1, 40, 48, 56};
    static const int depths[] = {10, 18, 34, 50, 101, 152, 200};
    int nd = argc > 1 ? atoi(argv[1]) : 7;
    for (int i = 0; i < nd && i < 7; i++) run(depths[i], MN_HEAD_SEG, 0, odd, 10, 12, 14);
    /* Non-multiple-of-8 sizes, batch of two datasets, other heads. */
    mn_shape small = {2, 1, 17, 21, 19};
    run(10, MN_HEAD_SEG, 0, small, 6, 6, 6);
    run(10, MN_HEAD_SEG, 1, small, 6, 6, 6);
    run(18, MN_HEAD_BRANCH, 0, small, 17, 21, 19);
    run(50, MN_HEAD_CLS, 0, small, 1, 1, 1);
    return mn_test_finish("test_model_shapes");
}
