/* test_nifti_util.h: writing synthetic NIfTI files for the corpus tests (through libnifti, so the files are
 * what any NIfTI writer would produce), and small file helpers for the bad-input tests. */
#ifndef MN_TEST_NIFTI_UTIL_H
#define MN_TEST_NIFTI_UTIL_H

#include <math.h>
#include <nifti2_io.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An affine as 3 rows of 4 (voxel (i,j,k,1) -> world). */
typedef double tn_affine[3][4];

/* Write a NIfTI-1 file (.nii or .nii.gz by the name).  dims: nx, ny, nz (nt > 1 makes it 4-D).  raw[] holds the
 * on-disk values (converted to `dt`).  sform/qform: NULL leaves that code at 0.  Returns 0 on success. */
static inline int tn_write(const char *path, const int64_t dims3[3], int64_t nt, int dt, const double *raw,
                           double slope, double inter, const tn_affine *sform, const tn_affine *qform)
{
    int64_t dims[8] = {nt > 1 ? 4 : 3, dims3[0], dims3[1], dims3[2], nt > 1 ? nt : 1, 1, 1, 1};
    nifti_image *nim = nifti_make_new_nim(dims, dt, 1);
    if (!nim) return 1;
    nim->nifti_type = NIFTI_FTYPE_NIFTI1_1;
    nim->scl_slope = slope;
    nim->scl_inter = inter;
    int64_t n = nim->nvox;
    for (int64_t i = 0; i < n; i++) {
        double v = raw[i];
        switch (dt) {
        case DT_UINT8: ((uint8_t *)nim->data)[i] = (uint8_t)v; break;
        case DT_INT8: ((int8_t *)nim->data)[i] = (int8_t)v; break;
        case DT_INT16: ((int16_t *)nim->data)[i] = (int16_t)v; break;
        case DT_UINT16: ((uint16_t *)nim->data)[i] = (uint16_t)v; break;
        case DT_INT32: ((int32_t *)nim->data)[i] = (int32_t)v; break;
        case DT_FLOAT32: ((float *)nim->data)[i] = (float)v; break;
        case DT_FLOAT64: ((double *)nim->data)[i] = v; break;
        default: nifti_image_free(nim); return 2;
        }
    }
    nim->qform_code = 0;
    nim->sform_code = 0;
    double dx = 1, dy = 1, dz = 1;
    if (qform) {
        nifti_dmat44 R;
        memset(&R, 0, sizeof R);
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++) R.m[r][c] = (*qform)[r][c];
        R.m[3][3] = 1;
        nifti_dmat44_to_quatern(R, &nim->quatern_b, &nim->quatern_c, &nim->quatern_d, &nim->qoffset_x,
                                &nim->qoffset_y, &nim->qoffset_z, &dx, &dy, &dz, &nim->qfac);
        nim->qform_code = 1;
        nim->qto_xyz = R;
    } else if (sform) {
        dx = sqrt((*sform)[0][0] * (*sform)[0][0] + (*sform)[1][0] * (*sform)[1][0] + (*sform)[2][0] * (*sform)[2][0]);
        dy = sqrt((*sform)[0][1] * (*sform)[0][1] + (*sform)[1][1] * (*sform)[1][1] + (*sform)[2][1] * (*sform)[2][1]);
        dz = sqrt((*sform)[0][2] * (*sform)[0][2] + (*sform)[1][2] * (*sform)[1][2] + (*sform)[2][2] * (*sform)[2][2]);
    }
    nim->dx = nim->pixdim[1] = dx;
    nim->dy = nim->pixdim[2] = dy;
    nim->dz = nim->pixdim[3] = dz;
    if (sform) {
        nim->sform_code = 2;
        memset(&nim->sto_xyz, 0, sizeof nim->sto_xyz);
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++) nim->sto_xyz.m[r][c] = (*sform)[r][c];
        nim->sto_xyz.m[3][3] = 1;
    }
    if (nifti_set_filenames(nim, path, 0, 1)) {
        nifti_image_free(nim);
        return 3;
    }
    nifti_image_write(nim);
    nifti_image_free(nim);
    FILE *f = fopen(path, "rb");
    if (!f) return 4;
    fclose(f);
    return 0;
}

/* Read a whole file into a malloc'd buffer. */
static inline unsigned char *tn_slurp(const char *path, long *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)*len + 1);
    if (b && fread(b, 1, (size_t)*len, f) != (size_t)*len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    return b;
}

/* Write len bytes to path. Returns 0 on success. */
static inline int tn_spit(const char *path, const unsigned char *b, long len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    size_t w = fwrite(b, 1, (size_t)len, f);
    fclose(f);
    return w == (size_t)len ? 0 : 1;
}

/* Copy the first `keep` bytes of src to dst (keep < 0: the whole file). */
static inline int tn_copy_prefix(const char *src, const char *dst, long keep)
{
    long len = 0;
    unsigned char *b = tn_slurp(src, &len);
    if (!b) return 1;
    int rc = tn_spit(dst, b, keep >= 0 && keep < len ? keep : len);
    free(b);
    return rc;
}

#endif
