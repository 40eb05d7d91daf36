/* test_corpus DIR (under mpiexec -n 1, 2, 4): the corpus end to end on the synthetic inputs of
 * test_corpus_inputs:
 * - mednet prep on P ranks writes DIR/np<P>.h5 (ctest then compares the 1-, 2- and 4-rank files with h5diff);
 * - the metadata reads back (datasets, roles, classes, per-dataset median or configured spacing);
 * - shard plans for P = 1..12 cover every pre-training volume exactly once (or replicate evenly when P > V),
 *   give every rank a dataset, keep each dataset on consecutive ranks, and are deterministic for a seed;
 * - each rank loads exactly its shard (collective reads, CRC-checked);
 * - the sampler is deterministic from (seed, rank, step), orders samples by dataset, oversamples foreground,
 *   and pads crops larger than a volume with MN_LABEL_IGNORE;
 * - bad inputs (missing file, wrong magic, truncated .nii.gz, 4-D, mismatched label grid, empty label, NaN,
 *   label code outside the map) fail on every rank with the expected error, agreed (mn_err_is_agreed) on every
 *   rank, leave no output or temporary file, and never touch an existing corpus, even with --force; an existing
 *   output without --force and compression on several ranks are refused with an agreed error; --skip-bad skips and
 *   counts a bad pair, and the skip reason recorded in the file names the file;
 * - a truncated corpus, one with a dataset or a volume removed, or with modified voxels is rejected with an
 *   agreed error on every rank.
 * Error codes are compared with mn_err_code (the agreement bits set by mn_agree ride on the value).
 */
#include "mednet/corpus.h"
#include "mednet/mpicheck.h"
#include "mednet/nifti.h"
#include "mednet/sampler.h"
#include "test_util.h"

#include <hdf5.h>
#include <string.h>
#include <unistd.h>

static int rank, size;
static const char *dir;

/* Prep from definition text on MPI_COMM_WORLD (every rank parses the same text). */
static mn_err prep_text(const char *text, const char *output, int force, int skip, mn_prep_summary *sum)
{
    mn_config *cfg = NULL;
    mn_corpus_def *def = NULL;
    mn_err e = mn_config_parse(text, "inline.ini", &cfg);
    if (!e) e = mn_corpus_def_from_config(cfg, &def);
    mn_config_destroy(&cfg);
    if (!e) e = mn_corpus_def_expand(MPI_COMM_WORLD, def);
    e = mn_agree(MPI_COMM_WORLD, e); /* as `mednet prep` does: the definition gives the same verdict everywhere */
    mn_prep_options opt = {.output = output, .force = force, .skip_bad = skip};
    if (!e) e = mn_corpus_prep(MPI_COMM_WORLD, def, &opt, sum);
    mn_corpus_def_destroy(&def);
    return e;
}

static uint32_t file_crc(const char *path)
{
    int64_t n = 0;
    uint32_t c = 0;
    return mn_file_crc32(path, &n, &c) == MN_OK ? c : 0;
}

static void test_prep_and_info(char *out, size_t cap)
{
    char ini[1024], ovr[1200];
    snprintf(ini, sizeof ini, "%s/synth.ini", dir);
    snprintf(out, cap, "%s/np%d.h5", dir, size);
    snprintf(ovr, sizeof ovr, "corpus.output=%s", out);
    char *ov[1] = {ovr};
    mn_corpus_def *def = NULL;
    TEST_EXPECT(mn_corpus_def_load(MPI_COMM_WORLD, ini, ov, 1, &def) == MN_OK, "load %s", ini);
    if (!def) return;
    TEST_EXPECT(mn_corpus_def_expand(MPI_COMM_WORLD, def) == MN_OK, "expand");
    TEST_EXPECT(def->datasets[0].num_pairs == 3 && def->datasets[1].num_pairs == 2, "pairs %d %d",
                def->datasets[0].num_pairs, def->datasets[1].num_pairs);
    mn_prep_options opt = {.output = NULL, .force = 1, .skip_bad = -1};
    mn_prep_summary sum;
    TEST_EXPECT(mn_corpus_prep(MPI_COMM_WORLD, def, &opt, &sum) == MN_OK, "prep on %d ranks", size);
    TEST_EXPECT(sum.volumes_written == 7 && sum.pairs_skipped == 0, "written %d skipped %d", sum.volumes_written,
                sum.pairs_skipped);
    mn_corpus_def_destroy(&def);
    char tmp[1300];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    TEST_EXPECT(access(out, F_OK) == 0 && access(tmp, F_OK) != 0, "output present, no temporary left");

    mn_corpus_info *info = NULL;
    TEST_EXPECT(mn_corpus_open(MPI_COMM_WORLD, out, &info) == MN_OK, "open");
    if (!info) return;
    TEST_EXPECT(info->num_datasets == 4 && info->num_volumes == 7, "%d datasets %d volumes", info->num_datasets,
                info->num_volumes);
    TEST_EXPECT(info->checksum == sum.checksum, "checksum in file %08x vs prep %08x", info->checksum, sum.checksum);
    const mn_corpus_dataset *a = &info->datasets[0], *b = &info->datasets[1], *t = &info->datasets[3];
    TEST_EXPECT(!strcmp(a->name, "mr_a") && a->num_volumes == 3 && a->num_classes == 3 &&
                    !strcmp(a->class_names[2], "shell"), "mr_a metadata");
    /* Per-axis median of (1, 1.5, 1) x (1, 1, 1) y (1, 1, 2) z spacings. */
    TEST_EXPECT(a->spacing[0] == 1 && a->spacing[1] == 1 && a->spacing[2] == 1, "median spacing %g %g %g",
                a->spacing[0], a->spacing[1], a->spacing[2]);
    TEST_EXPECT(b->spacing[0] == 2 && !strcmp(b->modality, "CT") && b->num_classes == 2, "ct_b spacing/modality");
    TEST_EXPECT(t->role == MN_ROLE_TARGET && info->datasets[0].role == MN_ROLE_PRETRAIN, "roles");
    for (int v = 0; v < info->num_volumes; v++)
        TEST_EXPECT(info->volumes[v].foreground_share > 0.01 && info->volumes[v].foreground_share < 1, "fg share %g",
                    info->volumes[v].foreground_share);
    if (rank == 0) mn_corpus_print_summary(info, stdout);
    mn_corpus_info_destroy(&info);

    /* gzip-compressed chunks: only on one rank (parallel HDF5 1.10 cannot write filtered datasets independently);
     * ctest's h5diff step compares np1_gzip.h5 with np1.h5. */
    char gz[1100], ovz[1200];
    snprintf(gz, sizeof gz, "%s/np%d_gzip.h5", dir, size);
    snprintf(ovz, sizeof ovz, "corpus.compress=4");
    char *ovs[1] = {ovz};
    TEST_EXPECT(mn_corpus_def_load(MPI_COMM_WORLD, ini, ovs, 1, &def) == MN_OK, "load with compress");
    if (!def) return;
    TEST_EXPECT(mn_corpus_def_expand(MPI_COMM_WORLD, def) == MN_OK, "expand");
    mn_prep_options gopt = {.output = gz, .force = 1, .skip_bad = -1};
    mn_error_set_quiet(size > 1);
    mn_err e = mn_corpus_prep(MPI_COMM_WORLD, def, &gopt, &sum);
    mn_error_set_quiet(0);
    if (size == 1)
        TEST_EXPECT(e == MN_OK && sum.volumes_written == 7, "compressed prep on 1 rank: %s", mn_err_name(e));
    else
        TEST_EXPECT(mn_err_code(e) == MN_ERR_CONFIG && mn_err_is_agreed(e) && access(gz, F_OK) != 0, "compress on %d ranks must be "
                    "refused on every rank before writing: %s", size, mn_err_name(e));
    mn_corpus_def_destroy(&def);
}

static void test_shards(const char *path)
{
    mn_corpus_info *info = NULL;
    TEST_EXPECT(mn_corpus_open(MPI_COMM_WORLD, path, &info) == MN_OK, "open");
    if (!info) return;
    const int V = 6; /* pre-training volumes */
    for (int P = 1; P <= 12; P++)
        for (uint64_t seed = 0; seed < 3; seed++) {
            mn_shard_plan *p = NULL, *q = NULL;
            TEST_EXPECT(mn_shard_assign(info, P, seed, MN_ROLE_PRETRAIN, &p) == MN_OK, "assign P=%d", P);
            TEST_EXPECT(mn_shard_assign(info, P, seed, MN_ROLE_PRETRAIN, &q) == MN_OK, "assign again");
            if (!p || !q) continue;
            TEST_EXPECT(p->offset[P] == q->offset[P] &&
                            !memcmp(p->items, q->items, (size_t)p->offset[P] * sizeof *p->items),
                        "deterministic plan P=%d seed=%llu", P, (unsigned long long)seed);
            int count[7] = {0};
            for (int r = 0; r < P; r++) {
                TEST_EXPECT(p->offset[r + 1] > p->offset[r], "P=%d: rank %d holds nothing", P, r);
                for (int i = p->offset[r]; i < p->offset[r + 1]; i++) {
                    count[p->items[i].volume]++;
                    TEST_EXPECT(info->datasets[p->items[i].dataset].role == MN_ROLE_PRETRAIN, "target volume in a "
                                "pre-training shard");
                }
            }
            for (int v = 0; v < info->num_volumes; v++) {
                int pre = info->datasets[info->volumes[v].dataset].role == MN_ROLE_PRETRAIN;
                if (!pre) TEST_EXPECT(count[v] == 0, "target volume assigned");
                else if (P <= V) TEST_EXPECT(count[v] == 1, "P=%d: volume %d held %d times", P, v, count[v]);
                else TEST_EXPECT(count[v] == P / V || count[v] == (P + V - 1) / V, "P=%d: volume %d replicated %d "
                                 "times", P, v, count[v]);
            }
            /* Holders: consecutive ranks, consistent with the items. */
            for (int d = 0; d < info->num_datasets; d++) {
                for (int h = p->holders_offset[d] + 1; h < p->holders_offset[d + 1]; h++)
                    TEST_EXPECT(p->holders[h] == p->holders[h - 1] + 1, "P=%d: dataset %d on non-consecutive ranks",
                                P, d);
                for (int r = 0; r < P; r++) {
                    int listed = 0;
                    for (int h = p->holders_offset[d]; h < p->holders_offset[d + 1]; h++) listed |= p->holders[h] == r;
                    TEST_EXPECT(listed == mn_shard_plan_holds(p, r, d), "holders of %d", d);
                }
            }
            if (P == size && seed == 0 && rank == 0) mn_shard_plan_print(p, info, stdout);
            mn_shard_plan_destroy(&p);
            mn_shard_plan_destroy(&q);
        }
    printf("%s", rank == 0 ? "shards: P = 1..12 x 3 seeds: exact cover (replicated evenly for P > 6), every rank "
                             "holds a dataset, datasets on consecutive ranks, deterministic\n" : "");

    /* Load this run's shard and sample from it. */
    mn_shard_plan *plan = NULL;
    mn_shard *shard = NULL;
    TEST_EXPECT(mn_shard_assign(info, size, 0, MN_ROLE_PRETRAIN, &plan) == MN_OK, "assign");
    TEST_EXPECT(mn_shard_load(MPI_COMM_WORLD, info, plan, &shard) == MN_OK, "load shard");
    if (plan && shard) {
        int mine = plan->offset[rank + 1] - plan->offset[rank], total = 0;
        TEST_EXPECT(shard->num_volumes == mine, "rank %d loaded %d of %d", rank, shard->num_volumes, mine);
        MPI_Allreduce(&shard->num_volumes, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        TEST_EXPECT(total == (size <= V ? V : size), "loaded %d volumes in total", total);
        for (int i = 0; i < shard->num_volumes; i++)
            TEST_EXPECT(!memcmp(shard->volumes[i].shape, info->volumes[shard->volumes[i].volume].shape,
                                sizeof shard->volumes[i].shape), "shape of loaded volume");

        /* The sampler settings come from a config section; unknown keys stay unknown. */
        mn_config *cfg = NULL;
        mn_sampler_config sc;
        TEST_EXPECT(mn_config_parse("[data]\ncrop = 12\nfg_share = 0.5\nseed = 42\n", "s.ini", &cfg) == MN_OK, "parse");
        TEST_EXPECT(cfg && mn_sampler_config_read(cfg, "data", &sc) == MN_OK && sc.crop[2] == 12 && sc.fg_share == 0.5 &&
                        sc.seed == 42 && sc.flip[0] == 1 && sc.jitter_scale == 0.1, "sampler config");
        TEST_EXPECT(cfg && mn_config_check_unused(cfg) == MN_OK, "sampler keys all read");
        mn_config_destroy(&cfg);
        mn_sampler *s1 = NULL, *s2 = NULL;
        TEST_EXPECT(mn_sampler_create(shard, &sc, rank, &s1) == MN_OK, "sampler");
        TEST_EXPECT(mn_sampler_create(shard, &sc, rank, &s2) == MN_OK, "sampler 2");
        const int n = 6;
        size_t vox = 12 * 12 * 12;
        float *x1 = malloc(n * vox * sizeof *x1), *x2 = malloc(n * vox * sizeof *x2);
        int32_t *l1 = malloc(n * vox * sizeof *l1), *l2 = malloc(n * vox * sizeof *l2);
        int d1[6], d2[6];
        if (s1 && s2 && x1 && x2 && l1 && l2) {
            mn_sampler_next(s1, 3, n, x1, l1, d1);
            mn_sampler_next(s2, 7, n, x2, l2, d2); /* another step first: no state carried between calls */
            mn_sampler_next(s2, 3, n, x2, l2, d2);
            TEST_EXPECT(!memcmp(x1, x2, n * vox * sizeof *x1) && !memcmp(l1, l2, n * vox * sizeof *l1) &&
                            !memcmp(d1, d2, sizeof d1), "sampler deterministic from (seed, rank, step)");
            mn_sampler_next(s2, 4, n, x2, l2, d2);
            TEST_EXPECT(memcmp(x1, x2, n * vox * sizeof *x1) != 0, "another step draws other crops");
            for (int k = 1; k < n; k++) TEST_EXPECT(d1[k - 1] <= d1[k], "samples ordered by dataset");
            for (int k = 0; k < n; k++) TEST_EXPECT(mn_shard_plan_holds(plan, rank, d1[k]), "sample from a held dataset");
            /* All crops on foreground: each crop holds a foreground voxel. */
            mn_sampler_destroy(&s2);
            sc.fg_share = 1;
            TEST_EXPECT(mn_sampler_create(shard, &sc, rank, &s2) == MN_OK, "sampler fg");
            mn_sampler_next(s2, 0, n, x2, l2, d2);
            for (int k = 0; k < n; k++) {
                int fg = 0;
                for (size_t i = 0; i < vox; i++) fg |= l2[k * vox + i] > 0;
                TEST_EXPECT(fg, "foreground-centred crop %d has no foreground", k);
            }
        }
        mn_sampler_destroy(&s1);
        mn_sampler_destroy(&s2);
        /* Foreground crops without flips: the centre voxel is foreground, and the classes are drawn evenly (the
         * shell of the synthetic spheres has ~7x the voxels of the core, yet both are centred about as often). */
        sc.fg_share = 1, sc.flip[0] = sc.flip[1] = sc.flip[2] = 0;
        TEST_EXPECT(mn_sampler_create(shard, &sc, rank, &s1) == MN_OK, "sampler centred");
        if (s1 && x1 && l1) {
            int centre_cls[4] = {0}, m = 0;
            for (int step = 0; step < 40; step++) {
                mn_sampler_next(s1, step, n, x1, l1, d1);
                for (int k = 0; k < n; k++) {
                    int32_t c = l1[k * vox + (6 * 12 + 6) * 12 + 6];
                    TEST_EXPECT(c > 0, "centre of a foreground crop is class %d", c);
                    if (d1[k] == 0 && c > 0 && c < 4) centre_cls[c]++, m++; /* mr_a: core 1, shell 2 */
                }
            }
            if (rank == 0)
                printf("sampler: foreground crops centred on mr_a core %d, shell %d times (of %d)\n", centre_cls[1],
                       centre_cls[2], m);
            if (m > 40)
                TEST_EXPECT(centre_cls[1] > m / 4 && centre_cls[2] > m / 4, "class-balanced centres: core %d, shell "
                            "%d of %d", centre_cls[1], centre_cls[2], m);
        }
        mn_sampler_destroy(&s1);
        sc.flip[0] = sc.flip[1] = sc.flip[2] = 1;
        /* A crop larger than every volume: padded with MN_LABEL_IGNORE and zeros. */
        sc.crop[0] = sc.crop[1] = sc.crop[2] = 48;
        sc.fg_share = 0;
        TEST_EXPECT(mn_sampler_create(shard, &sc, rank, &s1) == MN_OK, "sampler big");
        size_t big = 48 * 48 * 48;
        float *xb = malloc(big * sizeof *xb);
        int32_t *lb = malloc(big * sizeof *lb);
        if (s1 && xb && lb) {
            mn_sampler_next(s1, 1, 1, xb, lb, NULL);
            size_t ign = 0, bad = 0;
            for (size_t i = 0; i < big; i++) {
                ign += lb[i] == MN_LABEL_IGNORE;
                bad += lb[i] == MN_LABEL_IGNORE && xb[i] != 0;
            }
            TEST_EXPECT(ign > 0 && ign < big && bad == 0, "padding: %zu ignore voxels, %zu non-zero", ign, bad);
        }
        free(xb), free(lb);
        mn_sampler_destroy(&s1);
        free(x1), free(x2), free(l1), free(l2);
    }
    mn_shard_destroy(&shard);
    mn_shard_plan_destroy(&plan);
    mn_corpus_info_destroy(&info);
    if (rank == 0) printf("shard load and sampler: checked on %d rank(s)\n", size);
}

/* One bad input: prep must fail with `want` on every rank, the existing corpus stays unchanged. */
static void bad_case(const char *name, const char *image, const char *label, const char *extra, mn_err want,
                     const char *existing)
{
    char text[4096], out[1100], tmp[1200];
    snprintf(out, sizeof out, "%s", existing);
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    snprintf(text, sizeof text, "[corpus]\nname = bad\nroot = %s/bad\n\n[d]\nimage = %s\nlabel = %s\n"
             "classes = background, core, shell\n%s\n", dir, image, label, extra);
    uint32_t before = rank == 0 ? file_crc(out) : 0;
    mn_prep_summary sum;
    mn_error_set_quiet(1);
    mn_err e = prep_text(text, out, 1, 0, &sum);
    mn_error_set_quiet(0);
    int all_same = 0, code = (int)mn_err_code(e), mx, mnv;
    MPI_Allreduce(&code, &mx, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(&code, &mnv, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    all_same = mx == mnv;
    TEST_EXPECT(mn_err_code(e) == want && mn_err_is_agreed(e) && all_same, "%s: got %s (agreed: %d) on rank %d, want "
                "%s agreed on every rank", name, mn_err_name(e), mn_err_is_agreed(e), rank, mn_err_name(want));
    if (rank == 0) {
        TEST_EXPECT(file_crc(out) == before && before != 0, "%s: the existing corpus was modified", name);
        TEST_EXPECT(access(tmp, F_OK) != 0, "%s: temporary file left behind", name);
        printf("bad input %-16s -> %s: %s\n", name, mn_err_name(e), mn_error_last());
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

static void test_bad_inputs(const char *good_corpus)
{
    char existing[1100];
    snprintf(existing, sizeof existing, "%s/np%d_existing.h5", dir, size);
    if (rank == 0) {
        /* An "existing corpus" that no failed prep may touch. */
        FILE *in = fopen(good_corpus, "rb"), *o = fopen(existing, "wb");
        char buf[65536];
        size_t n;
        while (in && o && (n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, o);
        if (in) fclose(in);
        if (o) fclose(o);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    bad_case("missing file", "no_such_file.nii.gz", "good_seg.nii.gz", "", MN_ERR_IO, existing);
    bad_case("wrong magic", "magic.nii", "good_seg.nii.gz", "", MN_ERR_FORMAT, existing);
    bad_case("truncated gz", "trunc.nii.gz", "good_seg.nii.gz", "", MN_ERR_FORMAT, existing);
    bad_case("4-D volume", "four_d.nii.gz", "good_seg.nii.gz", "", MN_ERR_FORMAT, existing);
    bad_case("label grid", "good.nii.gz", "mismatch_seg.nii.gz", "", MN_ERR_FORMAT, existing);
    bad_case("empty label", "good.nii.gz", "empty_seg.nii.gz", "", MN_ERR_FORMAT, existing);
    bad_case("NaN voxels", "nan.nii.gz", "good_seg.nii.gz", "", MN_ERR_NUMERIC, existing);
    bad_case("label not in map", "good.nii.gz", "code7_seg.nii.gz", "label_map = 0:0, 1:1, 2:2", MN_ERR_FORMAT,
             existing);
    bad_case("glob no match", "nothing_*.nii.gz", "good_seg.nii.gz", "", MN_ERR_IO, existing);

    /* Without --force an existing corpus is refused before anything is read. */
    char text[2048];
    snprintf(text, sizeof text, "[corpus]\nroot = %s/bad\n[d]\nimage = good.nii.gz\nlabel = good_seg.nii.gz\n"
             "classes = background, core, shell\n", dir);
    mn_prep_summary sum;
    mn_error_set_quiet(1);
    mn_err e = prep_text(text, existing, 0, 0, &sum);
    mn_error_set_quiet(0);
    TEST_EXPECT(mn_err_code(e) == MN_ERR_IO && mn_err_is_agreed(e) && (rank || strstr(mn_error_last(), "exists")),
                "no --force: %s (agreed: %d) on rank %d: %s", mn_err_name(e), mn_err_is_agreed(e), rank,
                mn_error_last());

    /* --skip-bad: the NaN pair is skipped and counted, the good pair written. */
    char skip_out[1100];
    snprintf(skip_out, sizeof skip_out, "%s/np%d_skip.h5", dir, size);
    snprintf(text, sizeof text, "[corpus]\nroot = %s/bad\n[d]\nimage = good.nii.gz, nan.nii.gz, four_d.nii.gz\n"
             "label = good_seg.nii.gz, good_seg.nii.gz, good_seg.nii.gz\nclasses = background, core, shell\n", dir);
    mn_error_set_quiet(1);
    e = prep_text(text, skip_out, 1, 1, &sum);
    mn_error_set_quiet(0);
    TEST_EXPECT(e == MN_OK && sum.volumes_written == 1 && sum.pairs_skipped == 2, "skip-bad: %s, %d written, %d "
                "skipped", mn_err_name(e), sum.volumes_written, sum.pairs_skipped);
    /* The reasons travel with the records: whichever rank processed a pair, the file names it and its problem. */
    if (rank == 0 && e == MN_OK) {
        char why[4096] = "";
        hid_t f = H5Fopen(skip_out, H5F_ACC_RDONLY, H5P_DEFAULT), g = f >= 0 ? H5Gopen2(f, "d", H5P_DEFAULT) : -1;
        hid_t a = g >= 0 ? H5Aopen(g, "skipped_pairs", H5P_DEFAULT) : -1, t = a >= 0 ? H5Aget_type(a) : -1;
        if (t >= 0 && H5Tget_size(t) < sizeof why) H5Aread(a, t, why);
        if (t >= 0) H5Tclose(t);
        if (a >= 0) H5Aclose(a);
        if (g >= 0) H5Gclose(g);
        if (f >= 0) H5Fclose(f);
        TEST_EXPECT(strstr(why, "nan.nii.gz | ") && strstr(why, "NaN/Inf") &&
                        strstr(why, "four_d.nii.gz | ") && strstr(why, "four_d.nii.gz' failed"),
                    "skipped_pairs names each file and why:\n%s", why);
        printf("skipped_pairs of the --skip-bad corpus:\n%s", why);
    }
}

/* Corrupt copies of a good corpus, made by rank 0 with serial HDF5. */
static void test_bad_corpus(const char *good)
{
    char trunc[1100], nods[1100], novol[1100], edited[1100];
    snprintf(trunc, sizeof trunc, "%s/np%d_trunc.h5", dir, size);
    snprintf(nods, sizeof nods, "%s/np%d_nods.h5", dir, size);
    snprintf(novol, sizeof novol, "%s/np%d_novol.h5", dir, size);
    snprintf(edited, sizeof edited, "%s/np%d_edited.h5", dir, size);
    if (rank == 0) {
        FILE *in = fopen(good, "rb");
        fseek(in, 0, SEEK_END);
        long len = ftell(in);
        fseek(in, 0, SEEK_SET);
        char *buf = malloc((size_t)len);
        TEST_EXPECT(fread(buf, 1, (size_t)len, in) == (size_t)len, "read corpus");
        fclose(in);
        const char *copies[4] = {trunc, nods, novol, edited};
        for (int c = 0; c < 4; c++) {
            FILE *o = fopen(copies[c], "wb");
            fwrite(buf, 1, c == 0 ? (size_t)len / 2 : (size_t)len, o);
            fclose(o);
        }
        free(buf);
        hid_t f = H5Fopen(nods, H5F_ACC_RDWR, H5P_DEFAULT);
        TEST_EXPECT(f >= 0 && H5Ldelete(f, "ct_b", H5P_DEFAULT) >= 0 && H5Fclose(f) >= 0, "remove ct_b");
        f = H5Fopen(novol, H5F_ACC_RDWR, H5P_DEFAULT);
        TEST_EXPECT(f >= 0 && H5Ldelete(f, "mr_a/vol_0001", H5P_DEFAULT) >= 0 && H5Fclose(f) >= 0, "remove volume");
        /* Change one voxel of every pre-training volume without updating its CRC. */
        f = H5Fopen(edited, H5F_ACC_RDWR, H5P_DEFAULT);
        const char *vols[] = {"mr_a/vol_0000", "mr_a/vol_0001", "mr_a/vol_0002", "ct_b/vol_0000", "ct_b/vol_0001",
                              "atlas_c/vol_0000"};
        for (int v = 0; v < 6; v++) {
            char p[64];
            snprintf(p, sizeof p, "%s/image", vols[v]);
            hid_t d = H5Dopen2(f, p, H5P_DEFAULT), s = H5Dget_space(d);
            hsize_t start[3] = {1, 1, 1}, one[3] = {1, 1, 1};
            H5Sselect_hyperslab(s, H5S_SELECT_SET, start, NULL, one, NULL);
            hid_t m = H5Screate_simple(3, one, NULL);
            float val = 12345.0f;
            TEST_EXPECT(H5Dwrite(d, H5T_NATIVE_FLOAT, m, s, H5P_DEFAULT, &val) >= 0, "edit voxel");
            H5Sclose(m), H5Sclose(s), H5Dclose(d);
        }
        H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    mn_corpus_info *info = NULL;
    mn_error_set_quiet(1);
    mn_err e = mn_corpus_open(MPI_COMM_WORLD, trunc, &info);
    TEST_EXPECT(mn_err_code(e) == MN_ERR_FORMAT && mn_err_is_agreed(e) && !info, "truncated corpus: %s", mn_err_name(e));
    if (rank == 0) printf("bad corpus truncated       -> %s: %s\n", mn_err_name(e), mn_error_last());
    e = mn_corpus_open(MPI_COMM_WORLD, nods, &info);
    TEST_EXPECT(mn_err_code(e) == MN_ERR_FORMAT && mn_err_is_agreed(e) && (rank || strstr(mn_error_last(), "ct_b")),
                "dataset removed: %s %s",
                mn_err_name(e), mn_error_last());
    if (rank == 0) printf("bad corpus dataset removed -> %s: %s\n", mn_err_name(e), mn_error_last());
    e = mn_corpus_open(MPI_COMM_WORLD, novol, &info);
    TEST_EXPECT(mn_err_code(e) == MN_ERR_FORMAT && mn_err_is_agreed(e) && (rank || strstr(mn_error_last(), "vol_0001")),
                "volume removed: %s %s",
                mn_err_name(e), mn_error_last());
    if (rank == 0) printf("bad corpus volume removed  -> %s: %s\n", mn_err_name(e), mn_error_last());
    e = mn_corpus_open(MPI_COMM_WORLD, "/nonexistent/corpus.h5", &info);
    TEST_EXPECT(mn_err_code(e) == MN_ERR_IO && mn_err_is_agreed(e), "missing corpus: %s", mn_err_name(e));
    /* Modified voxels: opening works, loading the shard fails on every rank (CRC, agreed). */
    e = mn_corpus_open(MPI_COMM_WORLD, edited, &info);
    TEST_EXPECT(e == MN_OK, "edited corpus opens");
    mn_shard_plan *plan = NULL;
    mn_shard *shard = NULL;
    if (info) {
        TEST_EXPECT(mn_shard_assign(info, size, 0, MN_ROLE_PRETRAIN, &plan) == MN_OK, "plan");
        e = mn_shard_load(MPI_COMM_WORLD, info, plan, &shard);
        TEST_EXPECT(mn_err_code(e) == MN_ERR_FORMAT && mn_err_is_agreed(e), "modified voxels: %s on rank %d",
                    mn_err_name(e), rank);
        if (rank == 0) printf("bad corpus modified voxels -> %s: %s\n", mn_err_name(e), mn_error_last());
    }
    mn_error_set_quiet(0);
    mn_shard_destroy(&shard);
    mn_shard_plan_destroy(&plan);
    mn_corpus_info_destroy(&info);
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 2) {
        fprintf(stderr, "usage: test_corpus DIR\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    dir = argv[1];
    char out[1100];
    test_prep_and_info(out, sizeof out);
    test_shards(out);
    test_bad_inputs(out);
    test_bad_corpus(out);
    int local = mn_test_failures, total = 0;
    MPI_Allreduce(&local, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (rank != 0) return total ? 1 : 0;
    mn_test_failures = total;
    return mn_test_finish("test_corpus");
}
