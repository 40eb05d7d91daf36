/* cmd_synth.c: `mednet synth CONFIG --out DIR [options]`: a synthetic corpus of many subjects from the few real
 * volumes of a corpus definition, for tests and benchmarks at the corpus sizes users pre-train on.
 *
 * Every dataset of CONFIG (its expanded image/label pairs) gets --subjects subjects: subject i of a dataset is pair
 * i mod (pairs) under its own random deformation (mednet/deform.h), drawn from (--seed, dataset index, i) alone, so
 * the files do not depend on the rank count or on which rank wrote them.  Each subject is an image (float32) and a
 * label map (uint8 when every source code fits, else float32), both on the output grid: the source image's own grid,
 * or with --spacing a grid of that voxel size over the same field of view, keeping the source header's conventions
 * (mn_nifti_write_grid).  The files are DIR/<dataset>/s<NNNNNN>_image.nii.gz and ..._label.nii.gz, and DIR/synth.ini
 * is a corpus definition listing them (one glob per dataset, paired in sorted order; every other key as in CONFIG,
 * labels now on the image grid), which `mednet prep` turns into a corpus.
 *
 * Parallel: subject t (datasets one after the other) is written by rank t mod P; each file appears atomically.
 * Argument and definition errors, the output check, and every rank's generation outcome are agreed (mn_agree), so
 * a failure ends every rank with exit status 1 and rank 0 writes synth.ini only when every subject is on disk. */
#include "commands.h"
#include "mednet/corpus.h"
#include "mednet/deform.h"
#include "mednet/fileio.h"
#include "mednet/launch.h"
#include "mednet/mem.h"
#include "mednet/mpicheck.h"
#include "mednet/nifti.h"

#include <errno.h>
#include <math.h>
#include <nifti2_io.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct synth_opts {
    const char *config, *out;
    long subjects, progress;
    unsigned long long seed;
    double spacing;
    int force, plain;
    mn_deform_params def;
} synth_opts;

static void usage(FILE *f)
{
    fprintf(f, "usage: mednet synth CONFIG --out DIR [options] [section.key=value ...]\n"
               "  --subjects N      subjects per dataset of CONFIG (default 10)\n"
               "  --seed S          random seed (default 1): the same seed gives the same files\n"
               "  --rotate DEG      rotation about each axis, uniform in [-DEG, DEG] (default 8)\n"
               "  --scale F         per-axis scale in [1-F, 1+F] (default 0.08)\n"
               "  --shear F         shear terms in [-F, F] (default 0.03)\n"
               "  --translate MM    translation per axis in [-MM, MM] (default 4)\n"
               "  --elastic MM      std of the elastic control-point displacements (default 3; 0 = none)\n"
               "  --elastic-grid N  elastic control points per axis (default 5)\n"
               "  --intensity S     std of log gain and log gamma of the image (default 0.1; 0 = none)\n"
               "  --spacing MM      output voxel size (default: each source image's own grid)\n"
               "  --uncompressed    write .nii instead of .nii.gz\n"
               "  --progress K      a progress line every K subjects (default 50)\n"
               "  --force           replace the files of an earlier run in DIR\n");
}

static mn_err parse_args(int argc, char **argv, synth_opts *o, char **overrides, int *nover, int *help)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int has = i + 1 < argc;
        double v = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            *help = 1;
        } else if (!strcmp(a, "--force")) {
            o->force = 1;
        } else if (!strcmp(a, "--uncompressed")) {
            o->plain = 1;
        } else if (!strcmp(a, "--out") && has) {
            o->out = argv[++i];
        } else if (!strcmp(a, "--subjects") && has) {
            MN_CALL(mn_cli_number("synth", a, argv[++i], 1, 1e6, &v));
            MN_CHECK(v == floor(v), MN_ERR_ARG, "synth: --subjects needs a whole number, got '%s'", argv[i]);
            o->subjects = (long)v;
        } else if (!strcmp(a, "--progress") && has) {
            MN_CALL(mn_cli_number("synth", a, argv[++i], 1, 1e9, &v));
            o->progress = (long)v;
        } else if (!strcmp(a, "--seed") && has) {
            const char *sv = argv[++i];
            char *end = NULL;
            errno = 0;
            o->seed = strtoull(sv, &end, 10);
            MN_CHECK(*sv >= '0' && *sv <= '9' && end != sv && !*end && !errno, MN_ERR_ARG,
                     "synth: --seed needs a whole number >= 0, got '%s'", sv);
        } else if (!strcmp(a, "--rotate") && has) {
            MN_CALL(mn_cli_number("synth", a, argv[++i], 0, 180, &o->def.rotate_deg));
        } else if (!strcmp(a, "--scale") && has) {
            MN_CALL(mn_cli_number("synth", a, argv[++i], 0, 0.9, &o->def.scale));
        } else if (!strcmp(a, "--shear") && has) {
            MN_CALL(mn_cli_number("synth", a, argv[++i], 0, 1, &o->def.shear));
        } else if (!strcmp(a, "--translate") && has) {
            MN_CALL(mn_cli_number("synth", a, argv[++i], 0, 1e4, &o->def.translate_mm));
        } else if (!strcmp(a, "--elastic") && has) {
            MN_CALL(mn_cli_number("synth", a, argv[++i], 0, 1e3, &o->def.elastic_mm));
        } else if (!strcmp(a, "--elastic-grid") && has) {
            MN_CALL(mn_cli_number("synth", a, argv[++i], 2, 64, &v));
            o->def.elastic_grid = (int)v;
        } else if (!strcmp(a, "--intensity") && has) {
            MN_CALL(mn_cli_number("synth", a, argv[++i], 0, 2, &o->def.intensity));
        } else if (!strcmp(a, "--spacing") && has) {
            MN_CALL(mn_cli_number("synth", a, argv[++i], 0.01, 1e3, &o->spacing));
        } else if (a[0] == '-') {
            MN_CHECK(0, MN_ERR_ARG, "synth: unknown option '%s' (or its value is missing)", a);
        } else if (strchr(a, '=')) {
            overrides[(*nover)++] = argv[i];
        } else {
            MN_CHECK(!o->config, MN_ERR_ARG, "synth: unexpected argument '%s'", a);
            o->config = a;
        }
    }
    if (*help) return MN_OK;
    MN_CHECK(o->config, MN_ERR_ARG, "synth: missing CONFIG (a corpus definition)");
    MN_CHECK(o->out && *o->out, MN_ERR_ARG, "synth: missing --out DIR");
    MN_CHECK(strlen(o->out) < 900, MN_ERR_ARG, "synth: --out path too long");
    return MN_OK;
}

static mn_err make_dir(const char *path)
{
    MN_CHECK(mkdir(path, 0755) == 0 || errno == EEXIST, MN_ERR_IO, "synth: cannot create directory '%s': %s", path,
             strerror(errno));
    struct stat st;
    MN_CHECK(stat(path, &st) == 0 && S_ISDIR(st.st_mode), MN_ERR_IO, "synth: '%s' exists and is not a directory",
             path);
    return MN_OK;
}

/* Rank 0: the output folder and one folder per dataset; an earlier run's synth.ini needs --force. */
static mn_err prepare_out(const synth_opts *o, const mn_corpus_def *def)
{
    char p[1200];
    MN_CALL(make_dir(o->out));
    snprintf(p, sizeof p, "%s/synth.ini", o->out);
    MN_CHECK(o->force || !mn_path_exists(p), MN_ERR_IO, "synth: '%s' exists (an earlier synthetic corpus); use "
             "--force to replace it or choose another --out", p);
    for (int d = 0; d < def->num_datasets; d++) {
        snprintf(p, sizeof p, "%s/%s", o->out, def->datasets[d].name);
        MN_CALL(make_dir(p));
    }
    return MN_OK;
}

/* The source volumes of the pair in use, kept while consecutive subjects share them. */
typedef struct source {
    char image_path[1100], label_path[1100];
    mn_volume image, label;
    int label_u8;   /* every label code is a whole number in 0..255 */
} source;

static mn_err load_source(source *s, const char *image, const char *label)
{
    if (strcmp(s->image_path, image)) {
        mn_volume_free(&s->image);
        s->image_path[0] = 0;
        MN_CALL(mn_nifti_read(image, &s->image, NULL));
        snprintf(s->image_path, sizeof s->image_path, "%s", image);
    }
    if (strcmp(s->label_path, label)) {
        mn_volume_free(&s->label);
        s->label_path[0] = 0;
        MN_CALL(mn_nifti_read(label, &s->label, NULL));
        s->label_u8 = 1;
        for (int64_t n = 0; n < mn_volume_voxels(&s->label); n++) {
            float v = s->label.data[n];
            MN_CHECK(isfinite(v), MN_ERR_FORMAT, "synth: label '%s' holds a non-finite value", label);
            if (!(v >= 0 && v <= 255 && v == floorf(v))) s->label_u8 = 0;
        }
        snprintf(s->label_path, sizeof s->label_path, "%s", label);
    }
    return MN_OK;
}

/* One subject: deformation drawn from (seed, dataset, index), applied, both files written. */
static mn_err make_subject(const synth_opts *o, const mn_corpus_def *def, int d, long i, source *s, float **img,
                           float **lab, uint8_t **lab8, int64_t *cap)
{
    const mn_dataset_def *ds = &def->datasets[d];
    const int pair = (int)(i % ds->num_pairs);
    MN_CALL(load_source(s, ds->images[pair], ds->labels[pair]));
    int64_t dim[3];
    double aff[4][4];
    mn_deform_grid(s->image.dim, s->image.affine, o->spacing, dim, aff);
    const int64_t n = dim[0] * dim[1] * dim[2];
    if (n > *cap) {
        mn_free(img), mn_free(lab), mn_free(lab8);
        *cap = 0;
        MN_CALL(mn_malloc(sizeof(float) * (size_t)n, "synthetic image", (void **)img));
        MN_CALL(mn_malloc(sizeof(float) * (size_t)n, "synthetic label", (void **)lab));
        MN_CALL(mn_malloc((size_t)n, "synthetic label (uint8)", (void **)lab8));
        *cap = n;
    }
    mn_deform dfm;
    MN_CALL(mn_deform_draw(&o->def, o->seed, ((uint64_t)d << 32) | (uint64_t)i, &dfm));
    mn_deform_src si = {s->image.data, {s->image.dim[0], s->image.dim[1], s->image.dim[2]}, {{0}}};
    mn_deform_src sl = {s->label.data, {s->label.dim[0], s->label.dim[1], s->label.dim[2]}, {{0}}};
    memcpy(si.affine, s->image.affine, sizeof si.affine);
    memcpy(sl.affine, s->label.affine, sizeof sl.affine);
    mn_err e = mn_deform_apply(&dfm, dim, aff, &si, *img, &sl, *lab);
    mn_deform_free(&dfm);
    MN_CALL(e);
    const char *ext = o->plain ? "nii" : "nii.gz";
    char path[1300];
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t k = 0; k < n; k++) lo = fminf(lo, (*img)[k]), hi = fmaxf(hi, (*img)[k]);
    snprintf(path, sizeof path, "%s/%s/s%06ld_image.%s", o->out, ds->name, i, ext);
    MN_CALL(mn_nifti_write_grid(s->image_path, path, o->spacing > 0 ? dim : NULL, o->spacing > 0 ? aff : NULL,
                                DT_FLOAT32, 1, *img, 0, lo, hi));
    snprintf(path, sizeof path, "%s/%s/s%06ld_label.%s", o->out, ds->name, i, ext);
    float lmax = 0;
    for (int64_t k = 0; k < n; k++) lmax = fmaxf(lmax, (*lab)[k]);
    const void *ldata = *lab;
    int ltype = DT_FLOAT32;
    if (s->label_u8) {
        for (int64_t k = 0; k < n; k++) (*lab8)[k] = (uint8_t)(*lab)[k];
        ldata = *lab8, ltype = DT_UINT8;
    }
    MN_CALL(mn_nifti_write_grid(s->image_path, path, o->spacing > 0 ? dim : NULL, o->spacing > 0 ? aff : NULL,
                                ltype, 1, ldata, NIFTI_INTENT_LABEL, 0, lmax));
    return MN_OK;
}

/* This rank's share: subjects t = rank, rank + P, ... of the datasets in order.  Stops at the first error. */
static mn_err generate(const synth_opts *o, const mn_corpus_def *def, int rank, int size, long *made)
{
    source s;
    memset(&s, 0, sizeof s);
    float *img = NULL, *lab = NULL;
    uint8_t *lab8 = NULL;
    int64_t cap = 0;
    const long total = o->subjects * def->num_datasets;
    double t0 = MPI_Wtime();
    mn_err e = MN_OK;
    *made = 0;
    for (long t = rank; t < total && !e; t += size) {
        e = make_subject(o, def, (int)(t / o->subjects), t % o->subjects, &s, &img, &lab, &lab8, &cap);
        if (!e) ++*made;
        /* Rank 0 speaks for all: the others advance at the same rate (one subject each per round). */
        if (!e && rank == 0 && (*made % o->progress == 0)) {
            double dt = MPI_Wtime() - t0;
            long done = *made * size < total ? *made * size : total;
            mn_log_info("synth: about %ld of %ld subjects (%.1f s, %.2f subjects/s, ETA %.0f s)", done, total, dt,
                        done / (dt > 0 ? dt : 1), (total - done) * dt / (done > 0 ? done : 1));
        }
    }
    mn_free(&img), mn_free(&lab), mn_free(&lab8);
    mn_volume_free(&s.image), mn_volume_free(&s.label);
    return e;
}

static const char *norm_name(mn_norm n)
{
    return n == MN_NORM_CT ? "ct" : n == MN_NORM_WINDOW ? "window" : n == MN_NORM_NONE ? "none" : "zscore";
}

/* Rank 0: DIR/synth.ini, the definition of the synthetic corpus (atomically). */
static mn_err write_ini(const synth_opts *o, const mn_corpus_def *def)
{
    /* root: the absolute output folder, so that the definition works from any working directory. */
    char root[4096], cwd[3000];
    if (o->out[0] == '/') {
        snprintf(root, sizeof root, "%s", o->out);
    } else {
        MN_CHECK(getcwd(cwd, sizeof cwd), MN_ERR_IO, "synth: cannot read the working directory: %s", strerror(errno));
        snprintf(root, sizeof root, "%s/%s", cwd, o->out);
    }
    size_t cap = 65536 + (size_t)def->num_datasets * 8192, len = 0;
    char *t = NULL;
    MN_CALL(mn_malloc(cap, "synth.ini text", (void **)&t));
#define OUT(...) (len += (size_t)snprintf(t + len, len < cap ? cap - len : 0, __VA_ARGS__))
    OUT("; synth.ini: written by `mednet synth` from %s: %ld subject(s) per dataset, seed %llu\n"
        "; rotate %g deg, scale %g, shear %g, translate %g mm, elastic %g mm on a %d^3 grid, intensity %g, %s\n"
        ";   mednet prep %s/synth.ini\n\n[corpus]\nname = %s_synth\noutput = %s/corpus.h5\nroot = %s\n",
        o->config, o->subjects, o->seed, o->def.rotate_deg, o->def.scale, o->def.shear, o->def.translate_mm,
        o->def.elastic_mm, o->def.elastic_grid, o->def.intensity, o->spacing > 0 ? "resampled" : "source grids",
        root, def->name, root, root);
    if (def->has_spacing) OUT("spacing = %.17g, %.17g, %.17g\n", def->spacing[0], def->spacing[1], def->spacing[2]);
    OUT("chunk = %d\ncompress = %d\nskip_bad = %s\naffine_tolerance = %.17g\n", def->chunk, def->compress,
        def->skip_bad ? "true" : "false", def->affine_tolerance);
    if (def->mpiio_hints[0]) OUT("mpiio_hints = %s\n", def->mpiio_hints);
    const char *ext = o->plain ? "nii" : "nii.gz";
    for (int d = 0; d < def->num_datasets; d++) {
        const mn_dataset_def *ds = &def->datasets[d];
        OUT("\n[%s]\nimage = %s/*_image.%s\nlabel = %s/*_label.%s\nmodality = %s\nrole = %s\nclasses = ", ds->name,
            ds->name, ext, ds->name, ext, ds->modality == MN_MOD_CT ? "CT" : ds->modality == MN_MOD_MR ? "MR" : "other",
            ds->role == MN_ROLE_TARGET ? "target" : "pretrain");
        for (int c = 0; c < ds->num_classes; c++) OUT("%s%s", c ? ", " : "", ds->class_names[c]);
        OUT("\n");
        if (ds->label_map_text[0]) OUT("label_map = %s\n", ds->label_map_text);
        if (ds->has_spacing) OUT("spacing = %.17g, %.17g, %.17g\n", ds->spacing[0], ds->spacing[1], ds->spacing[2]);
        OUT("normalisation = %s\n", norm_name(ds->normalisation));
        if (ds->normalisation == MN_NORM_WINDOW) OUT("window = %.17g, %.17g\n", ds->window[0], ds->window[1]);
        OUT("crop = %s\nantialias = %s\n", ds->crop ? "true" : "false", ds->antialias ? "true" : "false");
    }
#undef OUT
    mn_err e = len < cap ? MN_OK : mn_error_report(MN_ERR_INTERNAL, __FILE__, __LINE__, __func__, "synth.ini too long");
    char path[1200];
    snprintf(path, sizeof path, "%s/synth.ini", o->out);
    if (!e) e = mn_write_file_atomic(path, t, len);
    mn_free(&t);
    MN_CALL(e);
    return MN_OK;
}

mn_err mn_cmd_synth(int argc, char **argv, mn_cmd_result *res)
{
    (void)res; /* every error below carries its agreement (mn_agree) */
    int rank = 0, size = 1, help = 0, nover = 0;
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    MN_CALL(mn_agree(MPI_COMM_WORLD, mn_launch_check(MPI_COMM_WORLD, NULL)));
    synth_opts o = {.subjects = 10, .progress = 50, .seed = 1,
                    .def = {.rotate_deg = 8, .scale = 0.08, .shear = 0.03, .translate_mm = 4, .elastic_mm = 3,
                            .elastic_grid = 5, .intensity = 0.1}};
    char **overrides = calloc((size_t)argc + 1, sizeof *overrides);
    mn_err e = overrides ? MN_OK : mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    /* The arguments are the same on every rank: rank 0 reports, the agreement stops everyone. */
    if (!e) {
        if (rank) mn_error_set_quiet(1);
        e = parse_args(argc, argv, &o, overrides, &nover, &help);
        if (rank) mn_error_set_quiet(0);
    }
    e = mn_agree(MPI_COMM_WORLD, e);
    if (e || help) {
        free(overrides);
        if (rank == 0) usage(e ? stderr : stdout);
        return e;
    }
    /* The definition and its file lists: collective, the same on every rank. */
    mn_corpus_def *def = NULL;
    e = mn_corpus_def_load(MPI_COMM_WORLD, o.config, overrides, nover, &def);
    free(overrides);
    if (!e) e = mn_corpus_def_expand(MPI_COMM_WORLD, def);
    e = mn_agree(MPI_COMM_WORLD, e);
    if (!e) e = mn_agree(MPI_COMM_WORLD, rank == 0 ? prepare_out(&o, def) : MN_OK);
    if (e) {
        mn_corpus_def_destroy(&def);
        MN_CHECK(!e, e, "synth: called from the definition and output checks");
    }
    const long total = o.subjects * def->num_datasets;
    mn_log_info("synth: %ld subject(s) from %d dataset(s) of %s on %d rank(s), seed %llu, into %s", total,
                def->num_datasets, o.config, size, o.seed, o.out);
    double t0 = MPI_Wtime();
    long made = 0;
    e = mn_agree(MPI_COMM_WORLD, generate(&o, def, rank, size, &made));
    if (!e) e = mn_agree(MPI_COMM_WORLD, rank == 0 ? write_ini(&o, def) : MN_OK);
    mn_corpus_def_destroy(&def);
    MN_CHECK(!e, e, "synth: called from the generation");
    double dt = MPI_Wtime() - t0;
    mn_log_info("synth: %ld subject(s) written in %.2f s (%.2f subjects/s); corpus definition %s/synth.ini "
                "(next: mednet prep %s/synth.ini)", total, dt, total / (dt > 0 ? dt : 1), o.out, o.out);
    return MN_OK;
}
