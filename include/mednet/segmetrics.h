/* segmetrics.h: segmentation metrics in physical units: Dice, Hausdorff distance (max and 95th percentile) and the
 * average symmetric surface distance (ASSD), per class, on label volumes of one grid.
 *
 * Definitions (those of medpy/MONAI's surface metrics; ASSD as in Heimann et al. 2009):
 *   A, B          the voxels of class c in the prediction and in the reference;
 *   Dice          2|A n B| / (|A| + |B|);
 *   surface S(X)  the voxels of X with at least one of their 6 face neighbours outside X; a neighbour outside the
 *                 volume counts as outside X (scipy's binary_erosion with border_value = 0, as medpy does);
 *   d(x, S)       the Euclidean distance in mm from voxel centre x to the nearest voxel centre of S, through the
 *                 voxel spacing of each axis (the lengths of the affine's columns);
 *   distances     D = { d(a, S(B)) : a in S(A) }  u  { d(b, S(A)) : b in S(B) } (a multiset, both directions);
 *   HD            max D;  HD95  the 95th percentile of D (linear interpolation between order statistics, numpy's
 *                 default);  ASSD  the mean of D = (sum over S(A) + sum over S(B)) / (|S(A)| + |S(B)|).
 * Empty structures: both A and B empty: Dice 1, HD = HD95 = ASSD = 0 (nothing to find, nothing missed); exactly one
 * empty: Dice 0, HD = HD95 = ASSD = +inf (no surface to measure to).  Writers print inf as "inf" (CSV) and null
 * (JSON, which has no infinity), with the voxel counts beside them saying which side was empty.
 *
 * Distances come from an exact Euclidean distance transform (Felzenszwalb & Huttenlocher's lower envelope of
 * parabolas, one pass per axis with that axis's spacing, in double), restricted to the bounding box of A u B: every
 * surface voxel lies inside it, so distances inside the box are exact.  Cost O(box voxels) per class instead of
 * O(|S(A)| |S(B)|) for the pairwise brute force.  Exact for any orthogonal voxel axes (rotations, flips,
 * permutations, anisotropic spacing); for a sheared affine (non-orthogonal columns) the per-axis spacing is an
 * approximation, and mn_affine_spacing reports the shear.  Nothing here touches MPI or files.
 */
#ifndef MEDNET_SEGMETRICS_H
#define MEDNET_SEGMETRICS_H

#include <stdint.h>
#include <stdio.h>
#include "mednet/error.h"

/* Spacing (mm) of voxel axes i, j, k: the lengths of the first three columns of `affine` (rows x, y, z).  *shear
 * (may be NULL) gets the largest |cos| between two columns (0 for orthogonal axes). */
void mn_affine_spacing(const double affine[4][4], double spacing[3], double *shear);

/* Squared Euclidean distance transform in place: f holds n[0]*n[1]*n[2] values (index i + n0*(j + n1*k)), 0 at
 * feature voxels and INFINITY elsewhere; on return each entry is the squared distance in mm^2 to the nearest
 * feature (INFINITY everywhere if there is none).  spacing: mm along i, j, k.  MN_ERR_MEM on allocation failure.
 * Not collective. */
mn_err mn_edt_sq(double *f, const int64_t n[3], const double spacing[3]);

/* The metrics of one class. */
typedef struct mn_seg_metrics {
    int cls;
    int64_t pred_voxels, label_voxels, overlap_voxels;
    int64_t pred_surface, label_surface;  /* |S(A)|, |S(B)| */
    double dice, hd, hd95, assd;          /* mm; see the definitions above */
} mn_seg_metrics;

/* Metrics of class `cls` for prediction `pred` against reference `label` (int32, n[0]*n[1]*n[2] voxels, same
 * layout as mn_edt_sq), voxel spacing in mm.  MN_ERR_MEM on allocation failure.  Not collective. */
mn_err mn_seg_metrics_class(const int32_t *pred, const int32_t *label, const int64_t n[3], const double spacing[3],
                            int cls, mn_seg_metrics *out);

/* ---- prediction / reference pairs of NIfTI files (`mednet eval`) ---- */

#define MN_EVAL_MAX_CLASSES 256

/* One evaluated pair: metrics of classes 1 .. num_classes-1 in m[1 ..] (m[0], background, is not computed). */
typedef struct mn_eval_case {
    char pred[1024], label[1024];
    int64_t dim[3];
    double spacing[3];     /* mm along i, j, k (mn_affine_spacing of the reference) */
    double shear;          /* largest |cos| between affine columns; > 1e-3 is warned about */
    int num_classes;
    mn_seg_metrics m[MN_EVAL_MAX_CLASSES];
} mn_eval_case;

/* Read prediction and reference (mn_nifti_read), check them and compute every class.  Both files must be on one
 * grid: the same dimensions and affines equal within `tol` mm on every entry, else MN_ERR_FORMAT naming both files
 * with their dimensions and affines.  Voxel values must be non-negative integers (after scaling), else
 * MN_ERR_FORMAT naming the file and voxel.  num_classes > 0: values must be < num_classes; 0: num_classes is one
 * more than the largest value in either file.  Not collective. */
mn_err mn_eval_pair(const char *pred, const char *label, int num_classes, double tol, mn_eval_case *out);

/* The per-class table of n cases and the mean Dice / HD95 / ASSD of each class over the cases (a mean over the
 * cases where the value is finite, with the count of infinite ones), to f.  Not collective. */
void mn_eval_print(FILE *f, const mn_eval_case *c, int n);

/* One CSV row per case and class (header: pred,label,class,dice,hd95_mm,assd_mm,hd_mm,pred_voxels,label_voxels,
 * overlap_voxels,pred_surface,label_surface; infinite distances as "inf"), or a JSON document
 * {"cases": [{"pred", "label", "dim", "spacing_mm", "classes": [{"class", "dice", "hd95_mm", ...}]}]} with infinite
 * distances as null.  Written atomically (mednet/fileio.h).  MN_ERR_IO naming the file.  Not collective. */
mn_err mn_eval_write_csv(const char *path, const mn_eval_case *c, int n);
mn_err mn_eval_write_json(const char *path, const mn_eval_case *c, int n);

#endif
