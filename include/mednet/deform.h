/* deform.h: seeded random spatial deformations of an image and its label map, for synthetic subjects
 * (`mednet synth`).
 *
 * A deformation maps every voxel p of an OUTPUT grid (affine A_out) to a point of the source volumes in world mm:
 *
 *     x = A_out p                                  (world position of the output voxel)
 *     y = c + M (x - c) + t + u(p)                 (where its value is taken from)
 *
 * with c the centre of the output grid, M = R S H (rotation about the three axes, per-axis scale, shear), t a
 * translation and u a smooth elastic displacement: a coarse grid of control points spanning the output grid, each
 * with a random displacement (mm, normal), smoothed once with a [1 2 1]/4 kernel along each axis and interpolated
 * trilinearly.  The image is sampled at A_img^-1 y trilinearly and the label at A_lab^-1 y by nearest neighbour, so
 * every label value of the result is a value of the source label map; the label may live on another grid than the
 * image (it is read through its own affine).  Outside a source volume its border voxels are repeated.  An optional
 * intensity change keeps zero at zero (so the foreground masks of prep are kept): v -> sign(v) g m (|v| / m)^gamma,
 * m the largest |v| of the source image, g and gamma log-normal.
 *
 * Every number comes from (seed, stream): a draw depends on nothing else, so a subject is the same on any rank.
 * With every strength 0 the deformation is the identity (y = x), and a pure translation by whole voxels moves the
 * volume by whole voxels.  Nothing here touches MPI or files.
 */
#ifndef MEDNET_DEFORM_H
#define MEDNET_DEFORM_H

#include <stdint.h>
#include "mednet/error.h"

/* Strengths; every one 0 gives the identity. */
typedef struct mn_deform_params {
    double rotate_deg;    /* angle about each axis, uniform in [-rotate_deg, rotate_deg] */
    double scale;         /* per-axis scale, uniform in [1 - scale, 1 + scale] */
    double shear;         /* each of the three upper shear terms, uniform in [-shear, shear] */
    double translate_mm;  /* per-axis translation, uniform in [-translate_mm, translate_mm] mm */
    double elastic_mm;    /* standard deviation (mm) of each control point's displacement, before smoothing */
    int elastic_grid;     /* control points per axis (>= 2) */
    double intensity;     /* standard deviation of log(gain) and log(gamma); 0 = intensities unchanged */
} mn_deform_params;

/* One drawn deformation.  Plain data except `disp`, owned: release with mn_deform_free. */
typedef struct mn_deform {
    double m[3][3];   /* M */
    double t[3];      /* mm */
    int grid;         /* control points per axis; 0 = no elastic part */
    float *disp;      /* grid^3 x 3 floats (x fastest over control points, then y, z; 3 world components) */
    double gain, gamma;
} mn_deform;

/* Draw a deformation from (seed, stream) with strengths p.  Deterministic: the same arguments give the same
 * deformation bit for bit.  MN_ERR_ARG for negative or non-finite strengths, a rotation over 180 degrees, a scale
 * of 1 or more, or an elastic grid below 2 (or above 64); MN_ERR_MEM.  Not collective. */
mn_err mn_deform_draw(const mn_deform_params *p, uint64_t seed, uint64_t stream, mn_deform *d);

/* A deformation of exactly the given affine part (M, t), no elastic part, no intensity change (for tests and
 * callers that want a known transform).  Cannot fail. */
void mn_deform_affine(const double m[3][3], const double t[3], mn_deform *d);

/* Release d->disp and clear d.  Accepts a cleared deformation. */
void mn_deform_free(mn_deform *d);

/* A source volume: float voxels, i fastest (NIfTI order), and its affine. */
typedef struct mn_deform_src {
    const float *data;
    int64_t dim[3];
    double affine[4][4];
} mn_deform_src;

/* Apply d onto the output grid (out_dim, out_affine).  img (may have data NULL: no image) is sampled trilinearly
 * into out_img (out_dim voxels, overwritten), lab (may have data NULL) by nearest neighbour into out_lab.  The
 * intensity change is applied to the image (m = the largest |value| of img).  MN_ERR_ARG for a singular source
 * affine or a NULL output with its source given.  Not collective. */
mn_err mn_deform_apply(const mn_deform *d, const int64_t out_dim[3], const double out_affine[4][4],
                       const mn_deform_src *img, float *out_img, const mn_deform_src *lab, float *out_lab);

/* The output grid with voxels of `spacing` mm (spacing <= 0: the source grid itself) over the field of view of a
 * source grid: each axis's column of the affine rescaled to length `spacing`, as many voxels as cover the source's
 * extent (at least 1), the first voxel's corner on the source's first corner.  Not collective. */
void mn_deform_grid(const int64_t src_dim[3], const double src_affine[4][4], double spacing, int64_t out_dim[3],
                    double out_affine[4][4]);

#endif
