/* cmd_prep.c: `mednet prep CONFIG [options] [section.key=value ...]`: build the corpus (see mednet/corpus.h),
 * then reopen it and print its per-dataset summary; `mednet prep --info CORPUS [--ranks P]` only prints the
 * summary and the shard assignment for P ranks (default: the MPI size). */
#include "commands.h"
#include "mednet/corpus.h"
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

static mn_err info_only(const char *path, int ranks, unsigned long long seed, mn_cmd_result *res)
{
    int rank = 0, size = 1;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    mn_corpus_info *info = NULL;
    mn_error_set_quiet(rank != 0); /* rank 0 reads the file and reports; the others would only echo it */
    mn_err e = mn_corpus_open(MPI_COMM_WORLD, path, &info);
    mn_error_set_quiet(0);
    res->agreed = 1; /* mn_corpus_open fails identically on every rank */
    MN_CHECK(!e, e, "called from mn_corpus_open");
    mn_shard_plan *plan = NULL;
    e = mn_shard_assign(info, ranks > 0 ? ranks : size, seed, MN_ROLE_PRETRAIN, &plan);
    if (rank == 0) {
        mn_corpus_print_summary(info, stdout);
        if (!e) mn_shard_plan_print(plan, info, stdout);
    }
    mn_shard_plan_destroy(&plan);
    mn_corpus_info_destroy(&info);
    MN_CHECK(!e, e, "called from mn_shard_assign");
    return MN_OK;
}

mn_err mn_cmd_prep(int argc, char **argv, mn_cmd_result *res)
{
    const char *config = NULL, *output = NULL, *info = NULL;
    int force = 0, skip_bad = -1, ranks = 0;
    unsigned long long seed = 0;
    char **overrides = calloc((size_t)argc + 1, sizeof *overrides);
    MN_CHECK(overrides, MN_ERR_MEM, "out of memory");
    int nover = 0;
    res->agreed = 1; /* argument errors are the same on every rank */
    mn_err e = MN_OK;
    for (int i = 1; i < argc && !e; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            free(overrides);
            return MN_OK;
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
            e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "prep: unknown option '%s'", a);
        } else if (strchr(a, '=')) {
            overrides[nover++] = argv[i];
        } else if (!config) {
            config = a;
        } else {
            e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "prep: unexpected argument '%s'", a);
        }
    }
    if (!e && info) {
        free(overrides);
        return info_only(info, ranks, seed, res);
    }
    if (!e && !config) e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "prep: missing CONFIG");
    if (e) {
        free(overrides);
        usage(stderr);
        return e;
    }
    mn_corpus_def *def = NULL;
    int rank = 0;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    /* Definition errors are identical on every rank (same broadcast text and file lists): rank 0 reports them. */
    mn_error_set_quiet(rank != 0);
    e = mn_corpus_def_load(MPI_COMM_WORLD, config, overrides, nover, &def);
    free(overrides);
    if (!e) e = mn_corpus_def_expand(MPI_COMM_WORLD, def);
    mn_error_set_quiet(0);
    if (e) {
        mn_corpus_def_destroy(&def);
        MN_CHECK(!e, e, "called from mn_corpus_def_load / mn_corpus_def_expand");
    }
    mn_prep_options opt = {.output = output, .force = force, .skip_bad = skip_bad};
    mn_prep_summary sum;
    int size = 1;
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    e = mn_corpus_prep(MPI_COMM_WORLD, def, &opt, &sum);
    char path[1100];
    snprintf(path, sizeof path, "%s", output ? output : def->output);
    mn_corpus_def_destroy(&def);
    if (e) {
        res->agreed = sum.error_agreed;
        MN_CHECK(!e, e, "called from mn_corpus_prep");
    }
    mn_log_info("prep: %d volume(s) written, %d pair(s) skipped, %.2f s on %d rank(s): %.2f volumes/s, %.1f MB/s "
                "NIfTI read, %.1f MB written, checksum %08x", sum.volumes_written, sum.pairs_skipped, sum.seconds, size,
                sum.volumes_written / (sum.seconds > 0 ? sum.seconds : 1),
                (double)sum.bytes_read / 1e6 / (sum.seconds > 0 ? sum.seconds : 1), (double)sum.bytes_written / 1e6,
                (unsigned)sum.checksum);
    return info_only(path, 0, 0, res);
}
