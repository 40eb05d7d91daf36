/* corpus_h5.c: checked HDF5 attribute helpers and the file-access policy of corpus files.
 *
 * Strings are stored as fixed-length, NUL-terminated HDF5 strings (variable-length strings would go through
 * the global heap, which parallel HDF5 writes less reliably); h5py returns them as bytes and h5dump prints them.
 */
#include "corpus_impl.h"
#include "mednet/mpicheck.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

mn_err mn_corpus_fapl(MPI_Comm comm, hid_t *fapl)
{
    hid_t p;
    MN_H5(p = H5Pcreate(H5P_FILE_ACCESS));
    *fapl = p;
    if (comm != MPI_COMM_NULL) {
        MN_H5(H5Pset_fapl_mpio(p, comm, MPI_INFO_NULL));
        MN_H5(H5Pset_all_coll_metadata_ops(p, 1));
        MN_H5(H5Pset_coll_metadata_write(p, 1));
    }
    if (!getenv("HDF5_USE_FILE_LOCKING")) MN_H5(H5Pset_file_locking(p, 0, 1));
    return MN_OK;
}

static mn_err write_attr(hid_t loc, const char *name, hid_t type, int rank, const hsize_t *dims, const void *buf)
{
    hid_t space, attr;
    MN_H5(space = rank ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR));
    if ((attr = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT)) < 0) {
        H5Sclose(space);
        return mn_h5_report("H5Acreate2", __FILE__, __LINE__, __func__);
    }
    herr_t w = H5Awrite(attr, type, buf);
    herr_t c1 = H5Aclose(attr), c2 = H5Sclose(space);
    MN_CHECK(w >= 0 && c1 >= 0 && c2 >= 0, MN_ERR_HDF5, "writing attribute '%s' failed", name);
    return MN_OK;
}

mn_err mn_h5_attr_str(hid_t loc, const char *name, const char *value)
{
    hid_t t;
    MN_H5(t = H5Tcopy(H5T_C_S1));
    size_t n = strlen(value) + 1;
    mn_err e = H5Tset_size(t, n) < 0 ? MN_ERR_HDF5 : MN_OK;
    if (!e) e = H5Tset_strpad(t, H5T_STR_NULLTERM) < 0 ? MN_ERR_HDF5 : MN_OK;
    if (!e) e = write_attr(loc, name, t, 0, NULL, value);
    MN_H5(H5Tclose(t));
    MN_CHECK(!e, e, "string attribute '%s'", name);
    return MN_OK;
}

mn_err mn_h5_attr_strs(hid_t loc, const char *name, const char *values, int n, int stride)
{
    hid_t t;
    MN_H5(t = H5Tcopy(H5T_C_S1));
    hsize_t dims[1] = {(hsize_t)n};
    mn_err e = H5Tset_size(t, (size_t)stride) < 0 ? MN_ERR_HDF5 : MN_OK;
    if (!e) e = H5Tset_strpad(t, H5T_STR_NULLTERM) < 0 ? MN_ERR_HDF5 : MN_OK;
    if (!e) e = write_attr(loc, name, t, 1, dims, values);
    MN_H5(H5Tclose(t));
    MN_CHECK(!e, e, "string array attribute '%s'", name);
    return MN_OK;
}

mn_err mn_h5_attr_i64(hid_t loc, const char *name, const int64_t *v, int n)
{
    hsize_t dims[1] = {(hsize_t)n};
    MN_CALL(write_attr(loc, name, H5T_NATIVE_INT64, n == 1 ? 0 : 1, dims, v));
    return MN_OK;
}

mn_err mn_h5_attr_f64(hid_t loc, const char *name, const double *v, int n)
{
    hsize_t dims[1] = {(hsize_t)n};
    MN_CALL(write_attr(loc, name, H5T_NATIVE_DOUBLE, n == 1 ? 0 : 1, dims, v));
    return MN_OK;
}

mn_err mn_h5_attr_u32(hid_t loc, const char *name, uint32_t v)
{
    MN_CALL(write_attr(loc, name, H5T_NATIVE_UINT32, 0, NULL, &v));
    return MN_OK;
}

/* Open attribute `name`, check its element count, read it as `mem` type. */
static mn_err read_attr(hid_t loc, const char *name, hid_t mem, hssize_t n, void *buf, const char *what)
{
    htri_t ex = H5Aexists(loc, name);
    MN_CHECK(ex > 0, MN_ERR_FORMAT, "%s: attribute '%s' is missing (not a mednet corpus, or an edited one)", what,
             name);
    hid_t a, s;
    MN_H5(a = H5Aopen(loc, name, H5P_DEFAULT));
    if ((s = H5Aget_space(a)) < 0) {
        H5Aclose(a);
        return mn_h5_report("H5Aget_space", __FILE__, __LINE__, __func__);
    }
    hssize_t got = H5Sget_simple_extent_npoints(s);
    H5Sclose(s);
    if (got != n) {
        H5Aclose(a);
        MN_FAIL(MN_ERR_FORMAT, "%s: attribute '%s' has %lld element(s), expected %lld", what, name, (long long)got,
                (long long)n);
    }
    herr_t r = H5Aread(a, mem, buf);
    H5Aclose(a);
    MN_CHECK(r >= 0, MN_ERR_FORMAT, "%s: cannot read attribute '%s'", what, name);
    return MN_OK;
}

mn_err mn_h5_read_str(hid_t loc, const char *name, char *out, size_t cap, const char *what)
{
    hid_t t;
    MN_H5(t = H5Tcopy(H5T_C_S1));
    char *tmp = calloc(1, 4096);
    mn_err e = tmp ? MN_OK : MN_ERR_MEM;
    if (!e && (H5Tset_size(t, 4095) < 0)) e = MN_ERR_HDF5;
    if (!e) e = read_attr(loc, name, t, 1, tmp, what);
    H5Tclose(t);
    if (!e) snprintf(out, cap, "%s", tmp);
    free(tmp);
    MN_CHECK(!e, e, "%s: string attribute '%s'", what, name);
    return MN_OK;
}

mn_err mn_h5_read_strs(hid_t loc, const char *name, char *out, int n, int stride, const char *what)
{
    hid_t t;
    MN_H5(t = H5Tcopy(H5T_C_S1));
    mn_err e = H5Tset_size(t, (size_t)stride) < 0 ? MN_ERR_HDF5 : MN_OK;
    if (!e) e = read_attr(loc, name, t, n, out, what);
    H5Tclose(t);
    MN_CHECK(!e, e, "%s: string array attribute '%s'", what, name);
    for (int i = 0; i < n; i++) out[(size_t)i * (size_t)stride + (size_t)stride - 1] = 0;
    return MN_OK;
}

mn_err mn_h5_read_i64(hid_t loc, const char *name, int64_t *v, int n, const char *what)
{
    MN_CALL(read_attr(loc, name, H5T_NATIVE_INT64, n, v, what));
    return MN_OK;
}

mn_err mn_h5_read_f64(hid_t loc, const char *name, double *v, int n, const char *what)
{
    MN_CALL(read_attr(loc, name, H5T_NATIVE_DOUBLE, n, v, what));
    return MN_OK;
}

mn_err mn_h5_read_u32(hid_t loc, const char *name, uint32_t *v, const char *what)
{
    MN_CALL(read_attr(loc, name, H5T_NATIVE_UINT32, 1, v, what));
    return MN_OK;
}

uint32_t mn_corpus_data_crc(const float *image, const uint8_t *label, int64_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    const unsigned char *p = (const unsigned char *)image;
    int64_t bytes = n * (int64_t)sizeof(float);
    /* zlib's crc32 takes uInt lengths: feed in 1 GiB pieces. */
    for (int64_t o = 0; o < bytes; o += 1 << 30) c = crc32(c, p + o, (uInt)(bytes - o < (1 << 30) ? bytes - o : (1 << 30)));
    for (int64_t o = 0; o < n; o += 1 << 30) c = crc32(c, label + o, (uInt)(n - o < (1 << 30) ? n - o : (1 << 30)));
    return (uint32_t)c;
}
