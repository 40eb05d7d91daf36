/* fileio.c: atomic publication of output files (mednet/fileio.h).  The same sequence as the checkpoint writer
 * (src/io/ckpt.c), for files that are not HDF5: NIfTI predictions, metric tables. */
#include "mednet/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

mn_err mn_tmp_path(const char *path, char *tmp, size_t len)
{
    const char *slash = strrchr(path, '/');
    int n = slash ? snprintf(tmp, len, "%.*s/.tmp%ld-%s", (int)(slash - path), path, (long)getpid(), slash + 1)
                  : snprintf(tmp, len, ".tmp%ld-%s", (long)getpid(), path);
    MN_CHECK(n > 0 && (size_t)n < len, MN_ERR_ARG, "path '%s' is too long for a temporary name (limit %zu)", path,
             len);
    return MN_OK;
}

mn_err mn_fsync_path(const char *path, int directory)
{
    int fd = open(path, O_RDONLY | (directory ? O_DIRECTORY : 0));
    MN_CHECK(fd >= 0, MN_ERR_IO, "cannot open '%s' to fsync it: %s", path, strerror(errno));
    int rc = fsync(fd), e = errno;
    close(fd);
    MN_CHECK(rc == 0, MN_ERR_IO, "fsync of '%s' failed: %s", path, strerror(e));
    return MN_OK;
}

mn_err mn_commit_file(const char *tmp, const char *path)
{
    mn_err e = mn_fsync_path(tmp, 0);
    if (!e && rename(tmp, path) != 0)
        e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot rename '%s' to '%s': %s", tmp, path,
                            strerror(errno));
    if (e) {
        unlink(tmp);
        return e;
    }
    char dir[4096];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? (slash == path ? "/" : path) : ".");
    MN_CALL(mn_fsync_path(dir, 1));
    return MN_OK;
}

mn_err mn_write_file_atomic(const char *path, const void *data, size_t len)
{
    char tmp[4200];
    MN_CALL(mn_tmp_path(path, tmp, sizeof tmp));
    FILE *f = fopen(tmp, "wb");
    MN_CHECK(f, MN_ERR_IO, "cannot create '%s' (for '%s'): %s", tmp, path, strerror(errno));
    int bad = len && fwrite(data, 1, len, f) != len;
    bad |= fflush(f) != 0;
    int e = errno;
    bad |= fclose(f) != 0;
    if (bad) {
        unlink(tmp);
        MN_FAIL(MN_ERR_IO, "cannot write '%s': %s", path, strerror(e ? e : errno));
    }
    MN_CALL(mn_commit_file(tmp, path));
    return MN_OK;
}

int mn_path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}
