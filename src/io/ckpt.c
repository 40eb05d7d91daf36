/* ckpt.c: atomic HDF5 checkpoints (protocol and layout in ckpt.h).
 *
 * One writer (rank 0) with the serial API of the parallel HDF5 library (default file driver): a checkpoint is a
 * few hundred MiB at most and a collective write would only add coordination.  Chosen alternatives and why:
 *   - fsync of the closed file by path (open O_RDONLY + fsync) rather than through H5Fget_vfd_handle: fsync acts
 *     on the inode, so it flushes the pages HDF5 wrote, without reaching into the driver;
 *   - `latest` is a one-line text file naming the checkpoint (not a symlink): it survives copying to file systems
 *     and object stores, and is rewritten by rename, which POSIX makes atomic;
 *   - chunked datasets with Fletcher-32, 4 Mi elements per chunk at most: damage is detected on read, at a cost
 *     far below the write itself;
 *   - libver bounds from 1.8 so that attributes larger than 64 KiB (long config texts) use dense storage.
 * HDF5 handles are released on every error path (goto out), so a failed write can be retried in the same run.
 */
#include "mednet/ckpt.h"
#include "mednet/fileio.h"
#include "mednet/h5check.h"
#include "mednet/limits.h"
#include "mednet/mem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CKPT_FORMAT_PREFIX "mednet-checkpoint-"
#define CKPT_FORMAT_VERSION 1
#define CKPT_FORMAT "mednet-checkpoint-1"
#define CKPT_CHUNK ((hsize_t)1 << 22)

struct mn_ckpt {
    hid_t fid;
    int64_t step;
    char path[4096];
};

/* Record an HDF5 failure (prints HDF5's stack) and jump to the cleanup label with err set. */
#define H5TRY(expr, ...)                                                                               \
    do {                                                                                                \
        if ((expr) < 0) {                                                                               \
            mn_h5_report(#expr, __FILE__, __LINE__, __func__);                                          \
            err = mn_error_report(MN_ERR_HDF5, __FILE__, __LINE__, __func__, __VA_ARGS__);             \
            goto out;                                                                                   \
        }                                                                                               \
    } while (0)

static const char *type_name(mn_ckpt_type t)
{
    switch (t) {
    case MN_CKPT_F32: return "float32";
    case MN_CKPT_U64: return "uint64";
    case MN_CKPT_I64: return "int64";
    }
    return "unknown";
}

static hid_t mem_type(mn_ckpt_type t)
{
    return t == MN_CKPT_F32 ? H5T_NATIVE_FLOAT : t == MN_CKPT_U64 ? H5T_NATIVE_UINT64 : H5T_NATIVE_INT64;
}

static hid_t file_type(mn_ckpt_type t)
{
    return t == MN_CKPT_F32 ? H5T_IEEE_F32LE : t == MN_CKPT_U64 ? H5T_STD_U64LE : H5T_STD_I64LE;
}

/* ---- POSIX helpers ---- */

static mn_err join(char *out, size_t len, const char *dir, const char *name)
{
    int n = snprintf(out, len, "%s/%s", dir, name);
    MN_CHECK(n > 0 && (size_t)n < len, MN_ERR_ARG, "path '%s/%s' is too long (limit %zu)", dir, name, len - 1);
    return MN_OK;
}

/* Step of a file name "ckpt-<digits>.h5" (exactly), or -1. */
static long long parse_ckpt_name(const char *name)
{
    if (strncmp(name, "ckpt-", 5) != 0) return -1;
    const char *p = name + 5;
    if (*p < '0' || *p > '9') return -1;
    char *end = NULL;
    long long step = strtoll(p, &end, 10);
    return end && strcmp(end, ".h5") == 0 ? step : -1;
}

/* Remove the leftovers of interrupted writes: ckpt-*.h5.tmp and latest.tmp. */
static mn_err remove_stale(const char *dir)
{
    DIR *d = opendir(dir);
    MN_CHECK(d != NULL, MN_ERR_IO, "cannot list checkpoint directory '%s': %s", dir, strerror(errno));
    struct dirent *ent;
    char path[4096];
    mn_err err = MN_OK;
    while ((ent = readdir(d)) != NULL) {
        size_t n = strlen(ent->d_name);
        int tmp = (strncmp(ent->d_name, "ckpt-", 5) == 0 && n > 7 && strcmp(ent->d_name + n - 7, ".h5.tmp") == 0) ||
                  strcmp(ent->d_name, "latest.tmp") == 0;
        if (!tmp || join(path, sizeof path, dir, ent->d_name) != MN_OK) continue;
        if (unlink(path) != 0 && errno != ENOENT) {
            err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot remove stale '%s': %s", path,
                                  strerror(errno));
            break;
        }
        mn_log_warn("removed '%s' left by an interrupted checkpoint write", path);
    }
    closedir(d);
    return err;
}

static int cmp_desc(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Delete ckpt-*.h5 files beyond the `keep` newest; never the one of step `current`. */
static mn_err prune(const char *dir, int keep, long long current)
{
    if (keep <= 0) return MN_OK;
    DIR *d = opendir(dir);
    MN_CHECK(d != NULL, MN_ERR_IO, "cannot list checkpoint directory '%s': %s", dir, strerror(errno));
    long long *steps = NULL;
    size_t n = 0, cap = 0;
    struct dirent *ent;
    mn_err err = MN_OK;
    while ((ent = readdir(d)) != NULL) {
        long long s = parse_ckpt_name(ent->d_name);
        if (s < 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            long long *grown = realloc(steps, cap * sizeof *steps);
            if (!grown) {
                err = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory listing '%s'", dir);
                break;
            }
            steps = grown;
        }
        steps[n++] = s;
    }
    closedir(d);
    if (!err) qsort(steps, n, sizeof *steps, cmp_desc);
    for (size_t i = (size_t)keep; !err && i < n; i++) {
        if (steps[i] == current) continue;
        char name[64], path[4096];
        snprintf(name, sizeof name, "ckpt-%lld.h5", steps[i]);
        if (join(path, sizeof path, dir, name) != MN_OK) continue;
        if (unlink(path) != 0 && errno != ENOENT)
            err = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot delete old checkpoint '%s': %s",
                                  path, strerror(errno));
    }
    free(steps);
    return err;
}

/* The newest ckpt-<step>.h5 in dir, by step: *step = -1 when there is none.  A directory that cannot be listed is
 * MN_ERR_IO naming it. */
mn_err mn_ckpt_newest(const char *dir, long long *step)
{
    *step = -1;
    DIR *d = opendir(dir);
    MN_CHECK(d != NULL, MN_ERR_IO, "cannot list checkpoint directory '%s': %s", dir, strerror(errno));
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        long long s = parse_ckpt_name(ent->d_name);
        if (s > *step) *step = s;
    }
    closedir(d);
    return MN_OK;
}

static void (*g_fault_hook)(int stage, int64_t step);

void mn_ckpt_set_fault_hook(void (*hook)(int stage, int64_t step)) { g_fault_hook = hook; }

/* Atomically point `latest` at `name`. */
static mn_err write_latest(const char *dir, const char *name)
{
    char tmp[4096], fin[4096];
    MN_CALL(join(tmp, sizeof tmp, dir, "latest.tmp"));
    MN_CALL(join(fin, sizeof fin, dir, "latest"));
    FILE *f = fopen(tmp, "w");
    MN_CHECK(f != NULL, MN_ERR_IO, "cannot create '%s': %s", tmp, strerror(errno));
    int bad = fprintf(f, "%s\n", name) < 0;
    bad |= fflush(f) != 0;
    bad |= fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    MN_CHECK(!bad, MN_ERR_IO, "cannot write '%s': %s", tmp, strerror(errno));
    MN_CHECK(rename(tmp, fin) == 0, MN_ERR_IO, "cannot rename '%s' to '%s': %s", tmp, fin, strerror(errno));
    MN_CALL(mn_fsync_path(dir, 1));
    return MN_OK;
}

/* ---- writing ---- */

static mn_err write_string_attr(hid_t loc, const char *name, const char *value, const char *path)
{
    mn_err err = MN_OK;
    hid_t tid = -1, space = -1, attr = -1;
    size_t len = strlen(value);
    H5TRY(tid = H5Tcopy(H5T_C_S1), "attribute '%s' of '%s'", name, path);
    H5TRY(H5Tset_size(tid, len + 1), "attribute '%s' of '%s'", name, path);
    H5TRY(H5Tset_strpad(tid, H5T_STR_NULLTERM), "attribute '%s' of '%s'", name, path);
    H5TRY(space = H5Screate(H5S_SCALAR), "attribute '%s' of '%s'", name, path);
    H5TRY(attr = H5Acreate2(loc, name, tid, space, H5P_DEFAULT, H5P_DEFAULT), "cannot create attribute '%s' in '%s'",
          name, path);
    H5TRY(H5Awrite(attr, tid, value), "cannot write attribute '%s' (%zu bytes) in '%s'", name, len, path);
out:
    if (attr >= 0 && H5Aclose(attr) < 0 && !err) err = mn_h5_report("H5Aclose", __FILE__, __LINE__, __func__);
    if (space >= 0) H5Sclose(space);
    if (tid >= 0) H5Tclose(tid);
    return err;
}

static mn_err write_array(hid_t fid, const mn_ckpt_array *a, const char *path)
{
    mn_err err = MN_OK;
    hid_t space = -1, dcpl = -1, lcpl = -1, dset = -1;
    hsize_t dims = (hsize_t)a->count;
    H5TRY(space = H5Screate_simple(1, &dims, NULL), "dataspace of array '%s' in '%s'", a->name, path);
    H5TRY(dcpl = H5Pcreate(H5P_DATASET_CREATE), "array '%s' in '%s'", a->name, path);
    if (a->count > 0) {
        hsize_t chunk = dims < CKPT_CHUNK ? dims : CKPT_CHUNK;
        H5TRY(H5Pset_chunk(dcpl, 1, &chunk), "chunking of array '%s' in '%s'", a->name, path);
        H5TRY(H5Pset_fletcher32(dcpl), "checksum filter of array '%s' in '%s'", a->name, path);
    }
    H5TRY(lcpl = H5Pcreate(H5P_LINK_CREATE), "array '%s' in '%s'", a->name, path);
    H5TRY(H5Pset_create_intermediate_group(lcpl, 1), "array '%s' in '%s'", a->name, path);
    H5TRY(dset = H5Dcreate2(fid, a->name, file_type(a->type), space, lcpl, dcpl, H5P_DEFAULT),
          "cannot create array '%s' (%s, %zu elements) in '%s'", a->name, type_name(a->type), a->count, path);
    if (a->count > 0)
        H5TRY(H5Dwrite(dset, mem_type(a->type), H5S_ALL, H5S_ALL, H5P_DEFAULT, a->data),
              "cannot write array '%s' (%zu elements) to '%s'", a->name, a->count, path);
out:
    if (dset >= 0 && H5Dclose(dset) < 0 && !err)
        err = mn_error_report(MN_ERR_HDF5, __FILE__, __LINE__, __func__, "closing array '%s' of '%s' failed",
                              a->name, path);
    if (lcpl >= 0) H5Pclose(lcpl);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return err;
}

static mn_err write_file(const char *tmp, int64_t step, const mn_ckpt_array *arrays, int narrays,
                         const mn_ckpt_attr *attrs, int nattrs)
{
    mn_err err = MN_OK;
    hid_t fapl = -1, fid = -1, space = -1, attr = -1;
    int *fd = NULL; /* the sec2 driver's file descriptor */
    H5TRY(fapl = H5Pcreate(H5P_FILE_ACCESS), "file access list for '%s'", tmp);
    H5TRY(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST), "libver bounds for '%s'", tmp);
    H5TRY(fid = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl), "cannot create checkpoint file '%s'", tmp);
    H5TRY(H5Fget_vfd_handle(fid, H5P_DEFAULT, (void **)&fd), "file handle of '%s'", tmp);
    H5TRY(space = H5Screate(H5S_SCALAR), "'%s'", tmp);
    H5TRY(attr = H5Acreate2(fid, "step", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), "step attribute of '%s'",
          tmp);
    H5TRY(H5Awrite(attr, H5T_NATIVE_INT64, &step), "step attribute of '%s'", tmp);
    if ((err = write_string_attr(fid, "format", CKPT_FORMAT, tmp)) != MN_OK) goto out;
    if ((err = write_string_attr(fid, "mednet_version", MN_VERSION, tmp)) != MN_OK) goto out;
    for (int i = 0; i < nattrs; i++)
        if ((err = write_string_attr(fid, attrs[i].name, attrs[i].value, tmp)) != MN_OK) goto out;
    for (int i = 0; i < narrays; i++)
        if ((err = write_array(fid, &arrays[i], tmp)) != MN_OK) goto out;
    H5TRY(H5Fflush(fid, H5F_SCOPE_GLOBAL), "cannot flush checkpoint '%s'", tmp);
out:
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    /* On a full file system the close must still succeed: a file HDF5 could not close stays registered in the
     * library, which then crashes (SIGSEGV in H5F__close_cb) when MPI_Finalize terminates HDF5.  Truncating the
     * doomed temporary file first gives its blocks back, so the close can write its few metadata blocks (found by
     * the disk_full drill, tests/train/run_drill.sh). */
    if (err && fd && *fd >= 0 && ftruncate(*fd, 0) != 0)
        mn_log_warn("cannot truncate '%s' after a failed write: %s", tmp, strerror(errno));
    if (fid >= 0 && H5Fclose(fid) < 0 && !err)
        err = mn_error_report(MN_ERR_HDF5, __FILE__, __LINE__, __func__, "closing checkpoint '%s' failed", tmp);
    if (fapl >= 0) H5Pclose(fapl);
    return err;
}

static int reserved_attr(const char *name)
{
    return !strcmp(name, "step") || !strcmp(name, "format") || !strcmp(name, "mednet_version");
}

mn_err mn_ckpt_write(const char *dir, int64_t step, const mn_ckpt_array *arrays, int narrays,
                     const mn_ckpt_attr *attrs, int nattrs, int keep, char *path, size_t pathlen)
{
    MN_CHECK(dir && *dir, MN_ERR_ARG, "checkpoint directory is empty");
    MN_CHECK(step >= 0, MN_ERR_ARG, "checkpoint step must be >= 0, got %lld", (long long)step);
    MN_CHECK(narrays >= 0 && nattrs >= 0 && (narrays == 0 || arrays) && (nattrs == 0 || attrs), MN_ERR_ARG,
             "bad array/attribute lists (%d arrays, %d attributes)", narrays, nattrs);
    for (int i = 0; i < narrays; i++) {
        MN_CHECK(arrays[i].name && *arrays[i].name, MN_ERR_ARG, "checkpoint array %d has no name", i);
        MN_CHECK(arrays[i].data || arrays[i].count == 0, MN_ERR_ARG, "checkpoint array '%s' has no data",
                 arrays[i].name);
        MN_CHECK(arrays[i].type == MN_CKPT_F32 || arrays[i].type == MN_CKPT_U64 || arrays[i].type == MN_CKPT_I64,
                 MN_ERR_ARG, "checkpoint array '%s' has unknown type %d", arrays[i].name, (int)arrays[i].type);
        for (int j = 0; j < i; j++)
            MN_CHECK(strcmp(arrays[i].name, arrays[j].name) != 0, MN_ERR_ARG, "checkpoint array '%s' listed twice",
                     arrays[i].name);
    }
    for (int i = 0; i < nattrs; i++) {
        MN_CHECK(attrs[i].name && *attrs[i].name && attrs[i].value, MN_ERR_ARG,
                 "checkpoint attribute %d has no name or value", i);
        MN_CHECK(!reserved_attr(attrs[i].name), MN_ERR_ARG, "checkpoint attribute name '%s' is reserved",
                 attrs[i].name);
        for (int j = 0; j < i; j++)
            MN_CHECK(strcmp(attrs[i].name, attrs[j].name) != 0, MN_ERR_ARG, "checkpoint attribute '%s' listed twice",
                     attrs[i].name);
    }
    MN_CALL(mn_h5_init());

    /* The directory (one level), then the leftovers of earlier interrupted writes. */
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        MN_FAIL(MN_ERR_IO, "cannot create checkpoint directory '%s': %s", dir, strerror(errno));
    MN_CALL(remove_stale(dir));

    char name[64], tmp[4096], fin[4096];
    snprintf(name, sizeof name, "ckpt-%lld.h5", (long long)step);
    MN_CALL(join(fin, sizeof fin, dir, name));
    MN_CHECK(snprintf(tmp, sizeof tmp, "%s.tmp", fin) < (int)sizeof tmp, MN_ERR_ARG, "path '%s' too long", fin);

    /* 1. the temporary file, flushed, closed and fsync'ed */
    mn_err e = write_file(tmp, step, arrays, narrays, attrs, nattrs);
    if (!e) e = mn_fsync_path(tmp, 0);
    if (e) {
        unlink(tmp);
        MN_FAIL(e, "checkpoint '%s' was not written; the previous checkpoint and 'latest' are untouched", fin);
    }
    /* 2. the rename makes it visible; the directory fsync makes the rename durable */
    if (rename(tmp, fin) != 0) {
        int err = errno;
        unlink(tmp);
        MN_FAIL(MN_ERR_IO, "cannot rename '%s' to '%s': %s; the previous checkpoint and 'latest' are untouched", tmp,
                fin, strerror(err));
    }
    e = mn_fsync_path(dir, 1);
    if (!e && g_fault_hook) g_fault_hook(MN_CKPT_STAGE_RENAMED, step);
    /* 3. the pointer, 4. retention (only now that the new checkpoint is in place) */
    if (!e) e = write_latest(dir, name);
    if (e) {
        char lt[4096];
        MN_CALL(join(lt, sizeof lt, dir, "latest.tmp"));
        unlink(lt);
        MN_FAIL(e, "checkpoint '%s' is on disk but 'latest' was not updated: it still names the previous checkpoint, "
                "which is untouched", fin);
    }
    MN_CALL(prune(dir, keep, step));
    if (path) MN_CHECK(snprintf(path, pathlen, "%s", fin) < (int)pathlen, MN_ERR_ARG, "path buffer too small");
    return MN_OK;
}

/* ---- reading ---- */

mn_err mn_ckpt_latest(const char *dir, char *path, size_t pathlen, int *found)
{
    MN_CHECK(dir && path && found, MN_ERR_ARG, "NULL argument");
    *found = 0;
    char lp[4096];
    MN_CALL(join(lp, sizeof lp, dir, "latest"));
    FILE *f = fopen(lp, "r");
    if (!f && errno == ENOENT) return MN_OK;
    MN_CHECK(f != NULL, MN_ERR_IO, "cannot open '%s': %s", lp, strerror(errno));
    char line[256] = "";
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    size_t n = got ? strlen(line) : 0;
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    if (parse_ckpt_name(line) < 0) {
        long long newest = -1;
        if (mn_ckpt_newest(dir, &newest) != MN_OK) newest = -1;
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e) line[i] = '?';
        if (newest >= 0)
            MN_FAIL(MN_ERR_FORMAT, "'%s' should name a checkpoint file 'ckpt-<step>.h5' but contains '%s'\n"
                    "---> HINT: the newest checkpoint here is ckpt-%lld.h5: write that name into '%s' to resume from it, "
                    "or set train.resume=false", lp, line, newest, lp);
        MN_FAIL(MN_ERR_FORMAT, "'%s' should name a checkpoint file 'ckpt-<step>.h5' but contains '%s', and there is no "
                "checkpoint in '%s'\n---> HINT: remove '%s' to start afresh", lp, line, dir, lp);
    }
    MN_CALL(join(path, pathlen, dir, line));
    MN_CHECK(access(path, R_OK) == 0, MN_ERR_FORMAT, "'%s' points to '%s', which cannot be read: %s", lp, path,
             strerror(errno));
    *found = 1;
    return MN_OK;
}

/* An attribute read into one element must hold exactly one: H5Aread writes every element of its dataspace, so a
 * damaged file with an array where a scalar belongs would otherwise overrun the caller's buffer. */
static mn_err attr_check_one(hid_t attr, const char *name, const char *path)
{
    hid_t space = H5Aget_space(attr);
    hssize_t n = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    if (space >= 0) H5Sclose(space);
    if (n < 0) {
        mn_h5_report("H5Aget_space", __FILE__, __LINE__, __func__);
        MN_FAIL(MN_ERR_FORMAT, "cannot read the dataspace of attribute '%s' of checkpoint '%s'", name, path);
    }
    MN_CHECK(n == 1, MN_ERR_FORMAT, "attribute '%s' of checkpoint '%s' has %lld elements, expected 1 (corrupt file?)",
             name, path, (long long)n);
    return MN_OK;
}

mn_err mn_ckpt_open(const char *path, mn_ckpt **out)
{
    MN_CHECK(path && out, MN_ERR_ARG, "NULL argument");
    *out = NULL;
    MN_CALL(mn_h5_init());
    MN_CHECK(access(path, R_OK) == 0, MN_ERR_IO, "cannot read checkpoint '%s': %s", path, strerror(errno));
    MN_CHECK(H5Fis_hdf5(path) > 0, MN_ERR_FORMAT,
             "checkpoint '%s' is not a readable HDF5 file (truncated or corrupt?)", path);
    mn_ckpt *c = NULL;
    MN_CALL(mn_calloc(sizeof *c, "checkpoint", (void **)&c));
    snprintf(c->path, sizeof c->path, "%s", path);
    mn_err err = MN_OK;
    hid_t attr = -1;
    char *format = NULL;
    H5TRY(c->fid = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), "cannot open checkpoint '%s' (truncated or corrupt?)",
          path);
    if ((err = mn_ckpt_attr_get(c, "format", &format)) != MN_OK) goto out;
    if (strcmp(format, CKPT_FORMAT) != 0) {
        /* "mednet-checkpoint-<n>" with n > ours: a newer mednet wrote it; anything else is not ours at all. */
        int version = 0;
        char extra = 0;
        char *by = NULL;
        if (sscanf(format, CKPT_FORMAT_PREFIX "%d%c", &version, &extra) == 1 && version > CKPT_FORMAT_VERSION) {
            if (mn_ckpt_attr_get(c, "mednet_version", &by) != MN_OK) by = NULL;
            err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                  "'%s' was written by a newer mednet (%s, checkpoint format %d); this mednet %s reads "
                                  "format %d only\n---> HINT: resume with mednet %s or newer; the file is left as it is",
                                  path, by ? by : "version unknown", version, MN_VERSION, CKPT_FORMAT_VERSION,
                                  by ? by : "of that version");
            mn_free(&by);
        } else {
            err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                  "'%s' has format '%s', expected '%s'", path, format, CKPT_FORMAT);
        }
        goto out;
    }
    H5TRY(attr = H5Aopen(c->fid, "step", H5P_DEFAULT), "checkpoint '%s' has no 'step' attribute", path);
    if ((err = attr_check_one(attr, "step", path)) != MN_OK) goto out;
    H5TRY(H5Aread(attr, H5T_NATIVE_INT64, &c->step), "cannot read 'step' of checkpoint '%s'", path);
    if (c->step < 0) {
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "checkpoint '%s' has step %lld", path,
                              (long long)c->step);
        goto out;
    }
out:
    mn_free(&format);
    if (attr >= 0) H5Aclose(attr);
    if (err) {
        if (c->fid > 0) H5Fclose(c->fid);
        mn_free(&c);
        return err;
    }
    *out = c;
    return MN_OK;
}

int64_t mn_ckpt_step(const mn_ckpt *c) { return c ? c->step : -1; }

/* Whether the link path exists, walking its groups (H5Lexists fails on a missing intermediate group). */
static mn_err path_exists(hid_t fid, const char *name, int *exists, const char *file)
{
    char buf[1024];
    MN_CHECK(strlen(name) < sizeof buf, MN_ERR_ARG, "array name too long: '%s'", name);
    snprintf(buf, sizeof buf, "%s", name);
    *exists = 0;
    for (char *p = buf;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char c = *p;
        *p = '\0';
        if (*buf) {
            htri_t e = H5Lexists(fid, buf, H5P_DEFAULT);
            if (e < 0) {
                mn_h5_report("H5Lexists", __FILE__, __LINE__, __func__);
                MN_FAIL(MN_ERR_HDF5, "cannot look up '%s' in checkpoint '%s'", buf, file);
            }
            if (e == 0) return MN_OK;
        }
        if (c == '\0') break;
        *p = c;
    }
    *exists = 1;
    return MN_OK;
}

/* Type and length of an open dataset. */
static mn_err dset_info(hid_t dset, const char *name, const char *file, int *known, mn_ckpt_type *type,
                        size_t *count)
{
    mn_err err = MN_OK;
    hid_t tid = -1, space = -1;
    H5TRY(tid = H5Dget_type(dset), "type of '%s' in '%s'", name, file);
    H5T_class_t cls = H5Tget_class(tid);
    size_t sz = H5Tget_size(tid);
    H5T_sign_t sign = cls == H5T_INTEGER ? H5Tget_sign(tid) : H5T_SGN_ERROR;
    *known = 1;
    if (cls == H5T_FLOAT && sz == 4) *type = MN_CKPT_F32;
    else if (cls == H5T_INTEGER && sz == 8 && sign == H5T_SGN_NONE) *type = MN_CKPT_U64;
    else if (cls == H5T_INTEGER && sz == 8 && sign == H5T_SGN_2) *type = MN_CKPT_I64;
    else *known = 0;
    H5TRY(space = H5Dget_space(dset), "dataspace of '%s' in '%s'", name, file);
    int nd = H5Sget_simple_extent_ndims(space);
    hsize_t dims = 0;
    if (nd != 1 || H5Sget_simple_extent_dims(space, &dims, NULL) != 1) {
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                              "array '%s' in '%s' has %d dimensions, expected 1", name, file, nd);
        goto out;
    }
    *count = (size_t)dims;
out:
    if (space >= 0) H5Sclose(space);
    if (tid >= 0) H5Tclose(tid);
    return err;
}

mn_err mn_ckpt_info(mn_ckpt *c, const char *name, int *exists, mn_ckpt_type *type, size_t *count)
{
    MN_CHECK(c && name, MN_ERR_ARG, "NULL argument");
    int ex = 0, known = 0;
    mn_ckpt_type t = MN_CKPT_F32;
    size_t n = 0;
    MN_CALL(path_exists(c->fid, name, &ex, c->path));
    if (ex) {
        hid_t dset;
        MN_H5(dset = H5Dopen2(c->fid, name, H5P_DEFAULT));
        mn_err e = dset_info(dset, name, c->path, &known, &t, &n);
        H5Dclose(dset);
        MN_CALL(e);
        MN_CHECK(known, MN_ERR_FORMAT, "array '%s' in '%s' has a type other than float32/uint64/int64", name,
                 c->path);
    }
    if (exists) *exists = ex;
    if (type) *type = t;
    if (count) *count = n;
    return MN_OK;
}

/* H5Literate callback: append a link name to the list (stops on allocation failure). */
typedef struct name_list {
    char **names;
    int n, cap;
    int failed;
} name_list;

static herr_t list_one(hid_t g, const char *name, const H5L_info_t *info, void *op)
{
    (void)g;
    (void)info;
    name_list *l = op;
    if (l->n == l->cap) {
        l->failed = 1;
        return 1;
    }
    size_t len = strlen(name) + 1;
    if (mn_malloc(len, "checkpoint member name", (void **)&l->names[l->n]) != MN_OK) {
        l->failed = 1;
        return 1;
    }
    memcpy(l->names[l->n++], name, len);
    return 0;
}

mn_err mn_ckpt_list(mn_ckpt *c, const char *group, char **names, int cap, int *n)
{
    MN_CHECK(c && group && names && n && cap > 0, MN_ERR_ARG, "NULL argument");
    *n = 0;
    int ex = 0;
    MN_CALL(path_exists(c->fid, group, &ex, c->path));
    if (!ex) return MN_OK;
    hid_t g;
    MN_H5(g = H5Gopen2(c->fid, group, H5P_DEFAULT));
    name_list l = {names, 0, cap, 0};
    hsize_t idx = 0;
    herr_t rc = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, list_one, &l);
    H5Gclose(g);
    *n = l.n;
    if (rc < 0 || l.failed) {
        for (int i = 0; i < l.n; i++) mn_free((void **)&names[i]);
        *n = 0;
        MN_CHECK(rc >= 0, MN_ERR_HDF5, "cannot list group '%s' in '%s'", group, c->path);
        MN_FAIL(MN_ERR_FORMAT, "group '%s' in '%s' has more than %d members", group, c->path, cap);
    }
    return MN_OK;
}

static mn_err read_one(mn_ckpt *c, const mn_ckpt_array *a)
{
    int ex = 0, known = 0;
    MN_CALL(path_exists(c->fid, a->name, &ex, c->path));
    MN_CHECK(ex, MN_ERR_FORMAT, "checkpoint '%s' has no array '%s'", c->path, a->name);
    mn_err err = MN_OK;
    hid_t dset = -1;
    mn_ckpt_type t = MN_CKPT_F32;
    size_t n = 0;
    H5TRY(dset = H5Dopen2(c->fid, a->name, H5P_DEFAULT), "cannot open array '%s' in '%s'", a->name, c->path);
    if ((err = dset_info(dset, a->name, c->path, &known, &t, &n)) != MN_OK) goto out;
    if (!known || t != a->type || n != a->count) {
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                              "array '%s' in '%s': expected %s[%zu], found %s[%zu]", a->name, c->path,
                              type_name(a->type), a->count, known ? type_name(t) : "another type", n);
        goto out;
    }
    if (n > 0)
        H5TRY(H5Dread(dset, mem_type(a->type), H5S_ALL, H5S_ALL, H5P_DEFAULT, a->data),
              "cannot read array '%s' from '%s' (checksum mismatch or truncated file: the checkpoint is damaged)",
              a->name, c->path);
out:
    if (dset >= 0) H5Dclose(dset);
    return err;
}

mn_err mn_ckpt_read(mn_ckpt *c, const mn_ckpt_array *arrays, int narrays)
{
    MN_CHECK(c && (narrays == 0 || arrays), MN_ERR_ARG, "NULL argument");
    for (int i = 0; i < narrays; i++) {
        MN_CHECK(arrays[i].name && (arrays[i].data || arrays[i].count == 0), MN_ERR_ARG,
                 "array %d to read has no name or buffer", i);
        MN_CALL(read_one(c, &arrays[i]));
    }
    return MN_OK;
}

mn_err mn_ckpt_attr_get(mn_ckpt *c, const char *name, char **value)
{
    MN_CHECK(c && name && value, MN_ERR_ARG, "NULL argument");
    *value = NULL;
    htri_t ex = H5Aexists(c->fid, name);
    MN_CHECK(ex >= 0, MN_ERR_HDF5, "cannot look up attribute '%s' in '%s'", name, c->path);
    MN_CHECK(ex > 0, MN_ERR_FORMAT, "checkpoint '%s' has no attribute '%s'", c->path, name);
    mn_err err = MN_OK;
    hid_t attr = -1, tid = -1, mtid = -1;
    char *buf = NULL;
    H5TRY(attr = H5Aopen(c->fid, name, H5P_DEFAULT), "attribute '%s' of '%s'", name, c->path);
    H5TRY(tid = H5Aget_type(attr), "type of attribute '%s' of '%s'", name, c->path);
    if (H5Tget_class(tid) != H5T_STRING || H5Tis_variable_str(tid) != 0) {
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                              "attribute '%s' of '%s' is not a fixed-length string", name, c->path);
        goto out;
    }
    if ((err = attr_check_one(attr, name, c->path)) != MN_OK) goto out;
    size_t sz = H5Tget_size(tid);
    if (sz == 0 || (int64_t)sz > MN_MAX_CKPT_ATTR_BYTES) {
        err = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "attribute '%s' of '%s' claims %zu bytes "
                              "(limit %lld): corrupt file?", name, c->path, sz, (long long)MN_MAX_CKPT_ATTR_BYTES);
        goto out;
    }
    if ((err = mn_calloc(sz + 1, "checkpoint attribute", (void **)&buf)) != MN_OK) goto out;
    /* One byte more than the file's string: a string stored without its terminator (NULLPAD or SPACEPAD, as h5py
     * and other writers store them) converted to a NULLTERM string of the same size would lose its last byte. */
    H5TRY(mtid = H5Tcopy(H5T_C_S1), "attribute '%s'", name);
    H5TRY(H5Tset_size(mtid, sz + 1), "attribute '%s'", name);
    H5TRY(H5Tset_strpad(mtid, H5T_STR_NULLTERM), "attribute '%s'", name);
    H5TRY(H5Aread(attr, mtid, buf), "cannot read attribute '%s' of '%s'", name, c->path);
    buf[sz] = '\0';
    *value = buf;
    buf = NULL;
out:
    mn_free(&buf);
    if (mtid >= 0) H5Tclose(mtid);
    if (tid >= 0) H5Tclose(tid);
    if (attr >= 0) H5Aclose(attr);
    return err;
}

mn_err mn_ckpt_attr_exists(mn_ckpt *c, const char *name, int *exists)
{
    MN_CHECK(c && name && exists, MN_ERR_ARG, "NULL argument");
    htri_t ex = H5Aexists(c->fid, name);
    MN_CHECK(ex >= 0, MN_ERR_HDF5, "cannot look up attribute '%s' in '%s'", name, c->path);
    *exists = ex > 0;
    return MN_OK;
}

mn_err mn_ckpt_close(mn_ckpt **pc)
{
    if (!pc || !*pc) return MN_OK;
    mn_ckpt *c = *pc;
    *pc = NULL;
    herr_t rc = H5Fclose(c->fid);
    char path[4096];
    snprintf(path, sizeof path, "%s", c->path);
    mn_free(&c);
    MN_CHECK(rc >= 0, MN_ERR_HDF5, "closing checkpoint '%s' failed", path);
    return MN_OK;
}
