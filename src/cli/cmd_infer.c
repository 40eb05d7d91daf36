/* cmd_infer.c: `mednet infer CKPT INPUT... -o DIR [options]`: a trained checkpoint (or safetensors file) applied to NIfTI volumes
 * (mednet/infer.h): a label map per input on the input's grid, optionally the class probabilities.  Inputs are
 * dealt round-robin to the ranks.  The arguments are the same on every rank: rank 0 reports a bad one and the
 * agreement stops every rank with exit status 1. */
#include "commands.h"
#include "mednet/infer.h"
#include "mednet/mpicheck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: mednet infer CKPT INPUT.nii[.gz]... -o DIR [options]\n"
               "  CKPT            a training checkpoint (ckpt-<step>.h5 of mednet pretrain / finetune), or a\n"
               "                  .safetensors file with one head (mednet export writes what infer needs into it)\n"
               "  -o, --out-dir   writes DIR/<name>_seg.nii.gz (uint8 classes) per input, on the input's grid and "
               "header\n"
               "  --list FILE     more inputs, one path per line\n"
               "  --head NAME     the dataset whose head to apply (default: the checkpoint's only one)\n"
               "  --window N|D,H,W  sliding-window size in voxels of the model's grid (default: the training crop)\n"
               "  --overlap F     least overlap of neighbouring windows, share of a window in [0, 1) (default 0.5)\n"
               "  --blend MODE    gaussian (default), linear or constant weighting of overlapping windows\n"
               "  --batch N       windows per forward pass (default 1)\n"
               "  --tta           average over the 8 flips of the three axes\n"
               "  --probs         also write DIR/<name>_prob.nii.gz: float32, one volume per class\n"
               "  --force         replace existing outputs\n"
               "  --threads N     threads per rank (default: SLURM_CPUS_PER_TASK, OMP_NUM_THREADS, 1)\n"
               "  --corpus PATH   for checkpoints without a preprocessing record, and safetensors files without\n"
               "                  metadata (with --head): the corpus they were trained on\n"
               "  --config FILE   safetensors without metadata: a run config ([model] depth, shortcut, head;\n"
               "                  [sampler] crop)\n");
}

/* Append the non-empty lines of `path` to the input list (*in, *n, *cap).  Local work. */
static mn_err read_list(const char *path, char ***in, int *n, int *cap)
{
    FILE *f = fopen(path, "r");
    MN_CHECK(f, MN_ERR_IO, "infer: cannot open the input list '%s'", path);
    char line[4096];
    mn_err e = MN_OK;
    while (!e && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0] || line[0] == '#') continue;
        if (*n == *cap) {
            char **grown = realloc(*in, sizeof **in * (size_t)(*cap = *cap * 2 + 16));
            if (!grown) {
                e = MN_ERR_MEM;
                break;
            }
            *in = grown;
        }
        (*in)[*n] = strdup(line);
        if (!(*in)[(*n)++]) e = MN_ERR_MEM;
    }
    fclose(f);
    MN_CHECK(!e, e, "infer: out of memory reading '%s'", path);
    return MN_OK;
}

/* Parse the arguments into *o (inputs in *in, strdup'ed).  Local work. */
static mn_err parse(int argc, char **argv, mn_infer_options *o, char ***in, int *n, int *help)
{
    int cap = argc + 16;
    *in = calloc((size_t)cap, sizeof **in);
    MN_CHECK(*in, MN_ERR_MEM, "out of memory");
    o->overlap = 0.5, o->batch = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            *help = 1;
        } else if (!strcmp(a, "--tta")) {
            o->tta = 1;
        } else if (!strcmp(a, "--probs")) {
            o->probs = 1;
        } else if (!strcmp(a, "--force")) {
            o->force = 1;
        } else if (a[0] == '-' && !v) {
            MN_FAIL(MN_ERR_ARG, "infer: option '%s' is unknown or lacks its value", a);
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out-dir")) {
            o->out_dir = argv[++i];
        } else if (!strcmp(a, "--head")) {
            o->head = argv[++i];
        } else if (!strcmp(a, "--corpus")) {
            o->corpus = argv[++i];
        } else if (!strcmp(a, "--config")) {
            o->config = argv[++i];
        } else if (!strcmp(a, "--list")) {
            MN_CALL(read_list(argv[++i], in, n, &cap));
        } else if (!strcmp(a, "--window")) {
            int k = sscanf(argv[++i], "%d,%d,%d", &o->window[0], &o->window[1], &o->window[2]);
            if (k == 1) o->window[1] = o->window[2] = o->window[0];
            MN_CHECK((k == 1 || k == 3) && o->window[0] >= 4 && o->window[1] >= 4 && o->window[2] >= 4 &&
                     o->window[0] <= 1024 && o->window[1] <= 1024 && o->window[2] <= 1024, MN_ERR_ARG,
                     "infer: --window takes N or D,H,W, each in [4, 1024]; got '%s'", argv[i]);
        } else if (!strcmp(a, "--overlap")) {
            o->overlap = strtod(argv[++i], &end);
            MN_CHECK(!*end && o->overlap >= 0 && o->overlap < 1, MN_ERR_ARG,
                     "infer: --overlap must be in [0, 1), got '%s'", argv[i]);
        } else if (!strcmp(a, "--blend")) {
            const char *b = argv[++i];
            o->blend = !strcmp(b, "gaussian") ? MN_BLEND_GAUSSIAN : !strcmp(b, "linear") ? MN_BLEND_LINEAR
                     : MN_BLEND_CONSTANT;
            MN_CHECK(!strcmp(b, "gaussian") || !strcmp(b, "linear") || !strcmp(b, "constant"), MN_ERR_ARG,
                     "infer: --blend is gaussian, linear or constant, got '%s'", b);
        } else if (!strcmp(a, "--batch") || !strcmp(a, "--threads")) {
            long x = strtol(argv[++i], &end, 10);
            MN_CHECK(!*end && x >= (a[2] == 'b' ? 1 : 0) && x <= 4096, MN_ERR_ARG, "infer: %s: bad value '%s'", a,
                     argv[i]);
            *(a[2] == 'b' ? &o->batch : &o->threads) = (int)x;
        } else if (a[0] == '-') {
            MN_FAIL(MN_ERR_ARG, "infer: unknown option '%s'", a);
        } else if (!o->checkpoint) {
            o->checkpoint = a;
        } else {
            if (*n == cap) MN_FAIL(MN_ERR_INTERNAL, "infer: input list overflow");
            (*in)[*n] = strdup(a);
            MN_CHECK((*in)[(*n)++], MN_ERR_MEM, "out of memory");
        }
    }
    if (*help) return MN_OK;
    MN_CHECK(o->checkpoint, MN_ERR_ARG, "infer: missing CKPT (a training checkpoint or .safetensors file)");
    MN_CHECK(*n > 0, MN_ERR_ARG, "infer: no input volumes (give NIfTI files after CKPT, or --list FILE)");
    MN_CHECK(o->out_dir && *o->out_dir, MN_ERR_ARG, "infer: missing -o DIR (the output folder)");
    return MN_OK;
}

mn_err mn_cmd_infer(int argc, char **argv, mn_cmd_result *res)
{
    (void)res;
    int rank = 0, help = 0, n = 0;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    mn_infer_options o;
    memset(&o, 0, sizeof o);
    char **in = NULL;
    /* Rank 0 parses first (one message per error), the others once it succeeded. */
    mn_err e = mn_agree(MPI_COMM_WORLD, rank == 0 ? parse(argc, argv, &o, &in, &n, &help) : MN_OK);
    if (!e) e = mn_agree(MPI_COMM_WORLD, rank != 0 ? parse(argc, argv, &o, &in, &n, &help) : MN_OK);
    if (rank == 0 && (e || help)) usage(e ? stderr : stdout);
    if (!e && !help) {
        o.inputs = (const char *const *)in;
        o.ninputs = n;
        e = mn_infer_run(MPI_COMM_WORLD, &o);
    }
    for (int i = 0; in && i < n; i++) free(in[i]);
    free(in);
    MN_CHECK(!e, e, "called from mednet infer");
    return MN_OK;
}
