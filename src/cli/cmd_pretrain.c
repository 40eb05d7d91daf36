/* cmd_pretrain.c: `mednet pretrain CONFIG [section.key=value ...]`: distributed multi-dataset pre-training
 * (mednet/train.h).  Exit status 0 when done, MN_EXIT_REQUEUE (99) after a signal-triggered checkpoint. */
#include "commands.h"
#include "mednet/mpicheck.h"
#include "mednet/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: mednet pretrain CONFIG [section.key=value ...]\n"
               "  CONFIG  an INI run configuration (see configs/pretrain_mricron.ini for every key)\n"
               "  Overrides replace config keys, e.g. train.steps=500 corpus.path=/scratch/corpus.h5\n"
               "  Resumes from the newest checkpoint in train.out when there is one.\n"
               "  Exit status: 0 done, 99 checkpointed on SIGUSR1/SIGTERM (requeue me), other: error.\n");
}

mn_err mn_cmd_pretrain(int argc, char **argv, mn_cmd_result *res)
{
    res->agreed = 1;
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return MN_OK;
    }
    if (argc < 2 || argv[1][0] == '-' || strchr(argv[1], '=')) {
        usage(stderr);
        MN_FAIL(MN_ERR_ARG, "pretrain: expected a config file as the first argument");
    }
    for (int i = 2; i < argc; i++)
        MN_CHECK(strchr(argv[i], '=') != NULL, MN_ERR_ARG, "pretrain: '%s' is not a section.key=value override",
                 argv[i]);
    mn_train_result tr;
    mn_err e = mn_pretrain_run(MPI_COMM_WORLD, argv[1], argv + 2, argc - 2, &tr);
    res->agreed = tr.agreed;
    res->exit_status = tr.exit_status;
    MN_CALL(e);
    return MN_OK;
}
