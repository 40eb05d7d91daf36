/* infer.c: `mednet infer` (mednet/infer.h): a checkpoint's model applied to NIfTI volumes, data-parallel over
 * ranks (each rank its own volumes).
 *
 * The model comes from the one path that rebuilds models (mn_model_file_load, mn_ckpt_model_bcast in
 * src/train/ckpt_model.c, also behind `mednet export`): from a training checkpoint alone (its config attribute gives
 * the architecture and the training crop, the default window; its preprocessing attribute, mednet/corpus.h, what
 * prep did to the dataset's volumes; the head's arrays its class count), or from a safetensors file whose
 * __metadata__ (written by `mednet export`) says the same, or, for a file without it, from --config RUN.ini and
 * --corpus CORPUS.h5 --head DATASET.  A checkpoint written before the preprocessing record existed is read together
 * with its corpus (the recorded corpus_path or --corpus; its checksum must be the checkpoint's), or refused with
 * that hint.  Rank 0 reads and broadcasts, so P ranks cost one reader.
 *
 * Per volume: read (libnifti), refuse non-finite voxels, the image half of prep (mn_preprocess_image: the canonical
 * grid at the dataset's spacing, anti-aliasing, the foreground mask) and the dataset's normalisation, the sliding
 * window over the canonical grid (window.c) with the model as predictor (batch norm in eval mode; logits up-sampled
 * to the window when the head predicts at 1/4 size, softmax, optionally averaged over the 8 flips), then every class
 * probability resampled trilinearly onto the input's own grid through the two affines (outside the canonical grid:
 * background), argmax, and the outputs written on the input's header.  Rejected: cropping to the foreground box as
 * prep does (the crop box also depends on the label, which inference does not have; outside the image's mask the
 * normalised volume is 0 anyway, as in training crops).
 */
#include "mednet/infer.h"

#include "mednet/ckpt.h"
#include "mednet/config.h"
#include "mednet/corpus.h"
#include "mednet/dist.h"
#include "mednet/fileio.h"
#include "mednet/layers.h"
#include "mednet/mem.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"
#include "mednet/nifti.h"
#include "mednet/preprocess.h"
#include "mednet/sampler.h"
#include "mednet/threads.h"
#include "mednet/train.h"

#include <errno.h>
#include <math.h>
#include <nifti2_io.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The model and everything the predictor needs. */
typedef struct infer_model {
    mn_ckpt_model cm;         /* the model with its one head, its description and preprocessing record */
    mn_prep_record prep;      /* of the applied head's dataset */
    mn_model *model;          /* cm.model */
    int window[3], batch, classes, tta;
    float *xin, *up;          /* model input (batch, 1, window); up-sampled logits (batch, classes, window) */
} infer_model;

static void infer_model_destroy(infer_model *im)
{
    mn_ckpt_model_free(&im->cm);
    im->model = NULL;
    mn_free(&im->xin);
    mn_free(&im->up);
}

/* ---- the model and its preprocessing (rank 0) ---------------------------------------------------------------- */

static int is_safetensors(const char *path)
{
    size_t n = strlen(path), k = strlen(".safetensors");
    return n > k && !strcmp(path + n - k, ".safetensors");
}

/* The preprocessing record of dataset `head` from corpus `corpus`, appended to *prep_text (rank 0, serial open).
 * want: the checksum the model was trained on, or -1 when the source does not record one. */
static mn_err record_from_corpus(const char *src, const char *corpus, const char *head, long long want,
                                 char **prep_text)
{
    MN_CHECK(mn_path_exists(corpus), MN_ERR_CONFIG, "'%s' has no preprocessing record and its corpus '%s' cannot be "
             "read\n---> HINT: pass --corpus CORPUS, the corpus it was trained on", src, corpus);
    mn_corpus_info *info = NULL;
    MN_CALL(mn_corpus_open(MPI_COMM_SELF, corpus, &info));
    mn_err e = MN_OK;
    if (want >= 0 && info->checksum != (uint32_t)want)
        e = mn_error_report(MN_ERR_CONFIG, __FILE__, __LINE__, __func__, "checkpoint '%s' was trained on corpus %08x, "
                            "but '%s' is corpus %08x: its preprocessing would not be the model's", src,
                            (unsigned)want, corpus, (unsigned)info->checksum);
    int d = -1;
    for (int i = 0; !e && i < info->num_datasets; i++)
        if (!strcmp(info->datasets[i].name, head)) d = i;
    if (!e && d < 0)
        e = mn_error_report(MN_ERR_CONFIG, __FILE__, __LINE__, __func__, "corpus '%s' has no dataset '%s' (the head "
                            "of '%s')", corpus, head, src);
    if (!e) {
        mn_prep_record rec;
        mn_prep_record_of(info, d, &rec);
        e = mn_prep_record_append(&rec, prep_text);
    }
    if (!e) mn_log_info("infer: preprocessing of '%s' taken from corpus %s", head, corpus);
    mn_corpus_info_destroy(&info);
    MN_CHECK(!e, e, "called from reading the preprocessing record from corpus '%s'", corpus);
    return MN_OK;
}

/* Rank 0: the model (parameters only) with the one head to apply, and its preprocessing record.  Local work. */
static mn_err load_source(const mn_infer_options *o, mn_ckpt_model *cm)
{
    const char *src = o->checkpoint;
    const int st = is_safetensors(src);
    mn_model_file_hint hint = {NULL, o->config, o->head, NULL};
    char *cfg_text = NULL, *prep = NULL;
    mn_err e = MN_OK;
    if (!st && o->config)
        e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "--config %s: a checkpoint records its own "
                            "configuration; --config is for safetensors files", o->config);
    if (!e && st && o->config) e = mn_config_read_text(o->config, &cfg_text, NULL);
    if (!e && st && o->corpus) {
        if (!o->head)
            e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "--corpus %s with safetensors file '%s': "
                                "name the dataset with --head DATASET", o->corpus, src);
        if (!e) e = record_from_corpus(src, o->corpus, o->head, -1, &prep);
    }
    hint.config_text = cfg_text, hint.prep_text = prep;
    if (!e) e = mn_model_file_load(src, (mn_shape){0, 1, 0, 0, 0}, &hint, cm);
    free(cfg_text);
    free(prep);
    MN_CHECK(!e, e, "called from reading %s", src);
    char list[1024] = "";
    for (int h = 0; h < cm->nheads; h++) {
        if (h) strncat(list, ", ", sizeof list - strlen(list) - 1);
        strncat(list, cm->head_names[h], sizeof list - strlen(list) - 1);
    }
    MN_CHECK(cm->nheads > 0, MN_ERR_FORMAT, "'%s' holds no head (an encoder alone): nothing to apply", src);
    MN_CHECK(cm->nheads == 1, MN_ERR_ARG, "checkpoint '%s' has %d heads (%s): choose one with --head NAME", src,
             cm->nheads, list);
    const char *head = cm->head_names[0];
    if (!cm->prep_text && st)
        MN_FAIL(MN_ERR_ARG, "safetensors file '%s' records no preprocessing (spacing, normalisation) for its head "
                "'%s'\n---> HINT: give --corpus CORPUS.h5 --head DATASET, the corpus it was trained on", src, head);
    if (!cm->prep_text) {
        /* A checkpoint written before the preprocessing record existed: its corpus, checked by checksum. */
        mn_ckpt *ck = NULL;
        char *sum = NULL, *recorded = NULL;
        MN_CALL(mn_ckpt_open(src, &ck));
        e = mn_ckpt_attr_get(ck, "corpus_checksum", &sum);
        if (!e && !o->corpus) e = mn_ckpt_attr_get(ck, "corpus_path", &recorded);
        mn_ckpt_close(&ck);
        if (!e) e = record_from_corpus(src, o->corpus ? o->corpus : recorded, head, (long long)strtoul(sum, NULL, 16),
                                       &cm->prep_text);
        mn_free(&sum);
        mn_free(&recorded);
        MN_CHECK(!e, e, "called from reading the corpus of %s", src);
    }
    /* The record must describe the head. */
    mn_config *pc = NULL;
    mn_prep_record rec;
    MN_CALL(mn_config_parse(cm->prep_text, src, &pc));
    e = mn_prep_record_read(pc, head, &rec);
    mn_config_destroy(&pc);
    MN_CHECK(!e, e, "'%s': no usable preprocessing record of its head '%s'", src, head);
    MN_CHECK(rec.num_classes == cm->heads[0].classes, MN_ERR_FORMAT, "'%s': its head '%s' predicts %d classes, its "
             "preprocessing record lists %d", src, head, cm->heads[0].classes, rec.num_classes);
    return MN_OK;
}

/* Rank 0: the window (--window, else the training crop).  Local work. */
static mn_err window_of(const mn_infer_options *o, const mn_ckpt_model *cm, int window[3])
{
    mn_config *cfg = NULL;
    MN_CALL(mn_config_parse(cm->config_text, o->checkpoint, &cfg));
    mn_sampler_config sc;
    const int known = mn_config_has(cfg, "sampler", "crop") || !is_safetensors(o->checkpoint);
    mn_err e = mn_sampler_config_read(cfg, "sampler", &sc);
    mn_config_destroy(&cfg);
    MN_CHECK(!e, e, "called from reading the crop of %s", o->checkpoint);
    MN_CHECK(known || o->window[0] > 0, MN_ERR_ARG, "'%s' does not record its training crop\n---> HINT: give "
             "--window N (or --config RUN.ini with [sampler] crop)", o->checkpoint);
    for (int a = 0; a < 3; a++) window[a] = o->window[a] > 0 ? o->window[a] : sc.crop[a];
    return MN_OK;
}

/* Every rank: the predictor's fields once the model is there.  Local work. */
static mn_err build_model(const mn_infer_options *o, infer_model *im)
{
    mn_config *pc = NULL;
    MN_CALL(mn_config_parse(im->cm.prep_text, o->checkpoint, &pc));
    mn_err e = mn_prep_record_read(pc, im->cm.head_names[0], &im->prep);
    mn_config_destroy(&pc);
    MN_CHECK(!e, e, "called from reading the preprocessing record of %s", o->checkpoint);
    im->model = im->cm.model;
    im->batch = o->batch > 0 ? o->batch : 1;
    im->classes = im->cm.heads[0].classes;
    im->tta = o->tta;
    mn_model_set_training(im->model, 0);
    size_t wv = (size_t)im->window[0] * im->window[1] * im->window[2];
    MN_CALL(mn_malloc(sizeof(float) * wv * (size_t)im->batch, "inference input", (void **)&im->xin));
    MN_CALL(mn_malloc(sizeof(float) * wv * (size_t)im->batch * (size_t)im->classes, "inference logits",
                      (void **)&im->up));
    return MN_OK;
}

/* ---- the predictor ------------------------------------------------------------------------------------------- */

/* Index of voxel o of a window after flipping the axes in the bits of f (1: D, 2: H, 4: W); an involution. */
static size_t flip_index(size_t o, const int w[3], int f)
{
    size_t x = o % (size_t)w[2], y = o / (size_t)w[2] % (size_t)w[1], z = o / ((size_t)w[2] * (size_t)w[1]);
    if (f & 1) z = (size_t)w[0] - 1 - z;
    if (f & 2) y = (size_t)w[1] - 1 - y;
    if (f & 4) x = (size_t)w[2] - 1 - x;
    return x + (size_t)w[2] * (y + (size_t)w[1] * z);
}

static mn_err predict(void *ctx, int n, const float *x, float *prob)
{
    infer_model *im = ctx;
    const size_t wv = (size_t)im->window[0] * im->window[1] * im->window[2];
    const int C = im->classes, nflip = im->tta ? 8 : 1;
    memset(prob, 0, sizeof(float) * (size_t)n * C * wv);
    for (int f = 0; f < nflip; f++) {
        for (int s = 0; s < im->batch; s++)
            for (size_t o = 0; o < wv; o++)
                im->xin[s * wv + o] = s < n ? x[s * wv + flip_index(o, im->window, f)] : 0;
        mn_head_batch hb = {0, 0, im->batch};
        MN_CALL(mn_model_forward(im->model, im->xin, &hb, 1));
        mn_shape ls;
        const float *lg = mn_model_logits(im->model, 0, &ls);
        if (ls.d != im->window[0] || ls.h != im->window[1] || ls.w != im->window[2]) {
            mn_shape full = {ls.n, ls.c, im->window[0], im->window[1], im->window[2]};
            MN_CALL(mn_upsample3d_forward(&ls, lg, &full, im->up));
            lg = im->up;
        }
        /* Softmax over the classes at every voxel, flipped back, averaged over the flips. */
        for (int s = 0; s < n; s++)
            for (size_t o = 0; o < wv; o++) {
                const float *l = lg + (size_t)s * C * wv + o;
                float mx = l[0];
                for (int c = 1; c < C; c++) mx = l[c * wv] > mx ? l[c * wv] : mx;
                double sum = 0;
                for (int c = 0; c < C; c++) sum += exp((double)(l[c * wv] - mx));
                size_t t = flip_index(o, im->window, f);
                for (int c = 0; c < C; c++)
                    prob[((size_t)s * C + c) * wv + t] += (float)(exp((double)(l[c * wv] - mx)) / sum / nflip);
            }
    }
    return MN_OK;
}

/* ---- one volume ---------------------------------------------------------------------------------------------- */

/* The outputs of input `in`: <out_dir>/<stem>_seg.nii.gz and <stem>_prob.nii.gz. */
static void output_paths(const char *out_dir, const char *in, char *seg, char *prob, size_t len)
{
    const char *base = strrchr(in, '/');
    base = base ? base + 1 : in;
    size_t n = strlen(base);
    if (n > 7 && !strcmp(base + n - 7, ".nii.gz"))
        n -= 7;
    else if (n > 4 && !strcmp(base + n - 4, ".nii"))
        n -= 4;
    snprintf(seg, len, "%s/%.*s_seg.nii.gz", out_dir, (int)n, base);
    snprintf(prob, len, "%s/%.*s_prob.nii.gz", out_dir, (int)n, base);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static mn_err infer_one(infer_model *im, const mn_infer_options *o, int rank, const char *in)
{
    char seg_path[4200], prob_path[4200];
    output_paths(o->out_dir, in, seg_path, prob_path, sizeof seg_path);
    double t0 = now();
    mn_volume v = {0};
    MN_CALL(mn_nifti_read(in, &v, NULL));
    int64_t first = -1, nin = mn_volume_voxels(&v);
    float vmin = 0;
    int64_t nbad = mn_volume_nonfinite(&v, &first, &vmin);
    if (nbad) {
        mn_volume_free(&v);
        MN_FAIL(MN_ERR_NUMERIC, "'%s' has %lld NaN/Inf voxel(s) (first at voxel %lld of %lld): mednet infer needs "
                "finite intensities", in, (long long)nbad, (long long)first, (long long)nin);
    }
    const mn_prep_record *p = &im->prep;
    const int C = im->classes;
    mn_grid g;
    float *img = NULL, *mask = NULL, *prob = NULL, *back = NULL;
    uint8_t *labels = NULL;
    double sig[3];
    mn_err e = mn_preprocess_image(&v, in, p->spacing, p->normalisation == MN_NORM_ZSCORE, p->antialias, vmin, &g,
                                   &img, &mask, sig);
    const int64_t ng = e ? 0 : g.n[0] * g.n[1] * g.n[2];
    if (!e && p->normalisation == MN_NORM_ZSCORE) {
        double mean, std;
        int64_t cnt;
        mn_masked_stats(img, mask, ng, 0, 0, &mean, &std, &cnt);
        mn_normalise(img, mask, ng, MN_NORM_ZSCORE, 0, 0, mean, std);
    } else if (!e) {
        mn_normalise(img, NULL, ng, p->normalisation, p->norm_clip[0], p->norm_clip[1], p->norm_mean, p->norm_std);
    }
    /* The sliding window over the canonical grid (D, H, W = z, y, x). */
    int64_t nwin = 0;
    const int64_t dims[3] = {g.n[2], g.n[1], g.n[0]};
    mn_window_config wc = {{im->window[0], im->window[1], im->window[2]}, o->overlap, o->blend, im->batch, C};
    if (!e) e = mn_malloc(sizeof(float) * (size_t)ng * C, "canonical probabilities", (void **)&prob);
    if (!e) e = mn_sliding_window(&wc, img, dims, predict, im, prob, &nwin);
    double t1 = now();
    /* Back onto the input's grid, class by class; outside the canonical grid is background. */
    if (!e) e = mn_malloc(sizeof(float) * (size_t)nin * C, "probabilities on the input grid", (void **)&back);
    if (!e) e = mn_malloc((size_t)nin, "label map", (void **)&labels);
    mn_volume src = {{g.n[0], g.n[1], g.n[2]}, {{0}}, NULL};
    mn_grid_affine(&g, src.affine);
    for (int c = 0; c < C && !e; c++) {
        src.data = prob + (size_t)c * ng;
        e = mn_resample_affine(&src, v.dim, v.affine, 1, c == 0 ? 1.0f : 0.0f, back + (size_t)c * nin);
    }
    if (!e)
        for (int64_t i = 0; i < nin; i++) {
            int best = 0;
            for (int c = 1; c < C; c++)
                if (back[(size_t)c * nin + i] > back[(size_t)best * nin + i]) best = c;
            labels[i] = (uint8_t)best;
        }
    /* Probabilities first: if the label map then fails, the probabilities are removed again. */
    if (!e && o->probs) e = mn_nifti_write_like(in, prob_path, DT_FLOAT32, C, back, 0, 0, 1);
    if (!e) {
        e = mn_nifti_write_like(in, seg_path, DT_UINT8, 1, labels, NIFTI_INTENT_LABEL, 0, C - 1);
        if (e && o->probs) unlink(prob_path);
    }
    if (!e)
        printf("[rank %d] infer: %s -> %s (%lldx%lldx%lld; canonical %lldx%lldx%lld at %g x %g x %g mm; %lld "
               "window(s) of %dx%dx%d%s; model %.2f s, total %.2f s)\n", rank, in, seg_path, (long long)v.dim[0],
               (long long)v.dim[1], (long long)v.dim[2], (long long)g.n[0], (long long)g.n[1], (long long)g.n[2],
               p->spacing[0], p->spacing[1], p->spacing[2], (long long)nwin, im->window[0], im->window[1],
               im->window[2], im->tta ? ", 8 flips" : "", t1 - t0, now() - t0);
    fflush(stdout);
    mn_volume_free(&v);
    free(img);
    free(mask);
    mn_free(&prob);
    mn_free(&back);
    mn_free(&labels);
    MN_CHECK(!e, e, "inference on '%s' failed; no output written for it", in);
    return MN_OK;
}

/* Before any work: this rank's inputs readable as NIfTI headers, outputs absent (or force).  Local work. */
static mn_err check_inputs(const mn_infer_options *o, int rank, int size)
{
    for (int i = rank; i < o->ninputs; i += size) {
        mn_volume h;
        MN_CALL(mn_nifti_read_header(o->inputs[i], &h, NULL));
        char seg[4200], prob[4200];
        output_paths(o->out_dir, o->inputs[i], seg, prob, sizeof seg);
        MN_CHECK(o->force || !mn_path_exists(seg), MN_ERR_IO, "output '%s' (of '%s') exists\n---> HINT: --force "
                 "replaces it", seg, o->inputs[i]);
        MN_CHECK(o->force || !o->probs || !mn_path_exists(prob), MN_ERR_IO, "output '%s' (of '%s') exists\n---> "
                 "HINT: --force replaces it", prob, o->inputs[i]);
    }
    return MN_OK;
}

/* Rank 0: the output folder (one level created) and distinct output names.  Local work. */
static mn_err check_outputs(const mn_infer_options *o)
{
    if (mkdir(o->out_dir, 0755) != 0 && errno != EEXIST)
        MN_FAIL(MN_ERR_IO, "cannot create output directory '%s': %s", o->out_dir, strerror(errno));
    for (int i = 0; i < o->ninputs; i++) {
        char si[4200], pi[4200], sj[4200], pj[4200];
        output_paths(o->out_dir, o->inputs[i], si, pi, sizeof si);
        for (int j = 0; j < i; j++) {
            output_paths(o->out_dir, o->inputs[j], sj, pj, sizeof sj);
            MN_CHECK(strcmp(si, sj), MN_ERR_ARG, "inputs '%s' and '%s' would both write '%s': give them distinct "
                     "file names", o->inputs[j], o->inputs[i], si);
        }
    }
    return MN_OK;
}

mn_err mn_infer_run(MPI_Comm comm, const mn_infer_options *o)
{
    int rank = 0, size = 1;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    MN_MPI(MPI_Comm_size(comm, &size));
    MN_CALL(mn_agree(comm, mn_threads_init(mn_threads_resolve(o->threads))));
    /* Rank 0 reads the model (parameters only) and its description; every rank then builds it for the window and
     * receives the weights (mn_ckpt_model_bcast). */
    infer_model im;
    memset(&im, 0, sizeof im);
    mn_err e = mn_agree(comm, rank == 0 ? load_source(o, &im.cm) : MN_OK);
    if (!e) e = mn_agree(comm, rank == 0 ? window_of(o, &im.cm, im.window) : MN_OK);
    if (!e) e = mn_agree(comm, rank == 0 ? check_outputs(o) : MN_OK);
    if (!e) e = mn_mpi_report_if(MPI_Bcast(im.window, 3, MPI_INT, 0, comm));
    if (!e) {
        const int b = o->batch > 0 ? o->batch : 1;
        e = mn_ckpt_model_bcast(comm, 0, (mn_shape){b, 1, im.window[0], im.window[1], im.window[2]}, &im.cm);
    }
    if (!e) e = mn_agree(comm, build_model(o, &im));
    if (!e) {
        mn_log_info("infer: %s, head '%s' (%d classes), resnet%d, window %dx%dx%d, overlap %g, %s blending%s, "
                    "batch %d; preprocessing: %g x %g x %g mm, %s; %d volume(s) on %d rank(s) x %d thread(s), BLIS "
                    "kernels %s", o->checkpoint, im.cm.head_names[0], im.classes, im.cm.cfg.depth, im.window[0], im.window[1],
                    im.window[2], o->overlap, o->blend == MN_BLEND_GAUSSIAN ? "gaussian" : o->blend == MN_BLEND_LINEAR
                    ? "linear" : "constant", o->tta ? ", flip TTA" : "", im.batch, im.prep.spacing[0],
                    im.prep.spacing[1], im.prep.spacing[2], im.prep.normalisation == MN_NORM_ZSCORE ? "z-score" :
                    im.prep.normalisation == MN_NORM_CT ? "CT" : im.prep.normalisation == MN_NORM_WINDOW ? "window"
                    : "none", o->ninputs, size, mn_threads_count(), mn_blis_arch());
        e = mn_agree(comm, check_inputs(o, rank, size));
    }
    /* Each rank its volumes; the first failure stops this rank's list, the outcome is agreed. */
    mn_err le = MN_OK;
    for (int i = rank; i < o->ninputs && !e && !le; i += size) le = infer_one(&im, o, rank, o->inputs[i]);
    if (!e) e = mn_agree(comm, le);
    infer_model_destroy(&im);
    MN_CHECK(!e, e, "called from mednet infer");
    return MN_OK;
}
