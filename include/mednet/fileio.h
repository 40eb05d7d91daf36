/* fileio.h: publishing output files atomically (temporary name, fsync, rename, fsync of the directory), so that a
 * reader never sees a half-written file under the final name, and a killed writer leaves at most a temporary file.
 * Nothing here is collective. */
#ifndef MEDNET_FILEIO_H
#define MEDNET_FILEIO_H

#include <stddef.h>
#include "mednet/error.h"

/* Temporary name for `path` in the same directory (so the rename stays on one file system), keeping the file name's
 * ending (".nii.gz" stays ".nii.gz", which libnifti reads as "compress"): "<dir>/.tmp<pid>-<name>".  MN_ERR_ARG if
 * it does not fit in len. */
mn_err mn_tmp_path(const char *path, char *tmp, size_t len);

/* fsync a file (directory = 0) or a directory (1).  MN_ERR_IO naming it. */
mn_err mn_fsync_path(const char *path, int directory);

/* fsync `tmp`, rename it to `path` (replacing it) and fsync the directory.  On error `tmp` is removed and `path`
 * is untouched; the error names both files. */
mn_err mn_commit_file(const char *tmp, const char *path);

/* Write `len` bytes to `path` atomically (mn_tmp_path + mn_commit_file).  On error nothing at `path` changes. */
mn_err mn_write_file_atomic(const char *path, const void *data, size_t len);

/* 1 if `path` exists (any type). */
int mn_path_exists(const char *path);

#endif
