/* nifti.h: reading 3-D NIfTI volumes (.nii, .nii.gz) through libnifti into float arrays with their affine.
 *
 * A volume is a float array in NIfTI storage order (i fastest, then j, then k) with the 4x4 affine that maps a
 * voxel index (i, j, k, 1) to world millimetres in the RAS+ convention of NIfTI.  Every on-disk voxel type that
 * medical data uses (uint8, int8, int16, uint16, int32, uint32, float32, float64) is converted to float after
 * applying scl_slope/scl_inter (a zero or non-finite slope means "no scaling", as the NIfTI standard says).
 *
 * Affine choice: the sform when sform_code > 0, else the qform when qform_code > 0, else the pixdim diagonal
 * (NIfTI's "method 1", for files that declare no space); `mn_nifti_info.affine_source` says which was used.
 * Files with more than three non-trivial dimensions (4-D time series, vector images) are rejected, as are
 * ANALYZE 7.5 headers (a 348-byte header whose NIfTI magic is missing or wrong).
 *
 * Nothing here touches MPI.  Errors name the file and what was expected versus found.
 */
#ifndef MEDNET_NIFTI_H
#define MEDNET_NIFTI_H

#include <stdint.h>
#include "mednet/error.h"

/* A 3-D scalar volume.  data holds dim[0]*dim[1]*dim[2] floats, voxel (i,j,k) at i + dim[0]*(j + dim[1]*k).
 * Owned by the volume: release with mn_volume_free. */
typedef struct mn_volume {
    int64_t dim[3];        /* nx, ny, nz */
    double affine[4][4];   /* voxel (i,j,k,1) -> world (x,y,z,1) in mm */
    float *data;           /* NULL after a header-only read */
} mn_volume;

/* What the file said, for provenance attributes and messages. */
typedef struct mn_nifti_info {
    int datatype;              /* NIfTI DT_* code */
    char dtype[16];            /* "uint8", "float32", ... */
    double scl_slope, scl_inter;
    int qform_code, sform_code;
    char affine_source[8];     /* "sform", "qform" or "pixdim" */
    int64_t file_bytes;        /* size of the file on disk */
    uint32_t crc32;            /* zlib CRC-32 of the file bytes (0 after a header-only read) */
} mn_nifti_info;

/* Read a 3-D NIfTI file (header and voxels) into *vol (data converted to float) and fill *info (may be NULL).
 * Errors: MN_ERR_IO (missing/unreadable file), MN_ERR_FORMAT (wrong magic, 4-D, unsupported voxel type,
 * truncated or corrupt data), MN_ERR_MEM.  On error *vol is left empty (data NULL).  Not collective. */
mn_err mn_nifti_read(const char *path, mn_volume *vol, mn_nifti_info *info);

/* As mn_nifti_read, but only the header: vol->data stays NULL and info->crc32 is 0.  Cheap (used to compute the
 * per-dataset median spacing before any voxel is read).  Not collective. */
mn_err mn_nifti_read_header(const char *path, mn_volume *vol, mn_nifti_info *info);

/* Write voxels on the grid of the NIfTI file `like`, keeping its header: dimensions, pixdim and units, sform and
 * qform with their codes, description and extensions (so the output overlays the input in any viewer).  The voxel
 * type becomes `datatype` (DT_UINT8 or DT_FLOAT32) without scaling (scl_slope 1, scl_inter 0), with `intent`
 * (e.g. NIFTI_INTENT_LABEL, or 0) and display range [cal_min, cal_max].  nt == 1 writes a 3-D volume, nt > 1 a 4-D
 * one (dim[4] = nt, e.g. one probability map per class).  data holds nt * voxels of `like`, NIfTI order.  `path` must
 * end in .nii or .nii.gz (compressed).  Atomic (mednet/fileio.h): written under a temporary name, read back to check
 * that every byte arrived (libnifti's writer reports nothing), fsync'ed, renamed; on error nothing at `path` changes.
 * Errors: MN_ERR_ARG (bad name or type), MN_ERR_IO naming the file.  Not collective. */
mn_err mn_nifti_write_like(const char *like, const char *path, int datatype, int64_t nt, const void *data, int intent,
                           double cal_min, double cal_max);

/* As mn_nifti_write_like, on another grid: dim (nx, ny, nz) voxels whose affine (voxel -> world mm) is `affine`,
 * written as the sform (when `like` has one) and as the qform (its nearest rigid-plus-scale form), voxel sizes from
 * the affine's columns; everything else of `like`'s header is kept.  dim and affine NULL: `like`'s own grid (this is
 * mn_nifti_write_like).  Same errors, atomicity and check; MN_ERR_ARG for a grid out of range.  Not collective. */
mn_err mn_nifti_write_grid(const char *like, const char *path, const int64_t dim[3], const double affine[4][4],
                           int datatype, int64_t nt, const void *data, int intent, double cal_min, double cal_max);

/* Free the voxels of a volume (accepts an empty volume) and clear it. */
void mn_volume_free(mn_volume *vol);

/* Number of voxels. */
static inline int64_t mn_volume_voxels(const mn_volume *vol) { return vol->dim[0] * vol->dim[1] * vol->dim[2]; }

/* Size in bytes and zlib CRC-32 of a whole file (streamed).  MN_ERR_IO naming the file on failure. */
mn_err mn_file_crc32(const char *path, int64_t *bytes, uint32_t *crc);

#endif
