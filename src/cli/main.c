/* main.c: the `mednet` command.  Thin: finds the sub-command in the table below, initialises MPI (with
 * MPI_ERRORS_RETURN) and hands over.  How a failed command ends the job is decided here, once (commands.h). */
#include "commands.h"
#include "mednet/error.h"
#include "mednet/mpicheck.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    mn_cmd_fn fn;
    const char *help;
} commands[] = {
    {"pretrain", mn_cmd_pretrain, "distributed multi-dataset pre-training (mednet pretrain CONFIG)"},
    {"finetune", mn_cmd_finetune, "fine-tune on the corpus's target datasets from a pre-trained encoder"},
    {"info", mn_cmd_info, "print version, MPI size, threads and the BLIS kernel set"},
    {"prep", mn_cmd_prep, "build the corpus: NIfTI datasets -> one parallel-HDF5 file (mednet prep CONFIG)"},
    {"infer", mn_cmd_infer, "apply a trained checkpoint to NIfTI volumes: label maps (and probabilities) on their grids"},
    {"eval", mn_cmd_eval, "per-class Dice, HD95 and ASSD (mm) of predicted against reference NIfTI label maps"},
    {"model", mn_cmd_model, "ResNet parameter counts, memory plan, tensor names, safetensors export/import"},
    {"filter", mn_cmd_filter, "dataset filtering by proxy training: which datasets help (mednet filter CONFIG --out DIR)"},
    {"synth", mn_cmd_synth, "a synthetic corpus: N deformed subjects per dataset of a corpus definition, as NIfTI + .ini"},
    {"export", mn_cmd_export, "a checkpoint's weights as safetensors with MedicalNet's names (mednet export CKPT OUT)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: mednet <command> [arguments]   (mednet <command> --help for its options)\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "  %-10s %s\n", "version", "print the version");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("mednet %s\n", MN_VERSION);
        return 0;
    }
    mn_cmd_fn fn = NULL;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) fn = commands[i].fn;
    if (!fn) {
        fprintf(stderr, "mednet: unknown command '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_cmd_result res = {0};
    mn_err err = fn(argc - 1, argv + 1, &res);
    if (err) mn_mpi_exit_error(MPI_COMM_WORLD, err);
    MPI_Finalize();
    return err ? 1 : res.exit_status;
}
