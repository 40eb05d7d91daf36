/* cmd_export.c: `mednet export`: a training checkpoint's weights as safetensors with MedicalNet's state-dict names,
 * for PyTorch (MedicalNet's and MONAI-style ResNet classes, load_state_dict(strict=True)) or for fine-tuning and
 * inference starting from a file that is not a mednet checkpoint.
 *
 *   mednet export CKPT OUT.safetensors [--head NAME | --encoder | --all-heads]
 *
 * Default: the encoder plus the checkpoint's only head (conv_seg.* or the branch head's names); a checkpoint with
 * several heads needs --head NAME (that dataset's head, plain names), --encoder (no head) or --all-heads (every
 * head, heads.<h>.* names, h in the order the heads are listed).  The metadata records depth, shortcut, head kind,
 * source checkpoint and step, and with one head what `mednet infer` needs to apply it (mn_model_file_load): the
 * dataset, its class count, the training crop and the dataset's preprocessing record as prep.<key> entries.  Rank 0
 * does the work; the outcome is agreed.
 */
#include "commands.h"
#include "mednet/config.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"
#include "mednet/sampler.h"
#include "mednet/train.h"

#include <stdio.h>
#include <string.h>

static void usage(void)
{
    mn_log_info("usage: mednet export CKPT OUT.safetensors [--head NAME | --encoder | --all-heads]\n"
                "  the encoder and the checkpoint's only head (or the one chosen) with MedicalNet's tensor names");
}

enum { MAXMETA = 16 };

/* The metadata of an export: source and step, and for one head its dataset, classes, crop and record. */
typedef struct export_meta {
    const char *k[MAXMETA], *v[MAXMETA];
    int n;
    char step[32], classes[16], crop[64];
    mn_config *cfg, *rec;
} export_meta;

static mn_err meta_of(const mn_ckpt_model *cm, const char *src, export_meta *em)
{
    snprintf(em->step, sizeof em->step, "%ld", cm->step);
    if (!strpbrk(src, "\"\\\n\t\r")) em->k[em->n] = "source", em->v[em->n++] = src; /* JSON-safe paths only */
    em->k[em->n] = "step", em->v[em->n++] = em->step;
    if (cm->nheads != 1) return MN_OK;
    const char *head = cm->head_names[0];
    snprintf(em->classes, sizeof em->classes, "%d", cm->heads[0].classes);
    em->k[em->n] = "dataset", em->v[em->n++] = head;
    em->k[em->n] = "classes", em->v[em->n++] = em->classes;
    mn_sampler_config sc;
    MN_CALL(mn_config_parse(cm->config_text, src, &em->cfg));
    MN_CALL(mn_sampler_config_read(em->cfg, "sampler", &sc));
    snprintf(em->crop, sizeof em->crop, "%d, %d, %d", sc.crop[0], sc.crop[1], sc.crop[2]);
    em->k[em->n] = "crop", em->v[em->n++] = em->crop;
    if (!cm->prep_text) {
        mn_log_warn("export: %s has no preprocessing record (an older checkpoint): the file will need --corpus "
                    "for mednet infer", src);
        return MN_OK;
    }
    static const char *const keys[] = {"prep.classes", "prep.modality", "prep.spacing", "prep.normalisation",
                                       "prep.norm_clip", "prep.norm_mean", "prep.norm_std", "prep.antialias"};
    MN_CALL(mn_config_parse(cm->prep_text, src, &em->rec));
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = NULL;
        MN_CALL(mn_config_string(em->rec, head, keys[i] + 5, NULL, &v));
        MN_CHECK(v, MN_ERR_FORMAT, "%s: its preprocessing record of '%s' lacks '%s'", src, head, keys[i] + 5);
        em->k[em->n] = keys[i], em->v[em->n++] = v;
    }
    return MN_OK;
}

static mn_err export_cmd(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *head = NULL;
    int encoder_only = 0, all = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return MN_OK;
        } else if (!strcmp(a, "--encoder")) {
            encoder_only = 1;
        } else if (!strcmp(a, "--all-heads")) {
            all = 1;
        } else if (!strcmp(a, "--head")) {
            MN_CHECK(i + 1 < argc, MN_ERR_ARG, "mednet export: --head needs a dataset name");
            head = argv[++i];
        } else if (a[0] == '-') {
            MN_FAIL(MN_ERR_ARG, "mednet export: unknown option '%s' (see --help)", a);
        } else if (!in) {
            in = a;
        } else if (!out) {
            out = a;
        } else {
            MN_FAIL(MN_ERR_ARG, "mednet export: unexpected argument '%s' (see --help)", a);
        }
    }
    MN_CHECK(in && out, MN_ERR_ARG, "mednet export: give a checkpoint and an output file (see --help)");
    MN_CHECK(encoder_only + all + (head != NULL) <= 1, MN_ERR_ARG,
             "mednet export: choose one of --head, --encoder and --all-heads");
    size_t n = strlen(out), k = strlen(".safetensors");
    MN_CHECK(n > k && !strcmp(out + n - k, ".safetensors"), MN_ERR_ARG,
             "mednet export: the output '%s' must end in .safetensors", out);

    const char *only = encoder_only ? "" : head;  /* NULL (all) when neither is given */
    mn_ckpt_model cm;
    MN_CALL(mn_ckpt_model_load(in, (mn_shape){0, 1, 0, 0, 0}, only, &cm));
    mn_err e = MN_OK;
    if (!only && !all && cm.nheads > 1) {
        char list[1024] = "";
        size_t len = 0;
        for (int h = 0; h < cm.nheads && len + 1 < sizeof list; h++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", h ? ", " : "", cm.head_names[h]);
        e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__,
                            "%s has %d heads (%s)\n---> HINT: choose one with --head NAME, or --encoder, or "
                            "--all-heads", in, cm.nheads, list);
    }
    export_meta em;
    memset(&em, 0, sizeof em);
    if (!e) e = meta_of(&cm, in, &em);
    if (!e) e = mn_model_save_safetensors_meta(cm.model, out, -2, em.k, em.v, em.n);
    mn_config_destroy(&em.cfg);
    mn_config_destroy(&em.rec);
    if (!e) {
        mn_log_info("exported %s (step %ld): resnet%d encoder%s%s%s, %zu parameters -> %s", in, cm.step,
                    cm.cfg.depth, cm.nheads ? " + " : "", cm.nheads == 1 ? "head " : cm.nheads ? "every head" : "",
                    cm.nheads == 1 ? cm.head_names[0] : "", mn_model_num_params(cm.model), out);
    }
    mn_ckpt_model_free(&cm);
    return e;
}

mn_err mn_cmd_export(int argc, char **argv, mn_cmd_result *res)
{
    (void)res;
    int rank = 0;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_CALL(mn_agree(MPI_COMM_WORLD, rank == 0 ? export_cmd(argc, argv) : MN_OK));
    return MN_OK;
}
