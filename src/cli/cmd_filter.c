/* cmd_filter.c: `mednet filter`: MedicalNet's dataset filtering by proxy training.
 *
 *   mednet filter CONFIG --out DIR [--steps N] [--holdout F] [--eval-batches N] [--min-dice D] [--rel-median R]
 *                 [section.key=value ...]
 *
 * CONFIG is a pre-training configuration.  For every pre-training dataset of its corpus a proxy is trained alone:
 * the same loop as `mednet pretrain` (the model, optimiser and sampler of CONFIG and the overrides) for N steps on
 * that dataset only (corpus.datasets), with the last F of every volume along D held out (sampler.holdout: training
 * never sees a label there) and evaluated on crops whose labels are the held-out slab's (the proxy validation Dice).
 * The ranks are split into G = min(datasets, ranks) groups (MPI_Comm_split, rank r in group r mod G); group g trains
 * the proxies of datasets g, g + G, ... one after the other, so the datasets run concurrently as far as the ranks
 * allow.  Each proxy writes DIR/proxy/<dataset>/ (resumable: running filter again continues an interrupted proxy).
 *
 * The rule: a dataset is kept when its proxy Dice is at least D (absolute floor, default 0.05) and at least R times
 * the median proxy Dice over the datasets (default 0.5); a dataset whose validation slab holds no foreground has no
 * Dice and is dropped.  Output, on rank 0: a table on stdout, DIR/filter.json (every dataset, its Dice before and
 * after the proxy training, the decision and why) and DIR/datasets.txt, one line `corpus.datasets=a,b,...` that
 * `mednet pretrain` takes as an override.
 */
#include "commands.h"
#include "mednet/config.h"
#include "mednet/corpus.h"
#include "mednet/launch.h"
#include "mednet/mem.h"
#include "mednet/mpicheck.h"
#include "mednet/signals.h"
#include "mednet/train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct filter_opts {
    const char *config, *out;
    long steps, eval_batches;
    double holdout, min_dice, rel_median;
    char **overrides;
    int noverrides;
} filter_opts;

static void usage(FILE *f)
{
    fprintf(f, "usage: mednet filter CONFIG --out DIR [--steps N] [--holdout F] [--eval-batches N] [--min-dice D]\n"
               "                     [--rel-median R] [section.key=value ...]\n"
               "  a proxy trained on each pre-training dataset alone (N steps, default 40), validated on the held-out\n"
               "  last F of each volume (default 0.3); kept: Dice >= D (default 0.05) and >= R x median (default 0.5).\n"
               "  Writes DIR/filter.json and DIR/datasets.txt (corpus.datasets=... for mednet pretrain).\n");
}

/* The arguments, the same on every rank (local work, agreed by the caller). */
static mn_err parse(int argc, char **argv, filter_opts *o)
{
    *o = (filter_opts){.steps = 40, .eval_batches = 8, .holdout = 0.3, .min_dice = 0.05, .rel_median = 0.5};
    MN_CALL(mn_calloc(sizeof(char *) * ((size_t)argc + 1), "overrides", (void **)&o->overrides));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
        if (!strcmp(a, "--out")) {
            MN_CHECK(v != NULL, MN_ERR_ARG, "mednet filter: --out needs a folder");
            o->out = v, i++;
        } else if (!strcmp(a, "--steps")) {
            MN_CALL(mn_cli_number("filter", a, v, 1, 1e7, &x));
            o->steps = (long)x, i++;
        } else if (!strcmp(a, "--eval-batches")) {
            MN_CALL(mn_cli_number("filter", a, v, 1, 1e5, &x));
            o->eval_batches = (long)x, i++;
        } else if (!strcmp(a, "--holdout")) {
            MN_CALL(mn_cli_number("filter", a, v, 0.05, 0.9, &o->holdout));
            i++;
        } else if (!strcmp(a, "--min-dice")) {
            MN_CALL(mn_cli_number("filter", a, v, 0, 1, &o->min_dice));
            i++;
        } else if (!strcmp(a, "--rel-median")) {
            MN_CALL(mn_cli_number("filter", a, v, 0, 10, &o->rel_median));
            i++;
        } else if (a[0] == '-') {
            usage(stderr);
            MN_FAIL(MN_ERR_ARG, "mednet filter: unknown option '%s'", a);
        } else if (!o->config && !strchr(a, '=')) {
            o->config = a;
        } else {
            MN_CHECK(strchr(a, '=') != NULL, MN_ERR_ARG, "mednet filter: '%s' is not a section.key=value override", a);
            o->overrides[o->noverrides++] = argv[i];
        }
    }
    if (!o->config || !o->out) usage(stderr);
    MN_CHECK(o->config, MN_ERR_ARG, "mednet filter: expected a config file");
    MN_CHECK(o->out, MN_ERR_ARG, "mednet filter: --out DIR is required");
    return MN_OK;
}

/* The corpus path of the configuration (the overrides applied).  Local work. */
static mn_err corpus_path(MPI_Comm comm, const filter_opts *o, char *path, size_t len)
{
    mn_config *cfg = NULL;
    MN_CALL(mn_train_config_load(comm, o->config, o->overrides, o->noverrides, &cfg));
    const char *p = NULL;
    mn_err e = mn_config_string(cfg, "corpus", "path", NULL, &p);
    if (!e) snprintf(path, len, "%s", p);
    mn_config_destroy(&cfg);
    return e;
}

static int mkdir1(const char *p) { return mkdir(p, 0777) == 0 || errno == EEXIST ? 0 : -1; }

/* One proxy: dataset `name` alone on the group's communicator.  *dice_before/after receive its validation Dice
 * before and after the proxy training; *status the run's exit status. */
static mn_err proxy(MPI_Comm group, const filter_opts *o, const char *name, double *before, double *after,
                    int *status)
{
    char ov_ds[512], ov_out[1400], ov_steps[64], ov_hold[64], ov_eval[64];
    snprintf(ov_ds, sizeof ov_ds, "corpus.datasets=%s", name);
    snprintf(ov_out, sizeof ov_out, "train.out_dir=%s/proxy/%s", o->out, name);
    snprintf(ov_steps, sizeof ov_steps, "train.steps=%ld", o->steps);
    snprintf(ov_hold, sizeof ov_hold, "sampler.holdout=%.17g", o->holdout);
    snprintf(ov_eval, sizeof ov_eval, "train.eval_batches=%ld", o->eval_batches);
    char *fixed[] = {"corpus.role=pretrain", ov_ds, ov_out, ov_steps, ov_hold, ov_eval, "train.checkpoint_every=0",
                     "train.eval_every=0"};
    int nfixed = (int)(sizeof fixed / sizeof fixed[0]), n = 0;
    char **ov = NULL;
    MN_CALL(mn_calloc(sizeof(char *) * (size_t)(o->noverrides + nfixed + 1), "proxy overrides", (void **)&ov));
    for (int i = 0; i < o->noverrides; i++) ov[n++] = o->overrides[i];
    for (int i = 0; i < nfixed; i++) ov[n++] = fixed[i]; /* last: they win over the user's */
    mn_train_result tr;
    mn_err e = mn_pretrain_run(group, o->config, ov, n, 0, &tr);
    mn_free(&ov);
    MN_CALL(e);
    *before = tr.dice_before;
    *after = tr.dice_after;
    *status = tr.exit_status;
    return MN_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Rank 0: the decisions, the table, filter.json and datasets.txt. */
static mn_err report(const filter_opts *o, const mn_corpus_info *info, const int *ds, int n, const double *before,
                     const double *after)
{
    double *sorted = NULL, median = NAN;
    MN_CALL(mn_calloc(sizeof(double) * ((size_t)n + 1), "median", (void **)&sorted));
    int m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(after[i])) sorted[m++] = after[i];
    qsort(sorted, (size_t)m, sizeof *sorted, cmp_double);
    if (m) median = m % 2 ? sorted[m / 2] : 0.5 * (sorted[m / 2 - 1] + sorted[m / 2]);
    mn_free(&sorted);

    char json[1400], txt[1400], tmp[1500];
    snprintf(json, sizeof json, "%s/filter.json", o->out);
    snprintf(txt, sizeof txt, "%s/datasets.txt", o->out);
    snprintf(tmp, sizeof tmp, "%s.tmp", json);
    FILE *f = fopen(tmp, "w");
    MN_CHECK(f, MN_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "{\n  \"corpus\": \"%s\",\n  \"steps\": %ld,\n  \"holdout\": %g,\n  \"rule\": {\"min_dice\": %g, "
               "\"rel_median\": %g},\n  \"median_dice\": %.6f,\n  \"datasets\": [\n",
            info->path, o->steps, o->holdout, o->min_dice, o->rel_median, isfinite(median) ? median : -1.0);
    mn_log_info("dataset filtering: proxy validation Dice after %ld steps, last %.0f%% of each volume held out; "
                "median %.4f; rule: Dice >= %g and >= %g x median",
                o->steps, 100 * o->holdout, median, o->min_dice, o->rel_median);
    mn_log_info("  %-28s %12s %12s  %s", "dataset", "Dice before", "Dice after", "decision");
    char list[8192] = "";
    size_t len = 0;
    int kept = 0;
    for (int i = 0; i < n; i++) {
        const char *name = info->datasets[ds[i]].name, *why;
        int keep = 0;
        if (!isfinite(after[i]))
            why = "no foreground in the held-out slab";
        else if (after[i] < o->min_dice)
            why = "below the absolute floor";
        else if (isfinite(median) && after[i] < o->rel_median * median)
            why = "below the share of the median";
        else
            why = "kept", keep = 1;
        if (keep) {
            len += (size_t)snprintf(list + len, len < sizeof list ? sizeof list - len : 0, "%s%s", kept ? "," : "",
                                    name);
            kept++;
        }
        mn_log_info("  %-28s %12.4f %12.4f  %s", name, before[i], after[i], keep ? "keep" : why);
        fprintf(f, "    {\"name\": \"%s\", \"dice_before\": %.6f, \"dice_after\": %.6f, \"keep\": %s, \"reason\": "
                   "\"%s\"}%s\n",
                name, isfinite(before[i]) ? before[i] : -1.0, isfinite(after[i]) ? after[i] : -1.0,
                keep ? "true" : "false", why, i + 1 < n ? "," : "");
    }
    fprintf(f, "  ],\n  \"keep\": \"%s\"\n}\n", list);
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    MN_CHECK(!bad && len < sizeof list, MN_ERR_IO, "writing %s failed", tmp);
    MN_CHECK(rename(tmp, json) == 0, MN_ERR_IO, "cannot rename %s to %s: %s", tmp, json, strerror(errno));
    MN_CHECK(kept > 0, MN_ERR_CONFIG, "dataset filtering dropped every dataset (report: %s)\n---> HINT: lower "
             "--min-dice / --rel-median, or train the proxies longer (--steps)", json);
    snprintf(tmp, sizeof tmp, "%s.tmp", txt);
    f = fopen(tmp, "w");
    MN_CHECK(f, MN_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "corpus.datasets=%s\n", list);
    bad = ferror(f);
    bad |= fclose(f) != 0;
    MN_CHECK(!bad && rename(tmp, txt) == 0, MN_ERR_IO, "cannot write %s", txt);
    mn_log_info("kept %d of %d datasets; pre-train on them with:  mednet pretrain %s corpus.datasets=%s", kept, n,
                o->config, list);
    mn_log_info("report: %s, %s", json, txt);
    return MN_OK;
}

static mn_err filter(const filter_opts *o, mn_cmd_result *cr)
{
    MPI_Comm world = MPI_COMM_WORLD;
    int rank = 0, size = 1;
    MN_MPI(MPI_Comm_rank(world, &rank));
    MN_MPI(MPI_Comm_size(world, &size));
    char path[4096];
    MN_CALL(mn_agree(world, mn_launch_check(world, NULL)));
    MN_CALL(mn_agree(world, corpus_path(world, o, path, sizeof path)));
    mn_corpus_info *info = NULL;
    MN_CALL(mn_corpus_open(world, path, &info));
    int *ds = NULL, n = 0;
    double *res = NULL; /* [before n][after n][written n] */
    mn_err e = mn_calloc(sizeof(int) * ((size_t)info->num_datasets + 1), "datasets", (void **)&ds);
    if (!e) e = mn_calloc(sizeof(double) * 3 * ((size_t)info->num_datasets + 1), "results", (void **)&res);
    for (int d = 0; !e && d < info->num_datasets; d++)
        if (info->datasets[d].role == MN_ROLE_PRETRAIN) ds[n++] = d;
    if (!e && n == 0)
        e = mn_error_report(MN_ERR_CONFIG, __FILE__, __LINE__, __func__, "corpus %s has no pre-training dataset to "
                            "filter", path);
    if (!e && rank == 0) {
        char proxy_dir[1400];
        snprintf(proxy_dir, sizeof proxy_dir, "%s/proxy", o->out);
        if (mkdir1(o->out) || mkdir1(proxy_dir))
            e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", proxy_dir,
                                strerror(errno));
    }
    e = mn_agree(world, e);
    int groups = n < size ? n : size, color = rank % (groups ? groups : 1);
    MPI_Comm group = MPI_COMM_NULL;
    if (!e) {
        mn_log_info("dataset filtering: %d datasets, %d ranks in %d group(s); %ld proxy steps each", n, size, groups,
                    o->steps);
        e = mn_agree(world, mn_mpi_report_if(MPI_Comm_split(world, color, rank, &group)));
    }
    /* Each group trains its datasets in turn; errors inside a proxy are agreed within the group, then over the
     * world once every group is done. */
    int grank = 0, status = 0;
    mn_err ge = MN_OK;
    if (!e) MN_MPI(MPI_Comm_rank(group, &grank));
    for (int i = color; !e && !ge && i < n; i += groups) {
        ge = proxy(group, o, info->datasets[ds[i]].name, &res[i], &res[n + i], &status);
        /* A failure the group did not agree on may have left its ranks inside a collective: end the job now. */
        if (ge && !mn_err_is_agreed(ge)) mn_mpi_exit_error(world, ge);
        if (!ge && grank == 0) res[2 * n + i] = 1;
        if (!ge && status) break; /* checkpointed on a signal: stop, the next run continues */
    }
    if (!e) e = mn_agree(world, ge);
    int any_status = status;
    if (!e) MN_MPI(MPI_Allreduce(&status, &any_status, 1, MPI_INT, MPI_MAX, world));
    if (!e && !any_status) {
        /* Every group's rank 0 contributes its datasets' results. */
        for (int i = 0; i < n; i++)
            if (!(grank == 0 && i % groups == color)) res[i] = res[n + i] = res[2 * n + i] = 0;
        MN_MPI(MPI_Allreduce(MPI_IN_PLACE, res, 3 * n, MPI_DOUBLE, MPI_SUM, world));
        mn_err re = MN_OK;
        if (rank == 0) re = report(o, info, ds, n, res, res + n);
        e = mn_agree(world, re);
    } else if (!e) {
        cr->exit_status = MN_EXIT_REQUEUE;
        mn_log_info("dataset filtering interrupted by a signal: the proxies checkpointed; run the same command again "
                    "to continue");
    }
    if (group != MPI_COMM_NULL) MPI_Comm_free(&group);
    mn_free(&ds);
    mn_free(&res);
    mn_corpus_info_destroy(&info);
    MN_CALL(e);
    return MN_OK;
}

mn_err mn_cmd_filter(int argc, char **argv, mn_cmd_result *res)
{
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return MN_OK;
    }
    filter_opts o;
    mn_err e = parse(argc, argv, &o);
    e = mn_agree(MPI_COMM_WORLD, e);
    if (!e) e = filter(&o, res);
    mn_free(&o.overrides);
    MN_CALL(e);
    return MN_OK;
}
