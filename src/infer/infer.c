/* infer.c: `mednet infer` (mednet/infer.h): a checkpoint's model applied to NIfTI volumes, data-parallel over
 * ranks (each rank its own volumes).
 *
 * The model is rebuilt from the checkpoint alone: its config attribute gives the architecture and the training
 * crop (the default window), its preprocessing attribute (mednet/corpus.h) the classes and what prep did to the
 * dataset's volumes, and the arrays encoder/{params,bn} and heads/<dataset>/{params,bn} the weights.  A checkpoint
 * written before the preprocessing record existed is read together with its corpus (the recorded corpus_path or
 * --corpus; its checksum must be the checkpoint's), or refused with that hint.  Rank 0 reads the checkpoint and
 * broadcasts it, so P ranks cost one reader.
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
    mn_config *config;        /* the checkpoint's run configuration */
    mn_config *prep_cfg;      /* the parsed preprocessing record */
    mn_prep_record prep;      /* of the applied head's dataset */
    mn_model_config mc;
    mn_model *model;
    int window[3], batch, classes, tta;
    float *xin, *up;          /* model input (batch, 1, window); up-sampled logits (batch, classes, window) */
} infer_model;

static void infer_model_destroy(infer_model *im)
{
    mn_model_destroy(&im->model);
    mn_config_destroy(&im->config);
    mn_config_destroy(&im->prep_cfg);
    mn_free(&im->xin);
    mn_free(&im->up);
}

/* ---- the checkpoint ------------------------------------------------------------------------------------------ */

/* Does array `name` exist in the checkpoint? */
static mn_err has_array(mn_ckpt *ck, const char *name, int *exists)
{
    MN_CALL(mn_ckpt_info(ck, name, exists, NULL, NULL));
    return MN_OK;
}

/* The preprocessing record of a checkpoint written without one, from its corpus (rank 0, serial open). */
static mn_err record_from_corpus(mn_ckpt *ck, const char *ckpt_path, const char *corpus, char **prep_text)
{
    char *recorded = NULL, *sum = NULL;
    MN_CALL(mn_ckpt_attr_get(ck, "corpus_checksum", &sum));
    uint32_t want = (uint32_t)strtoul(sum, NULL, 16);
    mn_free(&sum);
    if (!corpus) {
        MN_CALL(mn_ckpt_attr_get(ck, "corpus_path", &recorded));
        corpus = recorded;
    }
    mn_err e = MN_OK;
    if (!mn_path_exists(corpus))
        e = mn_error_report(MN_ERR_CONFIG, __FILE__, __LINE__, __func__,
                            "checkpoint '%s' has no preprocessing record (written by an older mednet) and its corpus "
                            "'%s' cannot be read\n---> HINT: pass --corpus CORPUS, the corpus it was trained on",
                            ckpt_path, corpus);
    mn_corpus_info *info = NULL;
    if (!e) e = mn_corpus_open(MPI_COMM_SELF, corpus, &info);
    if (!e && info->checksum != want)
        e = mn_error_report(MN_ERR_CONFIG, __FILE__, __LINE__, __func__, "checkpoint '%s' was trained on corpus %08x, "
                            "but '%s' is corpus %08x: its preprocessing would not be the model's", ckpt_path,
                            (unsigned)want, corpus, (unsigned)info->checksum);
    for (int d = 0; !e && d < info->num_datasets; d++) {
        char name[MN_CORPUS_NAME_LEN + 32];
        int exists = 0;
        snprintf(name, sizeof name, "heads/%s/params", info->datasets[d].name);
        e = has_array(ck, name, &exists);
        if (e || !exists) continue;
        mn_prep_record rec;
        mn_prep_record_of(info, d, &rec);
        e = mn_prep_record_append(&rec, prep_text);
    }
    if (!e) mn_log_info("infer: %s has no preprocessing record; taken from its corpus %s", ckpt_path, corpus);
    mn_corpus_info_destroy(&info);
    mn_free(&recorded);
    MN_CHECK(!e, e, "called from reading the preprocessing record from the corpus");
    return MN_OK;
}

/* Rank 0: the checkpoint's config text, preprocessing record and the head to apply.  Local work. */
static mn_err describe(const mn_infer_options *o, char **config_text, char **prep_text, char *head, size_t headlen)
{
    mn_ckpt *ck = NULL;
    MN_CALL(mn_ckpt_open(o->checkpoint, &ck));
    char *rec = NULL;
    mn_config *pc = NULL;
    mn_err e = mn_ckpt_attr_get(ck, "config", config_text);
    if (e)
        e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "'%s' is not a mednet training checkpoint "
                            "(no config attribute)", o->checkpoint);
    int has_rec = 0;
    if (!e) e = mn_ckpt_attr_exists(ck, "preprocessing", &has_rec);
    if (!e && has_rec) e = mn_ckpt_attr_get(ck, "preprocessing", &rec);
    if (!e && rec && *rec) {
        *prep_text = rec;
        rec = NULL;
    } else if (!e) {
        e = record_from_corpus(ck, o->checkpoint, o->corpus, prep_text);
    }
    mn_free(&rec);
    /* The head: the one asked for, or the only one. */
    if (!e) e = mn_config_parse(*prep_text, o->checkpoint, &pc);
    if (!e) {
        int n = mn_config_section_count(pc);
        char list[1024] = "";
        for (int i = 0; i < n; i++) {
            if (i) strncat(list, ", ", sizeof list - strlen(list) - 1);
            strncat(list, mn_config_section_name(pc, i), sizeof list - strlen(list) - 1);
        }
        const char *pick = NULL;
        if (o->head) {
            for (int i = 0; i < n; i++)
                if (!strcmp(mn_config_section_name(pc, i), o->head)) pick = o->head;
            if (!pick)
                e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "--head %s: checkpoint '%s' has no head "
                                    "for that dataset (its heads: %s)", o->head, o->checkpoint, list);
        } else if (n == 1) {
            pick = mn_config_section_name(pc, 0);
        } else {
            e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "checkpoint '%s' has %d heads (%s): choose "
                                "one with --head NAME", o->checkpoint, n, list);
        }
        if (pick) snprintf(head, headlen, "%s", pick);
    }
    if (!e) {
        char name[MN_CORPUS_NAME_LEN + 32];
        int exists = 0;
        snprintf(name, sizeof name, "heads/%s/params", head);
        e = has_array(ck, name, &exists);
        if (!e && !exists)
            e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "checkpoint '%s' lists dataset '%s' but "
                                "holds no array %s", o->checkpoint, head, name);
    }
    mn_config_destroy(&pc);
    mn_ckpt_close(&ck);
    MN_CHECK(!e, e, "called from describing checkpoint '%s'", o->checkpoint);
    return MN_OK;
}

/* Broadcast a malloc'ed string from rank 0 (allocated on the others). */
static mn_err bcast_text(MPI_Comm comm, int rank, char **text)
{
    long len = rank == 0 ? (long)strlen(*text) : 0;
    MN_MPI(MPI_Bcast(&len, 1, MPI_LONG, 0, comm));
    if (rank != 0) MN_CALL(mn_malloc((size_t)len + 1, "broadcast text", (void **)text));
    MN_MPI(MPI_Bcast(*text, (int)len + 1, MPI_CHAR, 0, comm));
    return MN_OK;
}

/* Every rank: the model the checkpoint describes, planned for (batch, 1, window).  Local work. */
static mn_err build_model(const mn_infer_options *o, const char *config_text, const char *prep_text,
                          const char *head, infer_model *im)
{
    MN_CALL(mn_config_parse(config_text, o->checkpoint, &im->config));
    MN_CALL(mn_config_parse(prep_text, o->checkpoint, &im->prep_cfg));
    MN_CALL(mn_prep_record_read(im->prep_cfg, head, &im->prep));
    MN_CALL(mn_model_config_read(im->config, "model", &im->mc));
    mn_sampler_config sc;
    MN_CALL(mn_sampler_config_read(im->config, "sampler", &sc));
    for (int a = 0; a < 3; a++) im->window[a] = o->window[a] > 0 ? o->window[a] : sc.crop[a];
    im->batch = o->batch > 0 ? o->batch : 1;
    im->classes = im->prep.num_classes;
    im->tta = o->tta;
    mn_head_spec hs = {0, im->classes};
    im->mc.nheads = 1;
    im->mc.heads = &hs;
    im->mc.prefix_heads = 0;
    im->mc.loss_full_size = 0;
    im->mc.input = (mn_shape){im->batch, 1, im->window[0], im->window[1], im->window[2]};
    MN_CALL(mn_model_create(&im->mc, &im->model));
    im->mc.heads = NULL;
    mn_model_set_training(im->model, 0);
    size_t wv = (size_t)im->window[0] * im->window[1] * im->window[2];
    MN_CALL(mn_malloc(sizeof(float) * wv * (size_t)im->batch, "inference input", (void **)&im->xin));
    MN_CALL(mn_malloc(sizeof(float) * wv * (size_t)im->batch * (size_t)im->classes, "inference logits",
                      (void **)&im->up));
    return MN_OK;
}

/* Rank 0: the weights into the model.  Local work. */
static mn_err read_weights(const mn_infer_options *o, const char *head, infer_model *im)
{
    mn_model *m = im->model;
    mn_range pe = mn_model_param_range(m, -1), be = mn_model_bn_range(m, -1);
    mn_range ph = mn_model_param_range(m, 0), bh = mn_model_bn_range(m, 0);
    char hp[MN_CORPUS_NAME_LEN + 32], hb[MN_CORPUS_NAME_LEN + 32];
    snprintf(hp, sizeof hp, "heads/%s/params", head);
    snprintf(hb, sizeof hb, "heads/%s/bn", head);
    mn_ckpt_array a[4] = {{"encoder/params", MN_CKPT_F32, mn_model_params(m) + pe.offset, pe.count},
                          {"encoder/bn", MN_CKPT_F32, mn_model_bn_buffers(m) + be.offset, be.count},
                          {hp, MN_CKPT_F32, mn_model_params(m) + ph.offset, ph.count},
                          {hb, MN_CKPT_F32, mn_model_bn_buffers(m) + bh.offset, bh.count}};
    mn_ckpt *ck = NULL;
    MN_CALL(mn_ckpt_open(o->checkpoint, &ck));
    mn_err e = mn_ckpt_read(ck, a, 4);
    mn_ckpt_close(&ck);
    MN_CHECK(!e, e, "checkpoint '%s': its arrays do not fit the resnet%d with a %d-class %s head that its "
             "configuration describes (a damaged or edited checkpoint?)", o->checkpoint, im->mc.depth, im->classes,
             im->mc.head_kind == MN_HEAD_SEG ? "conv_seg" : "branch");
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
    /* The checkpoint's description (rank 0), then the model on every rank, then its weights (rank 0, broadcast). */
    char *config_text = NULL, *prep_text = NULL, head[MN_CORPUS_NAME_LEN] = "";
    infer_model im;
    memset(&im, 0, sizeof im);
    mn_err e = mn_agree(comm, rank == 0 ? describe(o, &config_text, &prep_text, head, sizeof head) : MN_OK);
    if (!e) e = mn_agree(comm, rank == 0 ? check_outputs(o) : MN_OK);
    if (!e) e = bcast_text(comm, rank, &config_text);
    if (!e) e = bcast_text(comm, rank, &prep_text);
    if (!e) e = mn_mpi_report_if(MPI_Bcast(head, (int)sizeof head, MPI_CHAR, 0, comm));
    /* Every rank parses the same text: rank 0 first (one message per error), the others once it succeeded. */
    if (!e) e = mn_agree(comm, rank == 0 ? build_model(o, config_text, prep_text, head, &im) : MN_OK);
    if (!e) e = mn_agree(comm, rank != 0 ? build_model(o, config_text, prep_text, head, &im) : MN_OK);
    if (!e) e = mn_agree(comm, rank == 0 ? read_weights(o, head, &im) : MN_OK);
    if (!e) e = mn_dist_bcast_floats(comm, mn_model_params(im.model), mn_model_num_params(im.model), 0);
    if (!e) e = mn_dist_bcast_floats(comm, mn_model_bn_buffers(im.model), mn_model_num_bn_buffers(im.model), 0);
    if (!e) {
        mn_log_info("infer: %s, head '%s' (%d classes), resnet%d, window %dx%dx%d, overlap %g, %s blending%s, "
                    "batch %d; preprocessing: %g x %g x %g mm, %s; %d volume(s) on %d rank(s) x %d thread(s), BLIS "
                    "kernels %s", o->checkpoint, head, im.classes, im.mc.depth, im.window[0], im.window[1],
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
    free(config_text);
    free(prep_text);
    MN_CHECK(!e, e, "called from mednet infer");
    return MN_OK;
}
