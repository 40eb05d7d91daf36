/* preprocess.h: spatial and intensity normalisation of volumes (the per-volume half of `mednet prep`).
 *
 * Spatial normalisation.  Every volume is resampled onto a canonical grid: axis-aligned with the world (RAS+)
 * axes, index i along +x (towards the subject's right), j along +y (anterior), k along +z (superior), with a
 * chosen spacing.  Sampling each output voxel's world position through the inverse of the source affine does
 * reorientation (flipped or permuted axes), resampling and even oblique affines in one pass.  The canonical grid
 * of an image covers the bounding box of its voxel centres; its label is sampled on the SAME grid through the
 * label's own affine, which is how an atlas on a different grid (HarvardOxford's flipped 182x218x182 MNI grid
 * under Colin27's 181x217x181) lands on its image.  Images: trilinear; labels: nearest neighbour.  A source
 * voxel covers [-0.5, n-0.5) in index space: points inside are clamped to the edge voxels, points outside get
 * the fill value.  Before downsampling an image, prep low-pass filters it (mn_antialias; per-dataset key
 * `antialias`, on by default): nnU-Net and MONAI point-sample without it, skimage's resize filters first.
 *
 * Stored arrays use the tensor layout D,H,W = (k, j, i): x is the fastest axis, as in NIfTI's own order.
 *
 * Intensity normalisation (nnU-Net's rules):
 *   MN_NORM_ZSCORE  MR/other: mean and std over the foreground mask of the volume (the source's voxels > 0,
 *                   resampled with nearest); voxels inside become (x-mean)/std, the others 0 (nnU-Net's
 *                   use_mask_for_norm, MONAI's nonzero=True).
 *   MN_NORM_CT      CT: clip to the 0.5/99.5 percentiles of the dataset's foreground (label > 0) intensities,
 *                   then z-score with the mean/std of those clipped foreground intensities (dataset statistics).
 *   MN_NORM_WINDOW  a fixed window [lo, hi] (e.g. HU), then z-score with the dataset's clipped foreground stats.
 *   MN_NORM_NONE    unchanged.
 * Not collective; nothing here touches MPI or files.
 */
#ifndef MEDNET_PREPROCESS_H
#define MEDNET_PREPROCESS_H

#include <stdint.h>
#include "mednet/error.h"
#include "mednet/nifti.h"

/* A canonical grid: voxel (i,j,k) sits at world (origin + (i,j,k) * spacing), axes along +x, +y, +z. */
typedef struct mn_grid {
    int64_t n[3];        /* voxels along x, y, z */
    double origin[3];    /* world position (mm) of voxel (0,0,0) */
    double spacing[3];   /* mm */
} mn_grid;

/* Spacing of a volume along the world x, y, z axes: for each world axis, the length of the affine column of the
 * voxel axis most aligned with it.  Used for the per-dataset median spacing. */
void mn_volume_world_spacing(const mn_volume *vol, double spacing[3]);

/* The canonical grid covering the voxel centres of `vol` at `spacing` (all > 0).  MN_ERR_ARG for a degenerate
 * (singular) affine or a grid above 2^31 voxels. */
mn_err mn_grid_for_volume(const mn_volume *vol, const double spacing[3], mn_grid *grid);

/* Anti-aliasing before downsampling: a Gaussian low-pass along each voxel axis a of `vol` (in place) with
 * sigma_a = max(0, (f_a - 1) / 2) voxels, f_a = target spacing / source spacing along that axis (the rule of
 * skimage.transform.resize(anti_aliasing=True)); the target spacing of a voxel axis is that of the world axis it
 * is most aligned with.  Same result as scipy.ndimage.gaussian_filter(mode='nearest', truncate=4) axis by axis
 * (i, then j, then k, each pass rounded to float).  sigma[3] gets the sigmas used (0: axis not smoothed).
 * Without it, a 4x downsampling by trilinear point sampling keeps 1 voxel in 64 and aliases fine texture.
 * MN_ERR_MEM on allocation failure.  Not collective. */
mn_err mn_antialias(mn_volume *vol, const double target_spacing[3], double sigma[3]);

/* Resample `src` onto `grid` into out[grid voxels] (layout k, j, i; overwritten).  order 1: trilinear, order 0:
 * nearest.  Points outside the source get `fill`.  MN_ERR_ARG for a singular affine. */
mn_err mn_resample(const mn_volume *src, const mn_grid *grid, int order, float fill, float *out);

/* Resample `src` onto any grid: dim[3] voxels (i, j, k) whose affine `affine` maps voxel (i,j,k,1) to world mm (a
 * NIfTI grid, oblique or flipped).  out[dim voxels], NIfTI order (i fastest), overwritten.  Same sampling rules as
 * mn_resample (which is this function on the canonical grid's affine).  MN_ERR_ARG for a singular source affine. */
mn_err mn_resample_affine(const mn_volume *src, const int64_t dim[3], const double affine[4][4], int order, float fill,
                          float *out);

/* The affine of a canonical grid (diagonal spacing, origin in the last column). */
void mn_grid_affine(const mn_grid *grid, double affine[4][4]);

/* Number of non-finite (NaN/Inf) voxels of vol; *first (may be NULL) gets the index of the first (-1: none) and
 * *vmin (may be NULL) the smallest finite value (+inf if none). */
int64_t mn_volume_nonfinite(const mn_volume *vol, int64_t *first, float *vmin);

/* The image half of prep for one volume (and all of what inference repeats before normalising): the foreground
 * mask of the source (voxels > 0 when zscore_mask, else != 0), the anti-aliasing low-pass (mn_antialias, when
 * `antialias`; img is filtered in place), the canonical grid at `spacing`, the image resampled trilinearly (outside
 * the source: `fill`, prep uses the image minimum) and the mask with nearest.  *image and *mask receive malloc'ed
 * arrays of grid voxels (layout k, j, i; free with free()), aa_sigma the filter's sigmas.  The voxels must be
 * finite (check with mn_volume_nonfinite first).  `path` names the file in errors.  On error nothing is allocated.
 * Not collective. */
mn_err mn_preprocess_image(mn_volume *img, const char *path, const double spacing[3], int zscore_mask, int antialias,
                           float fill, mn_grid *grid, float **image, float **mask, double aa_sigma[3]);

/* 1 if the two volumes have the same dims and affines equal within `tol` (mm, on every entry).  */
int mn_volume_same_grid(const mn_volume *a, const mn_volume *b, double tol);

/* Fraction of the world box of `grid` that the voxel box of `vol` covers (0..1): a label whose grid does not
 * overlap its image is a definition error, not a resampling question. */
double mn_grid_overlap(const mn_grid *grid, const mn_volume *vol);

/* A label map: source label codes [lo, hi] map to class `to`.  Codes not covered are errors. */
typedef struct mn_label_range {
    int64_t lo, hi;
    int to;
} mn_label_range;

/* Map the label values of `vol` in place through the ranges (n of them; n == 0: identity on [0, num_classes)).
 * Values must be integers (after scaling) covered by the map, and the classes < num_classes.  `path` names the
 * file in errors: MN_ERR_FORMAT "label value 17 of 'x.nii.gz' is not in the label map (...)". */
mn_err mn_label_map_apply(mn_volume *vol, const mn_label_range *ranges, int n, int num_classes, const char *path);

/* Bounding box [lo, hi) (k, j, i order: z, y, x) of the voxels where image != 0 or label > 0.  An all-zero
 * volume gives the whole volume.  dims = (nz, ny, nx). */
void mn_foreground_bbox(const float *image, const float *label, const int64_t dims[3], int64_t lo[3],
                        int64_t hi[3]);

/* Copy the box [lo, hi) of a (nz, ny, nx) array into out (hi-lo shape).  Not collective. */
void mn_crop(const float *in, const int64_t dims[3], const int64_t lo[3], const int64_t hi[3], float *out);

/* Inverse of the 3x3 linear part of a voxel-to-world affine into inv; returns 0 (inv undefined) if singular. */
int mn_affine_invert3(const double a[4][4], double inv[3][3]);

/* Intensity normalisation modes. */
typedef enum mn_norm { MN_NORM_ZSCORE = 0, MN_NORM_CT, MN_NORM_WINDOW, MN_NORM_NONE } mn_norm;

/* Mean and standard deviation of x[i] over the voxels with x > 0 (mask == NULL) or mask > 0; clipped to [lo, hi]
 * when lo < hi.  *count gets the number of voxels used.  Sums in double. */
void mn_masked_stats(const float *x, const float *mask, int64_t n, double lo, double hi, double *mean,
                     double *std, int64_t *count);

/* Apply a normalisation in place: MN_NORM_ZSCORE z-scores the voxels inside the mask (mask > 0; mask NULL: the
 * voxels > 0) with (mean, std) and sets the others to 0; CT and WINDOW clip every voxel to [lo, hi] then z-score
 * it (mask unused).  std <= 0 is replaced by 1 (a constant volume stays finite). */
void mn_normalise(float *x, const float *mask, int64_t n, mn_norm mode, double lo, double hi, double mean,
                  double std);

/* The q-quantile (0..1) of v[0..n) by linear interpolation between order statistics (numpy's default).
 * Sorts v in place.  n must be > 0. */
double mn_quantile_sorted_inplace(float *v, int64_t n, double q);

#endif
