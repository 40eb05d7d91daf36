/* nifti.c: 3-D NIfTI reading on top of libnifti (nifti2_io, which reads NIfTI-1 and NIfTI-2, plain or gzipped).
 *
 * libnifti does the parsing, byte swapping and decompression; this file adds what mednet needs around it:
 * - a magic check of its own before libnifti sees the file (zlib's gzread reads plain and gzipped files alike),
 *   because libnifti silently falls back to ANALYZE 7.5 for a 348-byte header without the NIfTI magic, and a
 *   check of dim[0] (libnifti overruns its stack on some headers with dim[0] outside 1..7);
 * - the header is read first and checked (3-D only, known voxel type), then the voxels are read by us through
 *   zlib (libnifti's loader silently turns NaN/Inf floats into 0, hiding corrupt voxels), so that a truncated
 *   .nii.gz is reported as such and NaNs survive to the validation of prep;
 * - conversion of every voxel type to float with scl_slope/scl_inter, and the affine choice (sform > qform >
 *   pixdim) documented in nifti.h.
 * libnifti's own stderr chatter is switched off (debug level 0): every failure is reported once, by us.
 */
#include "mednet/nifti.h"
#include "mednet/limits.h"

#include "mednet/fileio.h"

#include <errno.h>
#include <math.h>
#include <nifti2_io.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

void mn_volume_free(mn_volume *vol)
{
    if (!vol) return;
    free(vol->data);
    memset(vol, 0, sizeof *vol);
}

mn_err mn_file_crc32(const char *path, int64_t *bytes, uint32_t *crc)
{
    FILE *f = fopen(path, "rb");
    MN_CHECK(f, MN_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    static _Thread_local unsigned char buf[1 << 16];
    uLong c = crc32(0L, Z_NULL, 0);
    int64_t n = 0;
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
        c = crc32(c, buf, (uInt)got);
        n += (int64_t)got;
    }
    int bad = ferror(f);
    fclose(f);
    MN_CHECK(!bad, MN_ERR_IO, "read error on '%s'", path);
    *bytes = n;
    *crc = (uint32_t)c;
    return MN_OK;
}

/* Check that the file starts with a NIfTI-1 or NIfTI-2 header (either byte order), through zlib so that .nii.gz
 * and .nii are treated alike.  Gives MN_ERR_IO for a missing file, MN_ERR_FORMAT for anything else. */
static mn_err check_magic(const char *path)
{
    struct stat st;
    MN_CHECK(stat(path, &st) == 0, MN_ERR_IO, "cannot open NIfTI file '%s': %s", path, strerror(errno));
    MN_CHECK(S_ISREG(st.st_mode), MN_ERR_IO, "NIfTI path '%s' is not a regular file", path);
    gzFile g = gzopen(path, "rb");
    MN_CHECK(g, MN_ERR_IO, "cannot open NIfTI file '%s': %s", path, strerror(errno));
    unsigned char h[548];
    int got = gzread(g, h, sizeof h);
    gzclose(g);
    MN_CHECK(got >= 348, MN_ERR_FORMAT,
             "'%s' is not a NIfTI file: %d header bytes readable, expected at least 348 (truncated or corrupt?)",
             path, got < 0 ? 0 : got);
    int32_t le = h[0] | h[1] << 8 | h[2] << 16 | (int32_t)((uint32_t)h[3] << 24);
    int32_t be = h[3] | h[2] << 8 | h[1] << 16 | (int32_t)((uint32_t)h[0] << 24);
    int32_t size = (le == 348 || le == 540) ? le : be;
    int swap = !(le == 348 || le == 540);
    /* dim[0] (an int16 at byte 40 in NIfTI-1, an int64 at byte 16 in NIfTI-2) must be 1..7 in the file's byte
     * order: libnifti guesses the byte order from it and indexes its 8-entry dim arrays with it, and a header that
     * passes its guess with an out-of-range dim[0] overruns its stack. */
    int64_t ndim = 0;
    if (size == 348 || (size == 540 && got >= 540)) {
        int off = size == 348 ? 40 : 16, width = size == 348 ? 2 : 8;
        uint64_t v = 0;
        for (int i = 0; i < width; i++) v |= (uint64_t)h[off + (swap ? width - 1 - i : i)] << (8 * i);
        ndim = width == 2 ? (int16_t)v : (int64_t)v;
        MN_CHECK(ndim >= 1 && ndim <= 7, MN_ERR_FORMAT,
                 "'%s': corrupt NIfTI-%d header: dim[0] (the number of dimensions) is %lld, expected 1 to 7",
                 path, size == 348 ? 1 : 2, (long long)ndim);
    }
    if (size == 348) {
        const char *m = (const char *)h + 344;
        MN_CHECK(!memcmp(m, "n+1\0", 4) || !memcmp(m, "ni1\0", 4), MN_ERR_FORMAT,
                 "'%s': wrong NIfTI-1 magic at byte 344 (expected \"n+1\" or \"ni1\", found %02x %02x %02x %02x): "
                 "not a NIfTI file (ANALYZE 7.5 headers are not accepted)",
                 path, h[344], h[345], h[346], h[347]);
        return MN_OK;
    }
    if (size == 540) {
        MN_CHECK(got >= 540, MN_ERR_FORMAT, "'%s': NIfTI-2 header truncated (%d of 540 bytes)", path, got);
        const char *m = (const char *)h + 4;
        MN_CHECK(!memcmp(m, "n+2\0", 4) || !memcmp(m, "ni2\0", 4), MN_ERR_FORMAT,
                 "'%s': wrong NIfTI-2 magic at byte 4 (expected \"n+2\" or \"ni2\")", path);
        return MN_OK;
    }
    MN_FAIL(MN_ERR_FORMAT, "'%s' is not a NIfTI file: header size field is %d, expected 348 (NIfTI-1) or 540 "
                           "(NIfTI-2)", path, (int)le);
}

static const char *dtype_name(int dt)
{
    switch (dt) {
    case DT_UINT8: return "uint8";
    case DT_INT8: return "int8";
    case DT_INT16: return "int16";
    case DT_UINT16: return "uint16";
    case DT_INT32: return "int32";
    case DT_UINT32: return "uint32";
    case DT_FLOAT32: return "float32";
    case DT_FLOAT64: return "float64";
    default: return NULL;
    }
}

static int dtype_bytes(int dt)
{
    switch (dt) {
    case DT_UINT8: case DT_INT8: return 1;
    case DT_INT16: case DT_UINT16: return 2;
    case DT_INT32: case DT_UINT32: case DT_FLOAT32: return 4;
    case DT_FLOAT64: return 8;
    default: return 0;
    }
}

/* Open the header with libnifti and check it: 3-D, supported type.  Fills vol (no data) and info. */
static mn_err open_header(const char *path, nifti_image **out, mn_volume *vol, mn_nifti_info *info)
{
    *out = NULL;
    MN_CALL(check_magic(path));
    nifti_set_debug_level(0);
    nifti_image *nim = nifti_image_read(path, 0);
    MN_CHECK(nim, MN_ERR_FORMAT, "libnifti cannot read the header of '%s' (corrupt or truncated file)", path);
    mn_err err = MN_OK;
    int64_t extra = 1;
    for (int d = 4; d <= nim->dim[0] && d <= 7 && extra == 1; d++) extra = nim->dim[d] > 1 ? nim->dim[d] : 1;
    const char *dt = dtype_name(nim->datatype);
    if (nim->dim[0] < 3 || nim->nx < 1 || nim->ny < 1 || nim->nz < 1) {
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                              "'%s' has %d dimension(s) (%lldx%lldx%lld): mednet needs a 3-D volume", path,
                              (int)nim->dim[0], (long long)nim->nx, (long long)nim->ny, (long long)nim->nz);
    } else if (extra > 1) {
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                              "'%s' is a %dD image (dim = %lld %lld %lld %lld ...): mednet needs a 3-D volume; "
                              "split the 4-D series into 3-D files first",
                              path, (int)nim->dim[0], (long long)nim->dim[1], (long long)nim->dim[2],
                              (long long)nim->dim[3], (long long)nim->dim[4]);
    } else if (nim->nx > MN_MAX_VOLUME_EXTENT || nim->ny > MN_MAX_VOLUME_EXTENT || nim->nz > MN_MAX_VOLUME_EXTENT ||
               nim->nx * nim->ny * nim->nz > MN_MAX_VOLUME_VOXELS) {
        /* Each extent is at most 2^20, so the product cannot overflow. */
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                              "'%s' claims %lldx%lldx%lld voxels: more than mednet's limit of %lld voxels per "
                              "volume (or %lld per axis); refused before reading (corrupt header?)", path,
                              (long long)nim->nx, (long long)nim->ny, (long long)nim->nz,
                              (long long)MN_MAX_VOLUME_VOXELS, (long long)MN_MAX_VOLUME_EXTENT);
    } else if (!dt) {
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                              "'%s' has voxel type %s (code %d): expected uint8, int8, int16, uint16, int32, "
                              "uint32, float32 or float64", path, nifti_datatype_string(nim->datatype),
                              nim->datatype);
    } else if (nim->nvox != nim->nx * nim->ny * nim->nz || nim->nbyper != dtype_bytes(nim->datatype)) {
        /* The voxel reader sizes its buffer from nvox and nbyper and the conversion walks nx*ny*nz voxels of the
         * declared type: they must agree. */
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                              "'%s': inconsistent header (%lld voxels of %d bytes for a %lldx%lldx%lld %s volume)",
                              path, (long long)nim->nvox, nim->nbyper, (long long)nim->nx, (long long)nim->ny,
                              (long long)nim->nz, dt);
    }
    if (err) {
        nifti_image_free(nim);
        return err;
    }
    memset(vol, 0, sizeof *vol);
    vol->dim[0] = nim->nx, vol->dim[1] = nim->ny, vol->dim[2] = nim->nz;
    const nifti_dmat44 *m;
    const char *src;
    double pix[4][4] = {{0}};
    if (nim->sform_code > 0) {
        m = &nim->sto_xyz, src = "sform";
    } else if (nim->qform_code > 0) {
        m = &nim->qto_xyz, src = "qform";
    } else {
        /* Method 1 of the NIfTI standard: no declared space, scale by the voxel sizes only. */
        pix[0][0] = nim->dx > 0 ? nim->dx : 1, pix[1][1] = nim->dy > 0 ? nim->dy : 1;
        pix[2][2] = nim->dz > 0 ? nim->dz : 1, pix[3][3] = 1;
        m = NULL, src = "pixdim";
    }
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) vol->affine[r][c] = m ? m->m[r][c] : pix[r][c];
    vol->affine[3][0] = vol->affine[3][1] = vol->affine[3][2] = 0, vol->affine[3][3] = 1;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            if (!isfinite(vol->affine[r][c])) {
                nifti_image_free(nim);
                MN_FAIL(MN_ERR_FORMAT, "'%s': the %s affine has a non-finite entry", path, src);
            }
    if (info) {
        memset(info, 0, sizeof *info);
        info->datatype = nim->datatype;
        snprintf(info->dtype, sizeof info->dtype, "%s", dt);
        info->scl_slope = nim->scl_slope, info->scl_inter = nim->scl_inter;
        info->qform_code = nim->qform_code, info->sform_code = nim->sform_code;
        snprintf(info->affine_source, sizeof info->affine_source, "%s", src);
        struct stat st;
        info->file_bytes = stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
    }
    *out = nim;
    return MN_OK;
}

mn_err mn_nifti_read_header(const char *path, mn_volume *vol, mn_nifti_info *info)
{
    nifti_image *nim = NULL;
    MN_CALL(open_header(path, &nim, vol, info));
    nifti_image_free(nim);
    return MN_OK;
}

/* Convert n voxels of type dt to float with y = slope*x + inter. */
static void convert(const void *src, int dt, int64_t n, double slope, double inter, float *dst)
{
#define CONV(T)                                                                     \
    do {                                                                            \
        const T *s = src;                                                           \
        for (int64_t i = 0; i < n; i++) dst[i] = (float)(slope * (double)s[i] + inter); \
    } while (0)
    switch (dt) {
    case DT_UINT8: CONV(uint8_t); break;
    case DT_INT8: CONV(int8_t); break;
    case DT_INT16: CONV(int16_t); break;
    case DT_UINT16: CONV(uint16_t); break;
    case DT_INT32: CONV(int32_t); break;
    case DT_UINT32: CONV(uint32_t); break;
    case DT_FLOAT32: CONV(float); break;
    case DT_FLOAT64: CONV(double); break;
    default: break; /* excluded by open_header */
    }
#undef CONV
}

/* An uncompressed file must hold the voxels its header claims: checked against the file size before the buffer is
 * allocated (a gzipped file cannot be sized without decompressing it; MN_MAX_VOLUME_VOXELS bounds it instead). */
static mn_err check_data_size(const char *path, const nifti_image *nim, int64_t bytes)
{
    const char *iname = nim->iname ? nim->iname : path;
    gzFile g = gzopen(iname, "rb");
    if (!g) return MN_OK; /* reported by the reader */
    int direct = gzdirect(g);
    gzclose(g);
    struct stat st;
    if (!direct || stat(iname, &st) != 0) return MN_OK;
    MN_CHECK((int64_t)nim->iname_offset >= 0 && (int64_t)nim->iname_offset + bytes <= (int64_t)st.st_size,
             MN_ERR_FORMAT, "'%s': the header claims %lld bytes of voxel data from byte %lld, but '%s' has %lld "
             "bytes: file truncated or header corrupt", path, (long long)bytes, (long long)nim->iname_offset, iname,
             (long long)st.st_size);
    return MN_OK;
}

/* Read the nvox*nbyper voxel bytes ourselves (zlib reads .nii and .nii.gz alike) and swap them to the CPU's byte
 * order.  Not nifti_image_load: libnifti silently replaces NaN/Inf floats with 0, which would hide exactly the
 * corrupt voxels that prep must reject. */
static mn_err load_voxels(const char *path, const nifti_image *nim, void **out)
{
    *out = NULL;
    int64_t bytes = nim->nvox * nim->nbyper;
    MN_CALL(check_data_size(path, nim, bytes));
    unsigned char *buf = malloc((size_t)(bytes ? bytes : 1));
    MN_CHECK(buf, MN_ERR_MEM, "out of memory for %lld bytes of voxels of '%s'", (long long)bytes, path);
    const char *iname = nim->iname ? nim->iname : path;
    gzFile g = gzopen(iname, "rb");
    if (!g) {
        free(buf);
        MN_FAIL(MN_ERR_IO, "cannot open the voxel data of '%s' ('%s'): %s", path, iname, strerror(errno));
    }
    int64_t got = 0;
    int ok = gzseek(g, (z_off_t)nim->iname_offset, SEEK_SET) == (z_off_t)nim->iname_offset;
    while (ok && got < bytes) {
        int64_t want = bytes - got > (1 << 30) ? (1 << 30) : bytes - got;
        int r = gzread(g, buf + got, (unsigned)want);
        if (r <= 0) break;
        got += r;
    }
    gzclose(g);
    if (!ok || got < bytes) {
        free(buf);
        MN_FAIL(MN_ERR_FORMAT, "'%s': only %lld of the %lld bytes of voxel data could be read: file truncated or "
                "corrupt", path, (long long)(ok ? got : 0), (long long)bytes);
    }
    if (nim->nbyper > 1 && nim->byteorder != nifti_short_order()) nifti_swap_Nbytes(nim->nvox, nim->nbyper, buf);
    *out = buf;
    return MN_OK;
}

mn_err mn_nifti_read(const char *path, mn_volume *vol, mn_nifti_info *info)
{
    nifti_image *nim = NULL;
    mn_nifti_info local;
    if (!info) info = &local;
    MN_CALL(open_header(path, &nim, vol, info));
    void *raw = NULL;
    mn_err e = load_voxels(path, nim, &raw);
    if (e) {
        nifti_image_free(nim);
        memset(vol, 0, sizeof *vol);
        MN_CHECK(!e, e, "called from load_voxels");
    }
    int64_t n = mn_volume_voxels(vol);
    vol->data = malloc((size_t)n * sizeof(float));
    if (!vol->data) {
        free(raw);
        nifti_image_free(nim);
        MN_FAIL(MN_ERR_MEM, "out of memory for %lld voxels of '%s'", (long long)n, path);
    }
    double slope = nim->scl_slope, inter = nim->scl_inter;
    if (slope == 0 || !isfinite(slope) || !isfinite(inter)) slope = 1, inter = 0;
    convert(raw, nim->datatype, n, slope, inter, vol->data);
    free(raw);
    nifti_image_free(nim);
    e = mn_file_crc32(path, &info->file_bytes, &info->crc32);
    if (e) {
        mn_volume_free(vol);
        MN_CHECK(!e, e, "called from mn_file_crc32");
    }
    return MN_OK;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* Decompressed length of a file (zlib reads plain files as they are); -1 on a read error. */
static int64_t gz_length(const char *path)
{
    gzFile g = gzopen(path, "rb");
    if (!g) return -1;
    static _Thread_local unsigned char buf[1 << 16];
    int64_t n = 0;
    int r;
    while ((r = gzread(g, buf, sizeof buf)) > 0) n += r;
    int bad = r < 0;
    gzclose(g);
    return bad ? -1 : n;
}

mn_err mn_nifti_write_like(const char *like, const char *path, int datatype, int64_t nt, const void *data, int intent,
                           double cal_min, double cal_max)
{
    return mn_nifti_write_grid(like, path, NULL, NULL, datatype, nt, data, intent, cal_min, cal_max);
}

/* The header of `like` moved onto another grid: dimensions, voxel sizes (the affine's column norms), sform and
 * qform from `affine` (the codes of `like`; a file that declared neither gets scanner-anatomical qform). */
static void set_grid(nifti_image *nim, const int64_t dim[3], const double affine[4][4])
{
    nifti_dmat44 m;
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) m.m[r][c] = affine[r][c];
    nim->nx = nim->dim[1] = dim[0], nim->ny = nim->dim[2] = dim[1], nim->nz = nim->dim[3] = dim[2];
    double qb, qc, qd, qx, qy, qz, dx, dy, dz, qfac;
    nifti_dmat44_to_quatern(m, &qb, &qc, &qd, &qx, &qy, &qz, &dx, &dy, &dz, &qfac);
    nim->dx = nim->pixdim[1] = dx, nim->dy = nim->pixdim[2] = dy, nim->dz = nim->pixdim[3] = dz;
    nim->quatern_b = qb, nim->quatern_c = qc, nim->quatern_d = qd;
    nim->qoffset_x = qx, nim->qoffset_y = qy, nim->qoffset_z = qz, nim->qfac = qfac;
    if (nim->sform_code <= 0 && nim->qform_code <= 0) nim->qform_code = NIFTI_XFORM_SCANNER_ANAT;
    nim->qto_xyz = nifti_quatern_to_dmat44(qb, qc, qd, qx, qy, qz, dx, dy, dz, qfac);
    nim->qto_ijk = nifti_dmat44_inverse(nim->qto_xyz);
    if (nim->sform_code > 0) {
        nim->sto_xyz = m;
        nim->sto_ijk = nifti_dmat44_inverse(m);
    }
}

mn_err mn_nifti_write_grid(const char *like, const char *path, const int64_t dim[3], const double affine[4][4],
                           int datatype, int64_t nt, const void *data, int intent, double cal_min, double cal_max)
{
    MN_CHECK((dim == NULL) == (affine == NULL), MN_ERR_ARG, "output '%s': give both the grid and its affine, or "
             "neither", path);
    MN_CHECK(!dim || (dim[0] >= 1 && dim[1] >= 1 && dim[2] >= 1 && dim[0] <= MN_MAX_VOLUME_EXTENT &&
                      dim[1] <= MN_MAX_VOLUME_EXTENT && dim[2] <= MN_MAX_VOLUME_EXTENT),
             MN_ERR_ARG, "output '%s': grid %lldx%lldx%lld out of range", path, dim ? (long long)dim[0] : 0LL,
             dim ? (long long)dim[1] : 0LL, dim ? (long long)dim[2] : 0LL);
    MN_CHECK(ends_with(path, ".nii") || ends_with(path, ".nii.gz"), MN_ERR_ARG,
             "output '%s' must end in .nii or .nii.gz", path);
    MN_CHECK(datatype == DT_UINT8 || datatype == DT_FLOAT32, MN_ERR_ARG, "output '%s': voxel type %d not supported",
             path, datatype);
    MN_CHECK(nt >= 1, MN_ERR_ARG, "output '%s': %lld volumes", path, (long long)nt);
    mn_volume hv;
    nifti_image *nim = NULL;
    MN_CALL(open_header(like, &nim, &hv, NULL));
    /* The input's header, with the new voxel type and (for nt > 1) a fourth dimension. */
    nim->datatype = datatype;
    nim->nbyper = datatype == DT_UINT8 ? 1 : 4;
    nim->swapsize = nim->nbyper;
    nim->scl_slope = 1, nim->scl_inter = 0;
    nim->cal_min = cal_min, nim->cal_max = cal_max;
    nim->intent_code = intent, nim->intent_p1 = nim->intent_p2 = nim->intent_p3 = 0;
    nim->intent_name[0] = 0;
    if (dim) set_grid(nim, dim, affine);
    nim->ndim = nim->dim[0] = nt > 1 ? 4 : 3;
    nim->nt = nim->dim[4] = nt;
    nim->nu = nim->nv = nim->nw = nim->dim[5] = nim->dim[6] = nim->dim[7] = 1;
    if (nt > 1 && !(nim->dt > 0)) nim->dt = nim->pixdim[4] = 1;
    nim->nvox = nim->nx * nim->ny * nim->nz * nt;
    nim->byteorder = nifti_short_order();
    /* A two-file input (.hdr/.img) becomes one file; NIfTI-2 stays NIfTI-2. */
    if (nim->nifti_type == NIFTI_FTYPE_NIFTI1_2 || nim->nifti_type == NIFTI_FTYPE_ASCII)
        nim->nifti_type = NIFTI_FTYPE_NIFTI1_1;
    if (nim->nifti_type == NIFTI_FTYPE_NIFTI2_2) nim->nifti_type = NIFTI_FTYPE_NIFTI2_1;
    char tmp[4200];
    mn_err e = mn_tmp_path(path, tmp, sizeof tmp);
    if (!e && nifti_set_filenames(nim, tmp, 0, 1) != 0)
        e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "libnifti rejects the output name '%s'", tmp);
    if (!e) {
        nim->data = (void *)data;
        nifti_image_write(nim);
        nim->data = NULL;
        /* Every byte must be there: header, extensions and voxels (a full disk truncates silently). */
        int64_t want = (int64_t)nim->iname_offset + nim->nvox * nim->nbyper, got = gz_length(tmp);
        if (got < want || want <= 0)
            e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "writing '%s' failed: %lld of %lld bytes "
                                "written (disk full or not writable?)", path, (long long)(got < 0 ? 0 : got),
                                (long long)want);
    }
    nifti_image_free(nim);
    if (e) {
        unlink(tmp);
        return e;
    }
    MN_CALL(mn_commit_file(tmp, path));
    return MN_OK;
}
