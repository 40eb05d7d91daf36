/* cmd_model.c: `mednet model`: inspect the MedicalNet ResNet family without training.
 *
 *   mednet model                                  table of the seven depths: blocks, shortcut, parameter counts
 *   mednet model --depth 50 [--shortcut A|B] [--head seg|branch|fc] [--classes K | --heads ID:K,ID:K...]
 *                [--input NxDxHxW] [--full-size] [--list] [--export out.safetensors [--part P]]
 *                [--import in.safetensors [--strict]]
 *
 * With --input the activations are planned for that local batch and the memory plan (parameters, activations,
 * workspace, scratch), the convolution FLOPs of one training step and the convolution plan (the algorithm of each
 * pass of each convolution, mn_model_conv_plan) are printed.  Export/import go through
 * safetensors with MedicalNet's state-dict names; only rank 0 writes.  Every rank parses the same arguments, so
 * a bad argument is an error all ranks agree on.
 */
#include "commands.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"
#include "mednet/threads.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void)
{
    mn_log_info("usage: mednet model [--depth D] [--shortcut A|B] [--head seg|branch|fc] [--classes K | --heads "
                "ID:K,...]\n"
                "                    [--input NxDxHxW] [--full-size] [--list] [--export FILE [--part -2|-1|H]]\n"
                "                    [--import FILE [--strict]] [--threads T]\n"
                "  without --depth: parameter counts of all seven depths\n"
                "  --threads: the thread count the convolution plan is for (default SLURM_CPUS_PER_TASK, else\n"
                "             OMP_NUM_THREADS, else 1; the default rule depends on it)");
}

static mn_err parse_heads(const char *s, mn_head_spec *h, int *n)
{
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end = NULL;
        MN_CHECK(*n < MN_MODEL_MAX_HEADS, MN_ERR_ARG, "--heads: more than %d heads", MN_MODEL_MAX_HEADS);
        long id = strtol(p, &end, 10);
        MN_CHECK(end != p && *end == ':', MN_ERR_ARG, "--heads: expected ID:CLASSES at '%s'", p);
        p = end + 1;
        long k = strtol(p, &end, 10);
        MN_CHECK(end != p && (*end == ',' || *end == '\0') && id >= 0 && k >= 1, MN_ERR_ARG,
                 "--heads: expected ID:CLASSES with ID >= 0 and CLASSES >= 1 at '%s'", p);
        h[*n].id = (int)id;
        h[*n].classes = (int)k;
        (*n)++;
        p = *end ? end + 1 : end;
    }
    return MN_OK;
}

static double mib(size_t b) { return (double)b / 1048576.0; }

static mn_err table(void)
{
    static const int depths[] = {10, 18, 34, 50, 101, 152, 200};
    mn_log_info("%-9s %-10s %-8s %16s %14s %12s", "model", "block", "shortcut", "encoder params", "conv_seg(2)",
                "fp32 MiB");
    /* The encoder count comes from the layout alone; the head only depends on the block type, so it is taken from
     * the smallest model with the same block (building and initialising resnet200 takes seconds). */
    size_t head[2] = {0, 0};
    for (int b = 0; b < 2; b++) {
        mn_head_spec h = {0, 2};
        mn_model_config c = mn_model_config_default();
        c.depth = b ? 50 : 10;
        c.nheads = 1;
        c.heads = &h;
        mn_model *m = NULL;
        MN_CALL(mn_model_create(&c, &m));
        head[b] = mn_model_param_range(m, 0).count;
        mn_model_destroy(&m);
    }
    for (int i = 0; i < 7; i++) {
        size_t enc = mn_model_encoder_param_count(depths[i], MN_SHORTCUT_DEFAULT), hd = head[depths[i] >= 50];
        MN_CHECK(enc > 0, MN_ERR_INTERNAL, "no parameter count for depth %d", depths[i]);
        mn_log_info("resnet%-3d %-10s %-8s %16zu %14zu %12.1f", depths[i], depths[i] >= 50 ? "bottleneck" : "basic",
                    mn_model_default_shortcut(depths[i]) == MN_SHORTCUT_A ? "A" : "B", enc, hd,
                    mib((enc + hd) * sizeof(float)));
    }
    return MN_OK;
}

/* The whole command is local work (no collective call): every rank parses the same arguments, imports read a file
 * on every rank, and only rank 0 exports; the caller agrees on the outcome. */
static mn_err model_cmd(int argc, char **argv, int rank)
{
    mn_model_config c = mn_model_config_default();
    static mn_head_spec heads[MN_MODEL_MAX_HEADS];
    heads[0].id = 0;
    heads[0].classes = 2;
    c.nheads = 1;
    c.heads = heads;
    int have_depth = 0, list = 0, strict = 0, part = -2, threads = 0;
    const char *export_path = NULL, *import_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return MN_OK;
        } else if (!strcmp(a, "--list")) {
            list = 1;
            takes = 0;
        } else if (!strcmp(a, "--strict")) {
            strict = 1;
            takes = 0;
        } else if (!strcmp(a, "--full-size")) {
            c.loss_full_size = 1;
            takes = 0;
        }
        if (!takes) continue;
        MN_CHECK(v != NULL, MN_ERR_ARG, "mednet model: %s needs a value (see --help)", a);
        if (!strcmp(a, "--depth")) {
            c.depth = atoi(v);
            have_depth = 1;
        } else if (!strcmp(a, "--shortcut")) {
            MN_CHECK(!strcmp(v, "A") || !strcmp(v, "B"), MN_ERR_ARG, "--shortcut must be A or B, got '%s'", v);
            c.shortcut = v[0] == 'A' ? MN_SHORTCUT_A : MN_SHORTCUT_B;
        } else if (!strcmp(a, "--head")) {
            MN_CHECK(!strcmp(v, "seg") || !strcmp(v, "branch") || !strcmp(v, "fc"), MN_ERR_ARG,
                     "--head must be seg, branch or fc, got '%s'", v);
            c.head_kind = v[0] == 's' ? MN_HEAD_SEG : v[0] == 'b' ? MN_HEAD_BRANCH : MN_HEAD_CLS;
        } else if (!strcmp(a, "--classes")) {
            heads[0].classes = atoi(v);
            c.nheads = 1;
        } else if (!strcmp(a, "--heads")) {
            MN_CALL(parse_heads(v, heads, &c.nheads));
        } else if (!strcmp(a, "--input")) {
            int n = 0, d = 0, h = 0, w = 0;
            char tail;
            MN_CHECK(sscanf(v, "%dx%dx%dx%d%c", &n, &d, &h, &w, &tail) == 4, MN_ERR_ARG,
                     "--input must be NxDxHxW (e.g. 2x64x64x64), got '%s'", v);
            c.input = (mn_shape){n, 1, d, h, w};
        } else if (!strcmp(a, "--export")) {
            export_path = v;
        } else if (!strcmp(a, "--import")) {
            import_path = v;
        } else if (!strcmp(a, "--part")) {
            part = atoi(v);
        } else if (!strcmp(a, "--threads")) {
            char *end = NULL;
            const long t = strtol(v, &end, 10);
            MN_CHECK(end != v && *end == '\0' && t >= 1 && t <= 4096, MN_ERR_ARG,
                     "--threads must be a whole number from 1 to 4096, got '%s'", v);
            threads = (int)t;
        } else {
            MN_FAIL(MN_ERR_ARG, "mednet model: unknown argument '%s' (see --help)", a);
        }
        i++;
    }
    if (!have_depth && !export_path && !import_path && !list) return table();

    /* Before the model: the convolution plan is chosen for this many threads. */
    MN_CALL(mn_threads_init(mn_threads_resolve(threads)));
    mn_model *m = NULL;
    MN_CALL(mn_model_create(&c, &m));
    const mn_model_config *mc = mn_model_config_of(m);
    mn_range e = mn_model_param_range(m, -1);
    mn_log_info("resnet%d, shortcut %s, head %s, %d head(s)", mc->depth, mc->shortcut == MN_SHORTCUT_A ? "A" : "B",
                mc->head_kind == MN_HEAD_SEG ? "conv_seg" : mc->head_kind == MN_HEAD_BRANCH ? "branch" : "fc",
                mc->nheads);
    mn_log_info("  encoder parameters   %12zu  (params [%zu, %zu))", e.count, e.offset, e.offset + e.count);
    for (int h = 0; h < mc->nheads; h++) {
        mn_range r = mn_model_param_range(m, h);
        mn_log_info("  head %-4d (%3d cls)  %12zu  (params [%zu, %zu))", mc->heads[h].id, mc->heads[h].classes,
                    r.count, r.offset, r.offset + r.count);
    }
    mn_log_info("  total parameters     %12zu  BN buffers %zu, tensors %d", mn_model_num_params(m),
                mn_model_num_bn_buffers(m), mn_model_num_tensors(m));
    if (mc->input.n > 0) {
        mn_model_memory mp = mn_model_memory_plan(m);
        mn_head_batch hb[1] = {{0, 0, mc->input.n}};
        double gf = mn_model_forward_flops(m, hb, mc->nheads ? 1 : 0) / 1e9;
        mn_log_info("memory plan for input %dx1x%dx%dx%d:", mc->input.n, mc->input.d, mc->input.h, mc->input.w);
        mn_log_info("  params+grads+BN %9.1f MiB", mib(mp.param_bytes));
        mn_log_info("  activations     %9.1f MiB", mib(mp.activation_bytes));
        mn_log_info("  conv workspace  %9.1f MiB", mib(mp.workspace_bytes));
        mn_log_info("  grad scratch    %9.1f MiB", mib(mp.scratch_bytes));
        mn_log_info("  total planned   %9.1f MiB (optimizer state not included)", mib(mp.total_bytes));
        mn_log_info("  conv FLOPs: forward %.2f GFLOP, training step ~%.2f GFLOP", gf, 3 * gf);
        const char *algo = getenv("MEDNET_CONV_ALGO");
        mn_log_info("convolution plan (MEDNET_CONV_ALGO=%s, %d thread(s); passes forward/backward-data/"
                    "backward-weights):",
                    algo && *algo ? algo : "rule, the default", mn_threads_count());
        char plan[8192];
        mn_model_conv_plan(m, plan, sizeof plan);
        for (char *line = strtok(plan, "\n"); line; line = strtok(NULL, "\n")) mn_log_info("  %s", line);
    }
    mn_err err = MN_OK;
    if (list)
        for (int i = 0; i < mn_model_num_tensors(m); i++) {
            const mn_tensor_info *t = mn_model_tensor(m, i);
            char shape[80] = "";
            size_t k = 0;
            for (int d = 0; d < t->ndim; d++)
                k += (size_t)snprintf(shape + k, sizeof shape - k, d ? "x%d" : "%d", t->shape[d]);
            mn_log_info("  %-44s %-6s %-16s offset %zu", t->name, t->kind == MN_TENSOR_PARAM ? "param" : "buffer",
                        shape, t->offset);
        }
    if (import_path) {
        mn_import_report rep;
        err = mn_model_load_safetensors(m, import_path, strict, &rep);
        if (!err) mn_log_info("imported %s: %d tensors loaded, %d missing, %d unexpected, %d mis-shaped", import_path,
                              rep.loaded, rep.missing, rep.unexpected, rep.mis_shaped);
    }
    if (!err && export_path) {
        if (rank == 0) err = mn_model_save_safetensors(m, export_path, part);
        if (!err) mn_log_info("exported %s (part %d)", export_path, part);
    }
    mn_model_destroy(&m);
    return err;
}

mn_err mn_cmd_model(int argc, char **argv, mn_cmd_result *res)
{
    (void)res;
    int rank = 0;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_CALL(mn_agree(MPI_COMM_WORLD, model_cmd(argc, argv, rank)));
    return MN_OK;
}
