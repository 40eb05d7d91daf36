/* corpus_h5.c: checked HDF5 attribute helpers, the file-access policy of corpus files and the agreed check that
 * precedes every collective open.
 *
 * Strings are stored as fixed-length, NUL-terminated HDF5 strings (variable-length strings would go through
 * the global heap, which parallel HDF5 writes less reliably); h5py returns them as bytes and h5dump prints them.
 *
 * The open check uses plain POSIX calls, not H5Fis_accessible: with the MPI-IO driver that call opens the file
 * collectively itself, which is the very wait we must avoid when one rank cannot see the file.
 */
#include "corpus_impl.h"
#include "mednet/mpicheck.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

mn_err mn_mpiio_hints_parse(const char *text, const char *origin, MPI_Info *info)
{
    if (info) *info = MPI_INFO_NULL;
    if (!text || !*text) return MN_OK;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", text);
    if (info) MN_CHECK(MPI_Info_create(info) == MPI_SUCCESS, MN_ERR_MPI, "MPI_Info_create failed");
    char *save = NULL;
    for (char *pair = strtok_r(buf, ",", &save); pair; pair = strtok_r(NULL, ",", &save)) {
        while (*pair == ' ' || *pair == '\t') pair++;
        char *eq = strchr(pair, '='), *end = pair + strlen(pair);
        while (end > pair && (end[-1] == ' ' || end[-1] == '\t')) *--end = 0;
        if (!*pair) continue;
        char *k = pair, *v = eq ? eq + 1 : NULL;
        if (eq) {
            char *ke = eq;
            while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t')) ke--;
            *ke = 0;
            while (*v == ' ' || *v == '\t') v++;
        }
        if (!eq || !*k || !*v) {
            if (info) MPI_Info_free(info);
            MN_FAIL(MN_ERR_CONFIG, "config %s: mpiio_hints: '%s' is not key=value (expected e.g. "
                    "\"striping_factor=16, romio_cb_write=enable\")", origin, pair);
        }
        if (info && MPI_Info_set(*info, k, v) != MPI_SUCCESS) {
            MPI_Info_free(info);
            MN_FAIL(MN_ERR_MPI, "MPI_Info_set(%s, %s) failed", k, v);
        }
    }
    return MN_OK;
}

mn_err mn_corpus_fapl(MPI_Comm comm, int coll_metadata, const char *hints, hid_t *fapl)
{
    hid_t p;
    MN_H5(p = H5Pcreate(H5P_FILE_ACCESS));
    *fapl = p;
    if (comm != MPI_COMM_NULL) {
        MPI_Info info = MPI_INFO_NULL;
        MN_CALL(mn_mpiio_hints_parse(hints, "(MPI-IO hints)", &info));
        herr_t r = H5Pset_fapl_mpio(p, comm, info); /* HDF5 keeps its own copy of the info */
        if (info != MPI_INFO_NULL) MPI_Info_free(&info);
        MN_H5(r);
        if (coll_metadata) {
            MN_H5(H5Pset_all_coll_metadata_ops(p, 1));
            MN_H5(H5Pset_coll_metadata_write(p, 1));
        }
    }
    if (!getenv("HDF5_USE_FILE_LOCKING")) MN_H5(H5Pset_file_locking(p, 0, 1));
    return MN_OK;
}

void mn_corpus_chunk_rule(const int64_t shape[3], const int64_t stored[3], int64_t out[3])
{
    for (int a = 0; a < 3; a++) {
        int64_t n = (shape[a] + 31) / 32;
        out[a] = stored[a] > 0 ? stored[a] : (shape[a] + n - 1) / n;
    }
}

/* Why a rank cannot read the corpus, sent to rank 0 with the data: 0 = it can, > 0 an errno value, or one of: */
enum { WHY_NOT_HDF5 = -1, WHY_SIZE = -2, WHY_MEM = -3 };

static const char *why_text(int why)
{
    switch (why) {
    case WHY_NOT_HDF5: return "not an HDF5 file";
    case WHY_SIZE: return "a different file size than rank 0 (not the same file)";
    case WHY_MEM: return "out of memory";
    default: return strerror(why);
    }
}

/* Not collective: can this rank open `path` and find the HDF5 signature?  *bytes = the file size (-1 on failure),
 * *why as above. */
static mn_err readable_local(const char *path, long long *bytes, int *why)
{
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    *bytes = -1, *why = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        *why = errno;
        MN_FAIL(MN_ERR_IO, "corpus file '%s' does not exist or is not readable on this rank: %s\n---> HINT: check "
                "the path as this node sees it (build the corpus with `mednet prep CONFIG`)", path, strerror(*why));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
        *why = S_ISDIR(st.st_mode) ? EISDIR : errno;
        close(fd);
        MN_FAIL(MN_ERR_IO, "corpus file '%s' cannot be read on this rank: %s", path, strerror(*why));
    }
    /* The superblock sits at 0 or, after a user block, at 512, 1024, 2048, ... (the HDF5 file format). */
    int found = 0;
    for (off_t off = 0; !found && off + 8 <= st.st_size; off = off ? 2 * off : 512) {
        unsigned char b[8];
        ssize_t n = pread(fd, b, sizeof b, off);
        if (n < 0) {
            *why = errno;
            close(fd);
            MN_FAIL(MN_ERR_IO, "corpus file '%s' cannot be read on this rank: %s", path, strerror(*why));
        }
        found = n == (ssize_t)sizeof b && !memcmp(b, sig, sizeof sig);
    }
    close(fd);
    if (!found) {
        *why = WHY_NOT_HDF5;
        MN_FAIL(MN_ERR_FORMAT, "corpus file '%s' (%lld bytes on this rank) is not an HDF5 file: no HDF5 signature found\n---> "
                "HINT: a corpus is written by `mednet prep CONFIG`", path, (long long)st.st_size);
    }
    *bytes = (long long)st.st_size;
    return MN_OK;
}

mn_err mn_corpus_check_readable(MPI_Comm comm, const char *path)
{
    int rank = 0, size = 1;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    MN_MPI(MPI_Comm_size(comm, &size));
    /* Local work: the POSIX check, and rank 0's buffer for the reasons (allocated now so that the gather below is
     * made by every rank or by none). */
    long long bytes = -1, bytes0;
    int why = 0;
    int *whys = rank == 0 ? malloc((size_t)size * 2 * sizeof *whys) : NULL;
    mn_err local = readable_local(path, &bytes, &why);
    if (!local && rank == 0 && !whys) {
        why = WHY_MEM;
        local = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    /* Every rank reaches the broadcast, whatever its check found. */
    bytes0 = bytes;
    int rc = MPI_Bcast(&bytes0, 1, MPI_LONG_LONG, 0, comm);
    if (rc != MPI_SUCCESS) {
        free(whys);
        return mn_mpi_report(rc, "MPI_Bcast(file size)", __FILE__, __LINE__, __func__);
    }
    if (!local && bytes0 >= 0 && bytes != bytes0) {
        why = WHY_SIZE;
        local = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "corpus file '%s' has %lld bytes on this "
                                "rank but %lld on rank 0: the ranks do not see the same file (a stale copy, or "
                                "one still being written?)", path, bytes, bytes0);
    }
    mn_err e = mn_agree(comm, local);
    if (e == MN_OK) {
        free(whys);
        return MN_OK;
    }
    /* Agreed failure: every rank knows, so one more collective is safe.  Rank 0 lists the failing ranks (as world
     * ranks, the numbers in front of every message) with their reasons. */
    int mine[2] = {local ? why : 0, rank};
    MPI_Group g = MPI_GROUP_NULL, gw = MPI_GROUP_NULL;
    if (MPI_Comm_group(comm, &g) == MPI_SUCCESS && MPI_Comm_group(MPI_COMM_WORLD, &gw) == MPI_SUCCESS)
        MPI_Group_translate_ranks(g, 1, &rank, gw, &mine[1]);
    if (g != MPI_GROUP_NULL) MPI_Group_free(&g);
    if (gw != MPI_GROUP_NULL) MPI_Group_free(&gw);
    rc = MPI_Gather(mine, 2, MPI_INT, whys, 2, MPI_INT, 0, comm);
    if (rc == MPI_SUCCESS && rank == 0 && whys) {
        char list[512] = "";
        size_t len = 0;
        int nbad = 0;
        for (int r = 0; r < size; r++) {
            if (!whys[2 * r]) continue;
            if (nbad++ < 8 && len < sizeof list)
                len += (size_t)snprintf(list + len, sizeof list - len, "%srank %d: %s", nbad > 1 ? "; " : "",
                                        whys[2 * r + 1], why_text(whys[2 * r]));
        }
        if (nbad > 8 && len < sizeof list) snprintf(list + len, sizeof list - len, "; ...");
        mn_error_report(mn_err_code(e), __FILE__, __LINE__, __func__, "the corpus file cannot be opened on %d of %d "
                        "rank(s) (each printed its path above): %s", nbad, size, list);
    }
    free(whys);
    if (rc != MPI_SUCCESS) return mn_mpi_report(rc, "MPI_Gather(open check)", __FILE__, __LINE__, __func__);
    return e;
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

mn_err mn_h5_attr_i32(hid_t loc, const char *name, int32_t v)
{
    MN_CALL(write_attr(loc, name, H5T_NATIVE_INT32, 0, NULL, &v));
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

mn_err mn_h5_read_i32(hid_t loc, const char *name, int32_t *v, const char *what)
{
    MN_CALL(read_attr(loc, name, H5T_NATIVE_INT32, 1, v, what));
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
