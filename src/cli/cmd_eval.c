/* cmd_eval.c: `mednet eval PRED LABEL [PRED LABEL ...] [options]`: per-class Dice, HD95, HD and ASSD in mm of
 * predictions against reference labels (mednet/segmetrics.h), as a table on stdout and optionally CSV and JSON.
 *
 * Pairs are dealt round-robin to the ranks; each rank evaluates its own (local work, agreed: a bad file on any rank
 * is exit status 1 on every rank with one message naming it), the results are combined on rank 0 (a bytewise OR
 * over zeroed records: exactly one rank wrote each), which prints and writes the files (its local work, agreed). */
#include "commands.h"
#include "mednet/mem.h"
#include "mednet/mpicheck.h"
#include "mednet/segmetrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: mednet eval PRED LABEL [PRED LABEL ...] [--classes N] [--tolerance MM] [--csv PATH] "
               "[--json PATH]\n"
               "  PRED, LABEL   NIfTI label volumes on one grid (class indices; 0 = background)\n"
               "  --classes N   classes 0..N-1 (default: one more than the largest value in each pair)\n"
               "  --tolerance   largest difference of affine entries (mm) still taken as one grid (default 1e-3)\n"
               "  --csv, --json also write the per-class metrics there (atomically)\n"
               "Dice; HD95, HD and ASSD in mm through the voxel spacing (surfaces: voxels with a face neighbour\n"
               "outside the structure).  Both empty: Dice 1, distances 0.  One empty: Dice 0, distances inf (JSON "
               "null).\n");
}

mn_err mn_cmd_eval(int argc, char **argv, mn_cmd_result *res)
{
    (void)res;
    int rank = 0, size = 1, classes = 0, help = 0, npairs = 0;
    double tol = 1e-3;
    const char *csv = NULL, *json = NULL;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    const char **files = calloc((size_t)argc + 1, sizeof *files);
    int nfiles = 0;
    /* The arguments are the same on every rank: rank 0 reports, the agreement stops everyone. */
    mn_err e = files ? MN_OK : MN_ERR_MEM;
#define ARG_FAIL(...) e = rank ? MN_ERR_ARG : mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, __VA_ARGS__)
    for (int i = 1; i < argc && !e; i++) {
        const char *a = argv[i];
        char *end = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help = 1;
        } else if (!strcmp(a, "--classes") && i + 1 < argc) {
            classes = (int)strtol(argv[++i], &end, 10);
            if (*end || classes < 2 || classes > MN_EVAL_MAX_CLASSES)
                ARG_FAIL("eval: --classes must be an integer in [2, %d], got '%s'", MN_EVAL_MAX_CLASSES, argv[i]);
        } else if (!strcmp(a, "--tolerance") && i + 1 < argc) {
            tol = strtod(argv[++i], &end);
            if (*end || !(tol >= 0)) ARG_FAIL("eval: --tolerance must be a number >= 0, got '%s'", argv[i]);
        } else if (!strcmp(a, "--csv") && i + 1 < argc) {
            csv = argv[++i];
        } else if (!strcmp(a, "--json") && i + 1 < argc) {
            json = argv[++i];
        } else if (a[0] == '-') {
            ARG_FAIL("eval: unknown option '%s' (or its value is missing)", a);
        } else {
            files[nfiles++] = a;
        }
    }
    if (!e && !help && (nfiles == 0 || nfiles % 2))
        ARG_FAIL("eval: expected pairs of files PRED LABEL, got %d file name(s)", nfiles);
#undef ARG_FAIL
    e = mn_agree(MPI_COMM_WORLD, e);
    if (e || help) {
        free(files);
        if (rank == 0) usage(e ? stderr : stdout);
        return e;
    }
    npairs = nfiles / 2;
    mn_eval_case *cases = NULL;
    e = mn_calloc(sizeof *cases * (size_t)npairs, "evaluation results", (void **)&cases);
    for (int i = rank; i < npairs && !e; i += size) e = mn_eval_pair(files[2 * i], files[2 * i + 1], classes, tol, &cases[i]);
    free(files);
    e = mn_agree(MPI_COMM_WORLD, e);
    /* Combine on rank 0: each record was written by exactly one rank, the others are zero bytes. */
    size_t bytes = sizeof *cases * (size_t)npairs, chunk = (size_t)1 << 30;
    for (size_t off = 0; off < bytes && !e && size > 1; off += chunk) {
        int len = (int)(bytes - off < chunk ? bytes - off : chunk);
        char *p = (char *)cases + off;
        e = mn_mpi_report_if(MPI_Reduce(rank ? p : MPI_IN_PLACE, p, len, MPI_BYTE, MPI_BOR, 0, MPI_COMM_WORLD));
    }
    if (!e) {
        mn_err we = MN_OK;
        if (rank == 0) {
            mn_eval_print(stdout, cases, npairs);
            fflush(stdout);
            if (csv) we = mn_eval_write_csv(csv, cases, npairs);
            if (!we && json) we = mn_eval_write_json(json, cases, npairs);
        }
        e = mn_agree(MPI_COMM_WORLD, we);
    }
    mn_free(&cases);
    MN_CHECK(!e, e, "called from mednet eval");
    return MN_OK;
}
