/* cmd_pretrain.c: `mednet pretrain CONFIG [section.key=value ...]`: distributed multi-dataset pre-training
 * (mednet/train.h), and `mednet finetune CONFIG [...]`: the same loop over the corpus's TARGET datasets (the
 * default of corpus.role becomes `target`), with the encoder taken from a pre-training checkpoint
 * (train.init_encoder) and a new head.  Exit status 0 when done, MN_EXIT_REQUEUE (99) after a signal-triggered
 * checkpoint. */
#include "commands.h"
#include "mednet/mpicheck.h"
#include "mednet/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: mednet pretrain CONFIG [section.key=value ...]\n"
               "       mednet finetune CONFIG [train.init_encoder=CKPT] [section.key=value ...]\n"
               "  CONFIG  an INI run configuration (see configs/pretrain_mricron.ini for every key)\n"
               "  Overrides replace config keys, e.g. train.steps=500 corpus.path=/scratch/corpus.h5\n"
               "  Resumes from the newest checkpoint in train.out when there is one.\n"
               "  Exit status: 0 done, 99 checkpointed on SIGUSR1/SIGTERM (requeue me), other: error.\n");
}

/* The arguments: the same on every rank (local work, agreed by the caller). */
static mn_err check_args(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-' || strchr(argv[1], '=')) {
        usage(stderr);
        MN_FAIL(MN_ERR_ARG, "%s: expected a config file as the first argument", argv[0]);
    }
    for (int i = 2; i < argc; i++)
        MN_CHECK(strchr(argv[i], '=') != NULL, MN_ERR_ARG, "%s: '%s' is not a section.key=value override", argv[0],
                 argv[i]);
    return MN_OK;
}

static mn_err run(int argc, char **argv, mn_cmd_result *res, int finetune)
{
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return MN_OK;
    }
    MN_CALL(mn_agree(MPI_COMM_WORLD, check_args(argc, argv)));
    /* finetune: corpus.role=target first, so that the config file and the command line can still override it. */
    char **ov = calloc((size_t)argc + 1, sizeof *ov);
    MN_CHECK(ov, MN_ERR_MEM, "out of memory");
    int n = 0;
    char role[] = "corpus.role=target";
    if (finetune) ov[n++] = role;
    for (int i = 2; i < argc; i++) ov[n++] = argv[i];
    mn_train_result tr;
    mn_err e = mn_pretrain_run(MPI_COMM_WORLD, argv[1], ov, n, finetune, &tr);
    free(ov);
    res->exit_status = tr.exit_status;
    MN_CALL(e);
    return MN_OK;
}

mn_err mn_cmd_pretrain(int argc, char **argv, mn_cmd_result *res) { return run(argc, argv, res, 0); }
mn_err mn_cmd_finetune(int argc, char **argv, mn_cmd_result *res) { return run(argc, argv, res, 1); }
