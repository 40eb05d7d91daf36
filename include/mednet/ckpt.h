/* ckpt.h: atomic, resumable HDF5 checkpoints.
 *
 * A checkpoint is one HDF5 file `<dir>/ckpt-<step>.h5` holding named 1-D arrays (float32 parameters, optimiser
 * state and batch-norm buffers, uint64 RNG states, int64 counters: whatever the caller lists) and string
 * attributes (config text, corpus checksum, P, ...).  The root group always carries the attributes `step` (int64),
 * `format` ("mednet-checkpoint-1") and `mednet_version`.  Array names may contain '/' ("encoder/params"); the
 * groups are created.  Arrays are chunked with the Fletcher-32 checksum filter, so flipped bits are reported when
 * read instead of silently resuming from damaged weights.
 *
 * Writing is atomic (one writer, normally rank 0; serial HDF5 on the default driver):
 *   ckpt-<step>.h5.tmp  written, H5Fflush, closed, fsync'ed
 *   rename -> ckpt-<step>.h5, fsync of the directory
 *   `latest` rewritten through latest.tmp + fsync + rename (+ directory fsync): it names the newest checkpoint
 *   older ckpt-*.h5 beyond the `keep` newest deleted, only after the new one and `latest` are in place.
 * A write killed at any point leaves the previous checkpoint and `latest` intact; leftover .tmp files are removed
 * by the next write.
 *
 * Reading: mn_ckpt_latest finds the file, mn_ckpt_open checks it, mn_ckpt_read fetches arrays by name with type
 * and length checks.  Every error names the file.  Nothing here is collective: the caller reads on one rank and
 * broadcasts, or reads on every rank (read-only opens may be shared).
 */
#ifndef MEDNET_CKPT_H
#define MEDNET_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "mednet/error.h"

typedef enum mn_ckpt_type {
    MN_CKPT_F32,  /* float */
    MN_CKPT_U64,  /* uint64_t (RNG states) */
    MN_CKPT_I64   /* int64_t (counters, steps) */
} mn_ckpt_type;

/* One array to write or read: `count` elements of `type` at `data`. */
typedef struct mn_ckpt_array {
    const char *name;
    mn_ckpt_type type;
    void *data;     /* write: read from (not modified); read: overwritten */
    size_t count;
} mn_ckpt_array;

/* One string attribute of the root group. */
typedef struct mn_ckpt_attr {
    const char *name;
    const char *value;
} mn_ckpt_attr;

/* Write checkpoint `step` into directory `dir` (created if missing, one level) atomically as described above,
 * then keep only the `keep` newest ckpt-*.h5 files (keep <= 0: keep all).  Names must be unique and must not be
 * "step", "format" or "mednet_version" for attributes.  If `path` is not NULL it receives the final file path.
 * Not collective: call on one rank.  On error the previous checkpoint and `latest` are untouched, the .tmp file is
 * removed when possible, and the error names the file and the array or attribute being written. */
mn_err mn_ckpt_write(const char *dir, int64_t step, const mn_ckpt_array *arrays, int narrays,
                     const mn_ckpt_attr *attrs, int nattrs, int keep, char *path, size_t pathlen);

/* Find the newest checkpoint of `dir` through its `latest` file.  *found = 0 (and MN_OK) when there is no `latest`
 * file (a fresh run); otherwise *found = 1 and path receives "<dir>/ckpt-<step>.h5".  A `latest` that is
 * malformed or names a missing file is MN_ERR_FORMAT naming both.  Not collective. */
mn_err mn_ckpt_latest(const char *dir, char *path, size_t pathlen, int *found);

/* The step of the newest ckpt-<step>.h5 in dir (by its name), or -1 when there is none.  Used to warn about a
 * checkpoint newer than `latest` (a write interrupted between its rename and the pointer update) and to hint at
 * a resumable file when `latest` is damaged.  A directory that cannot be listed is MN_ERR_IO.  Not collective. */
mn_err mn_ckpt_newest(const char *dir, long long *step);

/* Fault injection for the failure tests (DESIGN.md, "Fault injection"): mn_ckpt_write calls hook(stage, step) at
 * the listed stage of every write.  NULL (the default) removes it.  Not thread-safe; never set in production. */
enum { MN_CKPT_STAGE_RENAMED = 1 /* ckpt-<step>.h5 renamed into place, `latest` not yet rewritten */ };
void mn_ckpt_set_fault_hook(void (*hook)(int stage, int64_t step));

typedef struct mn_ckpt mn_ckpt;

/* Open a checkpoint read-only and check that it is one (format attribute, step).  A missing, truncated or
 * non-HDF5 file is MN_ERR_IO / MN_ERR_FORMAT naming the path; a file of a newer checkpoint format is MN_ERR_FORMAT
 * naming the mednet version that wrote it.  Free with mn_ckpt_close.  Not collective. */
mn_err mn_ckpt_open(const char *path, mn_ckpt **out);

/* The step recorded in the checkpoint. */
int64_t mn_ckpt_step(const mn_ckpt *c);

/* Whether array `name` exists, and if so its type and length (out-pointers may be NULL).  Not collective. */
mn_err mn_ckpt_info(mn_ckpt *c, const char *name, int *exists, mn_ckpt_type *type, size_t *count);

/* The names of the members of group `group` (e.g. "heads"), in name order, into names[0..*n) (each allocated: free
 * with mn_free); a missing group gives *n = 0.  More than `cap` members is MN_ERR_FORMAT.  Not collective. */
mn_err mn_ckpt_list(mn_ckpt *c, const char *group, char **names, int cap, int *n);

/* Read each listed array into its `data`: the array must exist with exactly that type and count (MN_ERR_FORMAT
 * naming the file, the array, the expected and found type/length otherwise).  Checksum failures (corrupt data)
 * are MN_ERR_HDF5 naming the file and array.  Not collective. */
mn_err mn_ckpt_read(mn_ckpt *c, const mn_ckpt_array *arrays, int narrays);

/* Read string attribute `name` of the root group into a new buffer *value (free with mn_free).  A missing
 * attribute is MN_ERR_FORMAT naming the file.  Not collective. */
mn_err mn_ckpt_attr_get(mn_ckpt *c, const char *name, char **value);

/* *exists = 1 if the root group has attribute `name`.  MN_ERR_HDF5 naming the file if the lookup fails.  Not
 * collective. */
mn_err mn_ckpt_attr_exists(mn_ckpt *c, const char *name, int *exists);

/* Close, set *c to NULL; accepts NULL. */
mn_err mn_ckpt_close(mn_ckpt **c);

#endif
