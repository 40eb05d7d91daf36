/* corpus_write.c: `mednet prep`: NIfTI pairs -> spatially and intensity-normalised volumes -> one HDF5 corpus.
 *
 * Phases (all collective on the prep communicator; volume g of the global dataset-major list belongs to rank
 * g mod P, round-robin so that datasets of different sizes spread evenly):
 *   0. header pass: each rank reads the NIfTI headers of its pairs, checks the label grid against the image
 *      (same grid within the affine tolerance, or world overlap with label_grid = world) and records the world
 *      spacing; the records are combined on every rank (MPI_Allreduce with MPI_BOR over zero-initialised bytes:
 *      exactly one rank wrote each record) and each dataset's target spacing is fixed (configured, or the
 *      per-axis median of its images, as Med3D and nnU-Net do).
 *   1. each rank reads its pairs, validates them (NaN/Inf, labels in the map, empty labels), takes the source's
 *      foreground mask (voxels > 0 for z-score, != 0 otherwise), low-pass filters the image when it is
 *      downsampled (mn_antialias), resamples image (trilinear), label and mask (nearest) onto the canonical grid,
 *      crops to the box of mask or label, and z-scores MR inside the mask; all of it in memory.  Errors are agreed
 *      on (mn_agree) before any file exists; why a pair failed is written into its record (vol_rec.reason), so the
 *      reason travels with the record to rank 0's skip log and into the file.
 *   2. CT/window datasets: each volume contributes a fixed-size, evenly strided sample of its foreground
 *      intensities (as nnU-Net samples 10^4 voxels per case); the samples are combined in volume order, so the
 *      percentiles and statistics do not depend on P; owners normalise.
 *   3. the file is created at "<output>.tmp" with the MPI-IO driver; groups, datasets and attributes are created
 *      collectively with identical values on every rank; each owner writes its voxels with an independent
 *      H5Dwrite (no filter: parallel HDF5 1.10 cannot write compressed datasets independently, so `compress`
 *      is only honoured on one rank); rank 0 renames the file into place.
 * Rejected: gathering all volumes on rank 0 and writing serially (the write would not scale, and the memory of
 * one node would bound the corpus); per-rank files (the corpus must stay one self-describing file).
 * Known limit: every rank holds its preprocessed volumes in memory until the write (the corpus is small after
 * resampling; a streaming variant would write dataset by dataset).
 */
#include "corpus_impl.h"
#include "mednet/mpicheck.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* Foreground intensity samples per volume for dataset-level CT statistics. */
#define SAMPLES_PER_VOLUME 10000

enum { REC_UNSET = 0, REC_OK = 1, REC_SKIPPED = 2 };

/* Per-volume record, combined over ranks by a bytewise OR (only the owner writes it; the rest stays zero). */
typedef struct vol_rec {
    int32_t status, dataset, pair, skipped_err;
    int64_t shape[3];        /* D, H, W after crop */
    double affine[4][4];     /* stored grid: voxel (i,j,k,1) -> world */
    int64_t src_dim[3];
    double src_spacing[3];   /* world x, y, z */
    int64_t img_bytes, lab_bytes;
    uint32_t img_crc, lab_crc, data_crc, nsample;
    double mean, std, clip[2], fg_share;
    double aa_sigma[3];      /* anti-aliasing sigmas (source voxels) */
    char affine_source[8];
    char reason[400];
} vol_rec;

/* Processed voxels of a volume owned by this rank. */
typedef struct vol_data {
    float *image;
    uint8_t *label;
} vol_data;

typedef struct prep {
    MPI_Comm comm;
    int rank, size;
    const mn_corpus_def *def;
    int skip_bad;
    int nvol;                 /* total pairs */
    int *first;               /* first global index of each dataset (num_datasets+1) */
    vol_rec *rec;
    vol_data *data;
    float *samples;           /* nvol * SAMPLES_PER_VOLUME, only for CT/window datasets */
    double (*spacing)[3];     /* per dataset target spacing */
    double (*dstats)[4];      /* per dataset: clip lo, hi, mean, std (CT/window) */
    double *median_buf;       /* nvol: scratch for the median spacing */
    int force;                /* replace an existing output */
} prep;

static int needs_dataset_stats(const mn_dataset_def *d) { return d->normalisation == MN_NORM_CT || d->normalisation == MN_NORM_WINDOW; }

/* A pair's failure, in its record: the reason is written into r->reason (it travels with the record to every rank,
 * into the skip log and the file's skipped_pairs) and printed as an error line.  Returns `code`. */
__attribute__((format(printf, 6, 7))) static mn_err pair_fail(vol_rec *r, mn_err code, const char *file, int line,
                                                               const char *func, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
    return mn_error_report(code, file, line, func, "%s", r->reason);
}

/* A step on a file of the pair failed in a function that printed its own message: the record names the step, the
 * file and the code. */
static mn_err pair_step_failed(vol_rec *r, mn_err e, const char *step, const char *path, const char *file, int line,
                               const char *func)
{
    snprintf(r->reason, sizeof r->reason, "%s '%s' failed (%s)", step, path, mn_err_name(e));
    return mn_error_report(e, file, line, func, "called from %s '%s'", step, path);
}

#define PAIR_CHECK(r, cond, code, ...)                                                                         \
    do {                                                                                                       \
        if (!(cond)) return pair_fail((r), (code), __FILE__, __LINE__, __func__, __VA_ARGS__);                \
    } while (0)
#define PAIR_CALL(r, expr, step, path)                                                                         \
    do {                                                                                                       \
        mn_err pc__e = (expr);                                                                                 \
        if (pc__e) return pair_step_failed((r), pc__e, (step), (path), __FILE__, __LINE__, __func__);         \
    } while (0)

/* An error on a pair: skipped (recorded, warned) when skip_bad allows it, else returned.  Not collective. */
static mn_err pair_error(prep *p, vol_rec *r, mn_err e)
{
    if (!p->skip_bad || e == MN_ERR_MEM || e == MN_ERR_INTERNAL || e == MN_ERR_MPI) return e;
    r->status = REC_SKIPPED;
    r->skipped_err = (int32_t)e;
    if (!r->reason[0]) snprintf(r->reason, sizeof r->reason, "%s", mn_err_name(e));
    mn_log_warn("skipping pair %d of dataset [%s]: %s", r->pair, p->def->datasets[r->dataset].name, r->reason);
    return MN_OK;
}

/* Phase 0 for one pair: headers, grid check, spacing.  Local work; on failure r->reason says why. */
static mn_err header_pass(prep *p, vol_rec *r)
{
    const mn_dataset_def *d = &p->def->datasets[r->dataset];
    const char *ip = d->images[r->pair], *lp = d->labels[r->pair];
    mn_volume img = {0}, lab = {0};
    mn_nifti_info ii;
    PAIR_CALL(r, mn_nifti_read_header(ip, &img, &ii), "reading the NIfTI header of image", ip);
    PAIR_CALL(r, mn_nifti_read_header(lp, &lab, NULL), "reading the NIfTI header of label", lp);
    for (int a = 0; a < 3; a++) r->src_dim[a] = img.dim[a];
    mn_volume_world_spacing(&img, r->src_spacing);
    snprintf(r->affine_source, sizeof r->affine_source, "%s", ii.affine_source);
    if (!d->label_grid) {
        PAIR_CHECK(r, mn_volume_same_grid(&img, &lab, p->def->affine_tolerance), MN_ERR_FORMAT,
                 "label grid of '%s' (%lldx%lldx%lld, x row %g %g %g %g) does not match image '%s' (%lldx%lldx%lld, "
                 "x row %g %g %g %g) within %g mm\n---> HINT: set `label_grid = world` in [%s] to resample the label "
                 "through world coordinates", lp, (long long)lab.dim[0], (long long)lab.dim[1], (long long)lab.dim[2],
                 lab.affine[0][0], lab.affine[0][1], lab.affine[0][2], lab.affine[0][3], ip, (long long)img.dim[0],
                 (long long)img.dim[1], (long long)img.dim[2], img.affine[0][0], img.affine[0][1], img.affine[0][2],
                 img.affine[0][3], p->def->affine_tolerance, d->name);
    } else {
        mn_grid g;
        double sp[3];
        mn_volume_world_spacing(&img, sp);
        PAIR_CALL(r, mn_grid_for_volume(&img, sp, &g), "building the grid of image", ip);
        double ov = mn_grid_overlap(&g, &lab);
        PAIR_CHECK(r, ov >= 0.5, MN_ERR_FORMAT, "label '%s' covers only %.0f%% of the world box of image '%s' (expected "
                 ">= 50%%): wrong label file or affine?", lp, 100 * ov, ip);
    }
    r->status = REC_OK;
    return MN_OK;
}

static double median(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1], v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Combine the records of all ranks (bytewise OR: each record was written by exactly one rank). */
static mn_err combine_records(prep *p)
{
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, p->rec, (int)(p->nvol * sizeof(vol_rec)), MPI_BYTE, MPI_BOR, p->comm));
    return MN_OK;
}

/* Phase 1 for one pair: read, validate, resample, crop, normalise (MR) or sample (CT).  Fills r and *out.  Local
 * work; on failure r->reason says why. */
static mn_err process_pair(prep *p, vol_rec *r, vol_data *out, float *samples)
{
    const mn_dataset_def *d = &p->def->datasets[r->dataset];
    const char *ip = d->images[r->pair], *lp = d->labels[r->pair];
    const double *sp = p->spacing[r->dataset];
    mn_volume img = {0}, lab = {0};
    mn_nifti_info ii, li;
    float *rimg = NULL, *rlab = NULL, *rmsk = NULL, *cmsk = NULL;
    mn_err e = MN_OK;
#define TRY(x, step, path)                                                                                     \
    do {                                                                                                       \
        if ((e = (x)) != MN_OK) {                                                                              \
            e = pair_step_failed(r, e, (step), (path), __FILE__, __LINE__, __func__);                          \
            goto done;                                                                                         \
        }                                                                                                      \
    } while (0)
#define FAIL(code, ...)                                                                                        \
    do {                                                                                                       \
        e = pair_fail(r, (code), __FILE__, __LINE__, __func__, __VA_ARGS__);                                   \
        goto done;                                                                                             \
    } while (0)
    TRY(mn_nifti_read(ip, &img, &ii), "reading image", ip);
    TRY(mn_nifti_read(lp, &lab, &li), "reading label", lp);
    r->img_bytes = ii.file_bytes, r->img_crc = ii.crc32;
    r->lab_bytes = li.file_bytes, r->lab_crc = li.crc32;
    /* Validation on the source voxels. */
    int64_t first_bad = -1, nv = mn_volume_voxels(&img);
    float vmin = INFINITY;
    int64_t nbad = mn_volume_nonfinite(&img, &first_bad, &vmin);
    if (nbad)
        FAIL(MN_ERR_NUMERIC, "image '%s' has %lld NaN/Inf voxel(s) (first at voxel %lld of %lld)", ip,
             (long long)nbad, (long long)first_bad, (long long)nv);
    /* The image onto its canonical grid (mn_preprocess_image: the source's foreground mask, voxels > 0 for z-score
     * and != 0 otherwise, taken before the low-pass; the low-pass when downsampling; trilinear resampling with the
     * image's minimum outside (0 for MR, air for CT), the mask with nearest).  The mask decides the crop box and
     * which voxels are z-scored. */
    const int zs = d->normalisation == MN_NORM_ZSCORE;
    mn_grid g;
    TRY(mn_preprocess_image(&img, ip, sp, zs, d->antialias, vmin, &g, &rimg, &rmsk, r->aa_sigma), "preprocessing image",
        ip);
    TRY(mn_label_map_apply(&lab, d->ranges, d->num_ranges, d->num_classes, lp), "mapping the label values of", lp);
    int64_t nfg = 0, nl = mn_volume_voxels(&lab);
    for (int64_t i = 0; i < nl; i++) nfg += lab.data[i] > 0;
    if (!nfg) FAIL(MN_ERR_FORMAT, "label '%s' is empty: no voxel maps to a foreground class (label_map: %s)", lp,
                   d->label_map_text);
    /* The label onto the same grid. */
    int64_t dims[3] = {g.n[2], g.n[1], g.n[0]}, ng = g.n[0] * g.n[1] * g.n[2];
    rlab = malloc((size_t)ng * sizeof *rlab);
    if (!rlab) FAIL(MN_ERR_MEM, "out of memory resampling '%s'", lp);
    TRY(mn_resample(&lab, &g, 0, 0, rlab), "resampling label", lp);
    mn_volume_free(&img);
    mn_volume_free(&lab);
    /* Crop to the foreground box (mask or label > 0). */
    int64_t lo[3] = {0, 0, 0}, hi[3] = {dims[0], dims[1], dims[2]};
    if (d->crop) mn_foreground_bbox(rmsk, rlab, dims, lo, hi);
    int64_t n = 1;
    for (int a = 0; a < 3; a++) r->shape[a] = hi[a] - lo[a], n *= r->shape[a];
    out->image = malloc((size_t)n * sizeof(float));
    float *clab = malloc((size_t)n * sizeof(float));
    cmsk = malloc((size_t)n * sizeof(float));
    out->label = malloc((size_t)n);
    if (!out->image || !clab || !cmsk || !out->label) {
        free(clab);
        FAIL(MN_ERR_MEM, "out of memory cropping '%s'", ip);
    }
    mn_crop(rimg, dims, lo, hi, out->image);
    mn_crop(rlab, dims, lo, hi, clab);
    mn_crop(rmsk, dims, lo, hi, cmsk);
    int64_t fg = 0;
    for (int64_t i = 0; i < n; i++) {
        out->label[i] = (uint8_t)clab[i];
        fg += clab[i] > 0;
    }
    if (!fg) {
        free(clab);
        FAIL(MN_ERR_FORMAT, "label '%s' has no foreground voxel left after resampling to %g x %g x %g mm (empty "
             "label at this spacing)", lp, sp[0], sp[1], sp[2]);
    }
    r->fg_share = (double)fg / (double)n;
    /* The stored grid: axis-aligned, origin moved to the crop corner (lo is z,y,x). */
    memset(r->affine, 0, sizeof r->affine);
    for (int w = 0; w < 3; w++) {
        r->affine[w][w] = g.spacing[w];
        r->affine[w][3] = g.origin[w] + (double)lo[2 - w] * g.spacing[w];
    }
    r->affine[3][3] = 1;
    /* Intensities. */
    if (d->normalisation == MN_NORM_ZSCORE) {
        int64_t cnt;
        mn_masked_stats(out->image, cmsk, n, 0, 0, &r->mean, &r->std, &cnt);
        mn_normalise(out->image, cmsk, n, MN_NORM_ZSCORE, 0, 0, r->mean, r->std);
    } else if (needs_dataset_stats(d)) {
        /* Evenly strided foreground sample, in voxel order: deterministic and independent of the rank. */
        int64_t step = fg > SAMPLES_PER_VOLUME ? (fg + SAMPLES_PER_VOLUME - 1) / SAMPLES_PER_VOLUME : 1, k = 0, s = 0;
        for (int64_t i = 0; i < n && s < SAMPLES_PER_VOLUME; i++)
            if (clab[i] > 0 && k++ % step == 0) samples[s++] = out->image[i];
        r->nsample = (uint32_t)s;
    }
    free(clab);
    r->status = REC_OK;
done:
#undef TRY
#undef FAIL
    mn_volume_free(&img);
    mn_volume_free(&lab);
    free(rimg);
    free(rlab);
    free(rmsk);
    free(cmsk);
    if (e) {
        free(out->image), free(out->label);
        out->image = NULL, out->label = NULL;
    }
    return e;
}

/* Phase 2: dataset statistics for CT/window datasets, identical on every rank. */
static mn_err dataset_stats(prep *p)
{
    const mn_corpus_def *def = p->def;
    for (int d = 0; d < def->num_datasets; d++) {
        const mn_dataset_def *ds = &def->datasets[d];
        if (!needs_dataset_stats(ds)) continue;
        int g0 = p->first[d], g1 = p->first[d + 1];
        size_t bytes = (size_t)(g1 - g0) * SAMPLES_PER_VOLUME * sizeof(float);
        MN_MPI(MPI_Allreduce(MPI_IN_PLACE, p->samples + (size_t)g0 * SAMPLES_PER_VOLUME, (int)bytes, MPI_BYTE, MPI_BOR,
                             p->comm));
        int64_t total = 0;
        for (int g = g0; g < g1; g++) total += p->rec[g].status == REC_OK ? p->rec[g].nsample : 0;
        float *all = malloc((size_t)(total ? total : 1) * sizeof *all);
        MN_CHECK(all, MN_ERR_MEM, "out of memory for the intensity samples of [%s]", ds->name);
        int64_t k = 0;
        for (int g = g0; g < g1; g++)
            if (p->rec[g].status == REC_OK)
                for (uint32_t s = 0; s < p->rec[g].nsample; s++) all[k++] = p->samples[(size_t)g * SAMPLES_PER_VOLUME + s];
        double lo = ds->window[0], hi = ds->window[1];
        if (ds->normalisation == MN_NORM_CT && total) {
            lo = mn_quantile_sorted_inplace(all, total, 0.005);
            hi = mn_quantile_sorted_inplace(all, total, 0.995);
        }
        double s = 0, s2 = 0;
        for (int64_t i = 0; i < total; i++) {
            double v = all[i] < lo ? lo : all[i] > hi ? hi : all[i];
            s += v, s2 += v * v;
        }
        free(all);
        double mean = total ? s / (double)total : 0, var = total ? s2 / (double)total - mean * mean : 0;
        p->dstats[d][0] = lo, p->dstats[d][1] = hi, p->dstats[d][2] = mean, p->dstats[d][3] = var > 0 ? sqrt(var) : 0;
    }
    return MN_OK;
}

/* Write a whole (D, H, W) array chunk by chunk: each chunk is packed into a contiguous buffer and written with one
 * independent H5Dwrite.  Why: handed the whole strided array, parallel HDF5 1.10 + MPI-IO issue one pwrite per
 * row of every chunk (1.8 million pwrite calls for 138 MB, 25x slower than the serial driver); packed, each chunk
 * is one contiguous write. */
static mn_err write_chunked(hid_t dset, hid_t memtype, size_t esize, const void *data, const hsize_t dims[3],
                            const hsize_t chunk[3])
{
    unsigned char *buf = malloc(chunk[0] * chunk[1] * chunk[2] * esize);
    MN_CHECK(buf, MN_ERR_MEM, "out of memory for a chunk buffer");
    hid_t fs;
    if ((fs = H5Dget_space(dset)) < 0) {
        free(buf);
        return mn_h5_report("H5Dget_space", __FILE__, __LINE__, __func__);
    }
    mn_err e = MN_OK;
    const unsigned char *src = data;
    for (hsize_t z = 0; z < dims[0] && !e; z += chunk[0])
        for (hsize_t y = 0; y < dims[1] && !e; y += chunk[1])
            for (hsize_t x = 0; x < dims[2] && !e; x += chunk[2]) {
                hsize_t start[3] = {z, y, x};
                hsize_t ext[3] = {dims[0] - z < chunk[0] ? dims[0] - z : chunk[0],
                                  dims[1] - y < chunk[1] ? dims[1] - y : chunk[1],
                                  dims[2] - x < chunk[2] ? dims[2] - x : chunk[2]};
                unsigned char *o = buf;
                for (hsize_t k = 0; k < ext[0]; k++)
                    for (hsize_t j = 0; j < ext[1]; j++) {
                        size_t row = ext[2] * esize;
                        memcpy(o, src + (((z + k) * dims[1] + (y + j)) * dims[2] + x) * esize, row);
                        o += row;
                    }
                hid_t ms = H5Screate_simple(3, ext, NULL);
                if (ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, ext, NULL) < 0 ||
                    H5Dwrite(dset, memtype, ms, fs, H5P_DEFAULT, buf) < 0)
                    e = mn_h5_report("H5Dwrite(chunk)", __FILE__, __LINE__, __func__);
                if (ms >= 0) H5Sclose(ms);
            }
    free(buf);
    MN_H5(H5Sclose(fs));
    return e;
}

/* Create one volume's group, attributes and datasets (collective); the owner writes the voxels. */
static mn_err write_volume(prep *p, hid_t dgrp, int g, int index)
{
    const vol_rec *r = &p->rec[g];
    const mn_dataset_def *ds = &p->def->datasets[r->dataset];
    char name[32];
    snprintf(name, sizeof name, "vol_%04d", index);
    hid_t grp;
    MN_H5(grp = H5Gcreate2(dgrp, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    MN_CALL(mn_h5_attr_str(grp, "source_image", ds->images[r->pair]));
    MN_CALL(mn_h5_attr_str(grp, "source_label", ds->labels[r->pair]));
    MN_CALL(mn_h5_attr_i64(grp, "image_bytes", &r->img_bytes, 1));
    MN_CALL(mn_h5_attr_i64(grp, "label_bytes", &r->lab_bytes, 1));
    MN_CALL(mn_h5_attr_u32(grp, "image_crc32", r->img_crc));
    MN_CALL(mn_h5_attr_u32(grp, "label_crc32", r->lab_crc));
    MN_CALL(mn_h5_attr_i64(grp, "source_dim_image", r->src_dim, 3));
    MN_CALL(mn_h5_attr_f64(grp, "source_spacing", r->src_spacing, 3));
    MN_CALL(mn_h5_attr_str(grp, "affine_source", r->affine_source));
    MN_CALL(mn_h5_attr_f64(grp, "affine", &r->affine[0][0], 16));
    MN_CALL(mn_h5_attr_f64(grp, "norm_mean", &r->mean, 1));
    MN_CALL(mn_h5_attr_f64(grp, "norm_std", &r->std, 1));
    MN_CALL(mn_h5_attr_f64(grp, "norm_clip", r->clip, 2));
    MN_CALL(mn_h5_attr_f64(grp, "foreground_share", &r->fg_share, 1));
    MN_CALL(mn_h5_attr_u32(grp, "data_crc32", r->data_crc));
    MN_CALL(mn_h5_attr_f64(grp, "antialias_sigma", r->aa_sigma, 3));
    if (ds->task == MN_TASK_CLS) MN_CALL(mn_h5_attr_i32(grp, "class", ds->pair_class[r->pair]));

    hsize_t dims[3], chunk[3];
    /* As many chunks per axis as `chunk` asks for, but evened out over the extent, so that edge chunks are not
     * mostly padding (a 45-voxel axis gets two 23-voxel chunks, not a 32 and a 13 padded to 32). */
    for (int a = 0; a < 3; a++) {
        hsize_t c = (hsize_t)p->def->chunk, n;
        dims[a] = (hsize_t)r->shape[a];
        n = (dims[a] + c - 1) / c;
        chunk[a] = (dims[a] + n - 1) / n;
    }
    hid_t space, dcpl;
    MN_H5(space = H5Screate_simple(3, dims, NULL));
    MN_H5(dcpl = H5Pcreate(H5P_DATASET_CREATE));
    MN_H5(H5Pset_chunk(dcpl, 3, chunk));
    /* Every byte is written: skip the fill pass that early allocation would otherwise do. */
    MN_H5(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));
    if (p->def->compress > 0) MN_H5(H5Pset_deflate(dcpl, (unsigned)p->def->compress));
    hid_t di, dl;
    MN_H5(di = H5Dcreate2(grp, "image", H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    MN_H5(dl = H5Dcreate2(grp, "label", H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    const vol_data *vd = &p->data[g];
    if (vd->image) {
        MN_CALL(write_chunked(di, H5T_NATIVE_FLOAT, sizeof(float), vd->image, dims, chunk));
        MN_CALL(write_chunked(dl, H5T_NATIVE_UINT8, 1, vd->label, dims, chunk));
    }
    MN_H5(H5Dclose(di));
    MN_H5(H5Dclose(dl));
    MN_H5(H5Pclose(dcpl));
    MN_H5(H5Sclose(space));
    MN_H5(H5Gclose(grp));
    return MN_OK;
}

/* Phase 3: the file. */
static mn_err write_file(prep *p, const char *tmp, uint32_t checksum)
{
    const mn_corpus_def *def = p->def;
    hid_t fapl, file;
    MN_CALL(mn_corpus_fapl(p->size > 1 ? p->comm : MPI_COMM_NULL, 1, def->mpiio_hints, &fapl));
    MN_H5(file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));
    MN_H5(H5Pclose(fapl));
    int64_t fmt = MN_CORPUS_FORMAT, nd = def->num_datasets;
    MN_CALL(mn_h5_attr_i64(file, "format_version", &fmt, 1));
    MN_CALL(mn_h5_attr_str(file, "mednet_version", MN_VERSION));
    MN_CALL(mn_h5_attr_str(file, "name", def->name));
    MN_CALL(mn_h5_attr_i64(file, "num_datasets", &nd, 1));
    char *names = calloc((size_t)def->num_datasets, MN_CORPUS_NAME_LEN);
    MN_CHECK(names, MN_ERR_MEM, "out of memory");
    for (int d = 0; d < def->num_datasets; d++)
        snprintf(names + (size_t)d * MN_CORPUS_NAME_LEN, MN_CORPUS_NAME_LEN, "%s", def->datasets[d].name);
    mn_err e = mn_h5_attr_strs(file, "datasets", names, def->num_datasets, MN_CORPUS_NAME_LEN);
    free(names);
    MN_CHECK(!e, e, "called from mn_h5_attr_strs(datasets)");
    MN_CALL(mn_h5_attr_u32(file, "checksum", checksum));
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", (unsigned)checksum);
    MN_CALL(mn_h5_attr_str(file, "checksum_hex", hex));

    static const char *const mod[] = {"MR", "CT", "other"}, *const role[] = {"pretrain", "target"},
                             *const norm[] = {"zscore", "ct", "window", "none"};
    for (int d = 0; d < def->num_datasets; d++) {
        const mn_dataset_def *ds = &def->datasets[d];
        hid_t grp;
        MN_H5(grp = H5Gcreate2(file, ds->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        int64_t nok = 0, nskip = 0, ncls = ds->num_classes;
        for (int g = p->first[d]; g < p->first[d + 1]; g++) {
            nok += p->rec[g].status == REC_OK;
            nskip += p->rec[g].status == REC_SKIPPED;
        }
        MN_CALL(mn_h5_attr_str(grp, "name", ds->name));
        MN_CALL(mn_h5_attr_str(grp, "modality", mod[ds->modality]));
        MN_CALL(mn_h5_attr_str(grp, "role", role[ds->role]));
        MN_CALL(mn_h5_attr_str(grp, "task", ds->task == MN_TASK_CLS ? "classification" : "segmentation"));
        MN_CALL(mn_h5_attr_i64(grp, "num_classes", &ncls, 1));
        MN_CALL(mn_h5_attr_strs(grp, "class_names", ds->class_names[0], ds->num_classes, MN_CORPUS_NAME_LEN));
        MN_CALL(mn_h5_attr_f64(grp, "spacing", p->spacing[d], 3));
        MN_CALL(mn_h5_attr_str(grp, "normalisation", norm[ds->normalisation]));
        int64_t aa = ds->antialias;
        MN_CALL(mn_h5_attr_i64(grp, "antialias", &aa, 1));
        MN_CALL(mn_h5_attr_str(grp, "label_map", ds->label_map_text));
        MN_CALL(mn_h5_attr_i64(grp, "num_volumes", &nok, 1));
        MN_CALL(mn_h5_attr_i64(grp, "skipped", &nskip, 1));
        /* Which pairs were skipped and why, one "image | label | reason" line each (empty when none). */
        size_t cap = 1, len = 0;
        for (int g = p->first[d]; g < p->first[d + 1]; g++)
            if (p->rec[g].status == REC_SKIPPED)
                cap += strlen(ds->images[p->rec[g].pair]) + strlen(ds->labels[p->rec[g].pair]) + sizeof p->rec[g].reason + 8;
        char *txt = calloc(1, cap);
        MN_CHECK(txt, MN_ERR_MEM, "out of memory");
        for (int g = p->first[d]; g < p->first[d + 1]; g++)
            if (p->rec[g].status == REC_SKIPPED)
                len += (size_t)snprintf(txt + len, cap - len, "%s | %s | %s\n", ds->images[p->rec[g].pair],
                                        ds->labels[p->rec[g].pair], p->rec[g].reason);
        mn_err ea = mn_h5_attr_str(grp, "skipped_pairs", txt);
        free(txt);
        MN_CHECK(!ea, ea, "called from mn_h5_attr_str(skipped_pairs)");
        MN_CALL(mn_h5_attr_f64(grp, "norm_clip", p->dstats[d], 2));
        MN_CALL(mn_h5_attr_f64(grp, "norm_mean", &p->dstats[d][2], 1));
        MN_CALL(mn_h5_attr_f64(grp, "norm_std", &p->dstats[d][3], 1));
        int index = 0;
        for (int g = p->first[d]; g < p->first[d + 1]; g++)
            if (p->rec[g].status == REC_OK) MN_CALL(write_volume(p, grp, g, index++));
        MN_H5(H5Gclose(grp));
    }
    MN_H5(H5Fclose(file));
    return MN_OK;
}

/* The corpus identity: CRC-32 over the name, each dataset's name and classes, each volume's shape and data CRC;
 * for a classification dataset also the word "classification" and each volume's class (int32), so a corpus of
 * segmentation datasets keeps the identity it had before classification existed. */
static uint32_t corpus_checksum(const prep *p)
{
    uLong c = crc32(0L, Z_NULL, 0);
    c = crc32(c, (const Bytef *)p->def->name, (uInt)strlen(p->def->name));
    for (int d = 0; d < p->def->num_datasets; d++) {
        const mn_dataset_def *ds = &p->def->datasets[d];
        c = crc32(c, (const Bytef *)ds->name, (uInt)strlen(ds->name));
        for (int k = 0; k < ds->num_classes; k++)
            c = crc32(c, (const Bytef *)ds->class_names[k], (uInt)strlen(ds->class_names[k]));
        if (ds->task == MN_TASK_CLS) c = crc32(c, (const Bytef *)"classification", 14);
        for (int g = p->first[d]; g < p->first[d + 1]; g++) {
            const vol_rec *r = &p->rec[g];
            if (r->status != REC_OK) continue;
            c = crc32(c, (const Bytef *)r->shape, sizeof r->shape);
            c = crc32(c, (const Bytef *)&r->data_crc, sizeof r->data_crc);
            if (ds->task == MN_TASK_CLS) {
                int32_t k = ds->pair_class[r->pair];
                c = crc32(c, (const Bytef *)&k, sizeof k);
            }
        }
    }
    return (uint32_t)c;
}

/* Local work: the per-dataset tables and the volume records (zeroed, each naming its dataset and pair). */
static mn_err alloc_records(prep *p)
{
    const mn_corpus_def *def = p->def;
    int nd = def->num_datasets, any_stats = 0;
    p->first = calloc((size_t)nd + 1, sizeof *p->first);
    p->spacing = calloc((size_t)nd, sizeof *p->spacing);
    p->dstats = calloc((size_t)nd, sizeof *p->dstats);
    MN_CHECK(p->first && p->spacing && p->dstats, MN_ERR_MEM, "out of memory");
    for (int d = 0; d < nd; d++) {
        p->first[d + 1] = p->first[d] + def->datasets[d].num_pairs;
        any_stats |= needs_dataset_stats(&def->datasets[d]);
    }
    p->nvol = p->first[nd];
    p->rec = calloc((size_t)p->nvol, sizeof *p->rec);
    p->data = calloc((size_t)p->nvol, sizeof *p->data);
    p->median_buf = malloc((size_t)(p->nvol ? p->nvol : 1) * sizeof *p->median_buf);
    if (any_stats) p->samples = calloc((size_t)p->nvol * SAMPLES_PER_VOLUME, sizeof(float));
    MN_CHECK(p->rec && p->data && p->median_buf && (!any_stats || p->samples), MN_ERR_MEM, "out of memory for %d "
             "volume records", p->nvol);
    for (int d = 0; d < nd; d++)
        for (int g = p->first[d]; g < p->first[d + 1]; g++) p->rec[g].dataset = d, p->rec[g].pair = g - p->first[d];
    return MN_OK;
}

/* Not collective: every dataset keeps at least one pair (on the combined records). */
static mn_err check_not_empty(const prep *p)
{
    for (int d = 0; d < p->def->num_datasets; d++) {
        int ok = 0;
        for (int g = p->first[d]; g < p->first[d + 1]; g++) ok += p->rec[g].status == REC_OK;
        MN_CHECK(ok, MN_ERR_FORMAT, "dataset [%s]: all %d pair(s) were rejected; nothing to write",
                 p->def->datasets[d].name, p->first[d + 1] - p->first[d]);
    }
    return MN_OK;
}

/* Not collective: the checks before anything is read, each made by the rank(s) that can answer it.  Rank 0 answers
 * for the definition and for whether the output exists (one answer, not one per rank); every rank checks that it
 * can write into the output's directory, because every rank opens the file for writing with MPI-IO. */
static mn_err preflight(const prep *p, const char *output)
{
    const mn_corpus_def *def = p->def;
    MN_CALL(mn_h5_init());
    if (p->rank == 0) {
        MN_CHECK(def->compress == 0 || p->size == 1, MN_ERR_CONFIG, "compress = %d needs a single rank: parallel "
                 "HDF5 1.10 cannot write compressed datasets independently (run prep on 1 rank or set compress = 0)",
                 def->compress);
        for (int d = 0; d < def->num_datasets; d++)
            MN_CHECK(def->datasets[d].num_pairs > 0, MN_ERR_ARG, "dataset [%s] has no file pairs (call "
                     "mn_corpus_def_expand first)", def->datasets[d].name);
        /* Never touch an existing corpus without --force. */
        MN_CHECK(access(output, F_OK) != 0 || p->force, MN_ERR_IO, "output '%s' exists; refusing to overwrite it\n"
                 "---> HINT: pass --force to replace it, or choose another output", output);
    }
    /* A directory we cannot write to is found now rather than by H5Fcreate in the write phase (whose errors are
     * not agreed and end in MPI_Abort). */
    char dir[1100];
    snprintf(dir, sizeof dir, "%s", output);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    if (access(dir, W_OK | X_OK) != 0) {
        int why = errno;
        MN_FAIL(MN_ERR_IO, "cannot write the corpus '%s' on this rank: its directory does not exist or is not "
                "writable ('%s': %s)", output, dir, strerror(why));
    }
    return MN_OK;
}

static void prep_free(prep *p)
{
    if (p->data)
        for (int g = 0; g < p->nvol; g++) free(p->data[g].image), free(p->data[g].label);
    free(p->data), free(p->rec), free(p->samples), free(p->first), free(p->spacing), free(p->dstats);
    free(p->median_buf);
}

/* Everything between the output check and the rename.  Collective on p->comm.  Errors of the input phases (0-2)
 * and the rename are agreed (mn_agree); errors of the write phase and failing MPI calls are not. */
static mn_err run(prep *p, const char *output, const char *tmp, mn_prep_summary *sum)
{
    const mn_corpus_def *def = p->def;
    int nd = def->num_datasets;
    /* Memory for the records: local work, agreed. */
    MN_CALL(mn_agree(p->comm, alloc_records(p)));

    /* Phase 0: headers. */
    mn_err e = MN_OK;
    for (int g = p->rank; g < p->nvol && !e; g += p->size) {
        e = header_pass(p, &p->rec[g]);
        if (e) e = pair_error(p, &p->rec[g], e);
    }
    MN_CALL(mn_agree(p->comm, e));
    MN_CALL(combine_records(p));
    /* The target spacing of each dataset: the same on every rank (from the combined records). */
    for (int d = 0; d < nd; d++) {
        const mn_dataset_def *ds = &def->datasets[d];
        for (int a = 0; a < 3; a++) {
            int n = 0;
            for (int g = p->first[d]; g < p->first[d + 1]; g++)
                if (p->rec[g].status == REC_OK) p->median_buf[n++] = p->rec[g].src_spacing[a];
            p->spacing[d][a] = ds->has_spacing ? ds->spacing[a] : def->has_spacing ? def->spacing[a]
                                                                   : n ? median(p->median_buf, n) : 1;
        }
    }
    /* Records are rebuilt in phase 1: each owner keeps only what the header pass found. */
    for (int g = 0; g < p->nvol; g++) {
        int own = g % p->size == p->rank;
        vol_rec keep = p->rec[g];
        if (!own || keep.status != REC_OK) {
            if (!own) memset(&p->rec[g], 0, sizeof p->rec[g]);
            continue;
        }
        memset(&p->rec[g], 0, sizeof p->rec[g]);
        p->rec[g].dataset = keep.dataset, p->rec[g].pair = keep.pair;
        memcpy(p->rec[g].src_dim, keep.src_dim, sizeof keep.src_dim);
        memcpy(p->rec[g].src_spacing, keep.src_spacing, sizeof keep.src_spacing);
        memcpy(p->rec[g].affine_source, keep.affine_source, sizeof keep.affine_source);
    }

    /* Phase 1: voxels. */
    e = MN_OK;
    int64_t bytes_read = 0;
    for (int g = p->rank; g < p->nvol && !e; g += p->size) {
        if (p->rec[g].status == REC_SKIPPED) continue;
        e = process_pair(p, &p->rec[g], &p->data[g], p->samples ? p->samples + (size_t)g * SAMPLES_PER_VOLUME : NULL);
        if (e) e = pair_error(p, &p->rec[g], e);
        else bytes_read += p->rec[g].img_bytes + p->rec[g].lab_bytes;
    }
    MN_CALL(mn_agree(p->comm, e));

    /* Phase 2: dataset statistics, then owners finish their volumes. */
    MN_CALL(combine_records(p));
    MN_CALL(dataset_stats(p));
    int64_t bytes_written = 0;
    for (int g = 0; g < p->nvol; g++) {
        vol_rec *r = &p->rec[g];
        int own = g % p->size == p->rank;
        if (own && r->status == REC_OK) {
            const mn_dataset_def *ds = &def->datasets[r->dataset];
            int64_t n = r->shape[0] * r->shape[1] * r->shape[2];
            if (needs_dataset_stats(ds)) {
                const double *st = p->dstats[r->dataset];
                r->clip[0] = st[0], r->clip[1] = st[1], r->mean = st[2], r->std = st[3];
                mn_normalise(p->data[g].image, NULL, n, ds->normalisation, st[0], st[1], st[2], st[3]);
            }
            r->data_crc = mn_corpus_data_crc(p->data[g].image, p->data[g].label, n);
            bytes_written += n * 5;
        } else if (!own) {
            memset(r, 0, sizeof *r);
        }
    }
    MN_CALL(combine_records(p));
    /* A dataset whose every pair was skipped cannot be written.  The combined records give every rank the same
     * verdict: rank 0 says it, the agreement tells the others. */
    MN_CALL(mn_agree(p->comm, p->rank == 0 ? check_not_empty(p) : MN_OK));
    uint32_t checksum = corpus_checksum(p);

    /* Phase 3: the file, then the rename by rank 0. */
    MN_CALL(write_file(p, tmp, checksum));
    e = MN_OK;
    if (p->rank == 0 && rename(tmp, output) != 0) {
        int rc = errno;
        e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "corpus not written: cannot rename '%s' to '%s': "
                            "%s", tmp, output, strerror(rc));
        unlink(tmp);
    }
    MN_CALL(mn_agree(p->comm, e));

    long long loc[2] = {bytes_read, bytes_written}, tot[2];
    MN_MPI(MPI_Allreduce(loc, tot, 2, MPI_LONG_LONG, MPI_SUM, p->comm));
    sum->bytes_read = tot[0], sum->bytes_written = tot[1];
    sum->checksum = checksum;
    for (int g = 0; g < p->nvol; g++) {
        sum->volumes_written += p->rec[g].status == REC_OK;
        sum->pairs_skipped += p->rec[g].status == REC_SKIPPED;
    }
    if (p->rank == 0)
        for (int g = 0; g < p->nvol; g++)
            if (p->rec[g].status == REC_SKIPPED)
                mn_log_info("skipped: [%s] pair %d (%s): %s", def->datasets[p->rec[g].dataset].name, p->rec[g].pair,
                            def->datasets[p->rec[g].dataset].images[p->rec[g].pair], p->rec[g].reason);
    return MN_OK;
}

mn_err mn_corpus_prep(MPI_Comm comm, const mn_corpus_def *def, const mn_prep_options *opt, mn_prep_summary *sum)
{
    memset(sum, 0, sizeof *sum);
    prep p = {.comm = comm, .def = def, .force = opt->force};
    MN_MPI(MPI_Comm_rank(comm, &p.rank));
    MN_MPI(MPI_Comm_size(comm, &p.size));
    p.skip_bad = opt->skip_bad >= 0 ? opt->skip_bad : def->skip_bad;
    const char *output = opt->output ? opt->output : def->output;
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", output);
    MN_CALL(mn_agree(comm, preflight(&p, output)));
    double t0 = MPI_Wtime();
    mn_err e = run(&p, output, tmp, sum);
    prep_free(&p);
    MN_CHECK(!e, e, "called from run");
    double dt = MPI_Wtime() - t0;
    MN_MPI(MPI_Allreduce(&dt, &sum->seconds, 1, MPI_DOUBLE, MPI_MAX, comm));
    return MN_OK;
}
