/* cmd_prep.c: `mednet prep CONFIG [options] [section.key=value ...]`: build the corpus (see mednet/corpus.h),
 * then reopen it and print its per-dataset summary; `mednet prep --info CORPUS [--ranks P]` only prints the
 * summary and the shard assignment for P ranks (default: the MPI size).
 *
 * Every error this command returns before the write phase is agreed by mn_agree on MPI_COMM_WORLD, so main() ends
 * the job with exit status 1 on every rank.  A verdict every rank would reach alike (the arguments, the shard plan
 * printed by rank 0) is computed or reported by rank 0 alone and handed to the others by the agreement, so it is
 * printed once. */
#include "commands.h"
#include "mednet/corpus.h"
#include "mednet/launch.h"
#include "mednet/mpicheck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: mednet prep CONFIG [--force] [--skip-bad] [--output PATH] [section.key=value ...]\n"
               "       mednet prep --info CORPUS [--ranks P] [--seed S]\n"
               "  --force     replace an existing corpus file\n"
               "  --skip-bad  a bad image/label pair is a warning and skipped (counted), instead of an error\n"
               "  --output    corpus file to write (default: [corpus] output)\n"
               "  --info      print the summary and shard assignment of an existing corpus\n");
}

static mn_err info_only(const char *path, int ranks, unsigned long long seed)
{
    int rank = 0, size = 1;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    mn_corpus_info *info = NULL;
    MN_CALL(mn_corpus_open(MPI_COMM_WORLD, path, &info)); /* agreed on every rank */
    /* Only rank 0 prints, so only rank 0 builds the plan; the agreement tells the others how it went. */
    mn_err e = MN_OK;
    if (rank == 0) {
        mn_shard_plan *plan = NULL;
        /* The pre-training plan; a corpus of target datasets only (a fine-tuning corpus) shows the target plan. */
        mn_role role = MN_ROLE_TARGET;
        for (int d = 0; d < info->num_datasets; d++)
            if (info->datasets[d].role == MN_ROLE_PRETRAIN) role = MN_ROLE_PRETRAIN;
        e = mn_shard_assign(info, ranks > 0 ? ranks : size, seed, role, &plan);
        mn_corpus_print_summary(info, stdout);
        if (!e) mn_shard_plan_print(plan, info, stdout);
        mn_shard_plan_destroy(&plan);
    }
    mn_corpus_info_destroy(&info);
    MN_CALL(mn_agree(MPI_COMM_WORLD, e));
    return MN_OK;
}

mn_err mn_cmd_prep(int argc, char **argv, mn_cmd_result *res)
{
    (void)res; /* every error below carries its agreement (mn_agree) */
    const char *config = NULL, *output = NULL, *info = NULL;
    int force = 0, skip_bad = -1, ranks = 0, help = 0, rank = 0, size = 1;
    unsigned long long seed = 0;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    /* A wrong launcher (P singletons writing one corpus file) is stopped before anything is read or written. */
    MN_CALL(mn_agree(MPI_COMM_WORLD, mn_launch_check(MPI_COMM_WORLD, NULL)));
    char **overrides = calloc((size_t)argc + 1, sizeof *overrides);
    int nover = 0;
    /* The arguments are the same on every rank: rank 0 reports a bad one, the agreement stops everyone. */
    mn_err e = overrides ? MN_OK : mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    for (int i = 1; i < argc && !e; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help = 1;
        } else if (!strcmp(a, "--force")) {
            force = 1;
        } else if (!strcmp(a, "--skip-bad")) {
            skip_bad = 1;
        } else if (!strcmp(a, "--output") && i + 1 < argc) {
            output = argv[++i];
        } else if (!strcmp(a, "--info") && i + 1 < argc) {
            info = argv[++i];
        } else if (!strcmp(a, "--ranks") && i + 1 < argc) {
            ranks = atoi(argv[++i]);
        } else if (!strcmp(a, "--seed") && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 10);
        } else if (a[0] == '-') {
            e = rank ? MN_ERR_ARG : mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "prep: unknown option "
                                                    "'%s'", a);
        } else if (strchr(a, '=')) {
            overrides[nover++] = argv[i];
        } else if (!config) {
            config = a;
        } else {
            e = rank ? MN_ERR_ARG : mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "prep: unexpected "
                                                    "argument '%s'", a);
        }
    }
    if (!e && !help && !info && !config)
        e = rank ? MN_ERR_ARG : mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "prep: missing CONFIG");
    e = mn_agree(MPI_COMM_WORLD, e);
    if (e || help) {
        free(overrides);
        if (rank == 0) usage(e ? stderr : stdout);
        return e;
    }
    if (info) {
        free(overrides);
        MN_CALL(info_only(info, ranks, seed));
        return MN_OK;
    }
    /* The definition: collective, the same text and file lists on every rank. */
    mn_corpus_def *def = NULL;
    e = mn_corpus_def_load(MPI_COMM_WORLD, config, overrides, nover, &def);
    free(overrides);
    if (!e) e = mn_corpus_def_expand(MPI_COMM_WORLD, def);
    e = mn_agree(MPI_COMM_WORLD, e);
    if (e) {
        mn_corpus_def_destroy(&def);
        MN_CHECK(!e, e, "called from mn_corpus_def_load / mn_corpus_def_expand");
    }
    mn_prep_options opt = {.output = output, .force = force, .skip_bad = skip_bad};
    mn_prep_summary sum;
    e = mn_corpus_prep(MPI_COMM_WORLD, def, &opt, &sum);
    char path[1100];
    snprintf(path, sizeof path, "%s", output ? output : def->output);
    mn_corpus_def_destroy(&def);
    MN_CHECK(!e, e, "called from mn_corpus_prep");
    mn_log_info("prep: %d volume(s) written, %d pair(s) skipped, %.2f s on %d rank(s): %.2f volumes/s, %.1f MB/s "
                "NIfTI read, %.1f MB written, checksum %08x", sum.volumes_written, sum.pairs_skipped, sum.seconds, size,
                sum.volumes_written / (sum.seconds > 0 ? sum.seconds : 1),
                (double)sum.bytes_read / 1e6 / (sum.seconds > 0 ? sum.seconds : 1), (double)sum.bytes_written / 1e6,
                (unsigned)sum.checksum);
    MN_CALL(info_only(path, 0, 0));
    return MN_OK;
}
