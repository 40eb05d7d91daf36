/* corpus_impl.h: private helpers shared by the corpus writer (corpus_write.c) and reader (corpus_read.c):
 * checked attribute writes/reads, the file-access property list policy and the agreed pre-check that comes before
 * every collective open of a corpus file. */
#ifndef MN_DATA_CORPUS_IMPL_H
#define MN_DATA_CORPUS_IMPL_H

#include <stdint.h>
#include "mednet/corpus.h"
#include "mednet/h5check.h"

/* File-access property list: MPI-IO on comm with the MPI-IO `hints` (text as mn_mpiio_hints_parse, may be NULL;
 * serial sec2 when comm == MPI_COMM_NULL, hints unused), collective metadata operations when coll_metadata is 1 (every rank must then make the same metadata calls: the writer), and file
 * locking off unless the user set HDF5_USE_FILE_LOCKING (parallel file systems such as Lustre reject the lock
 * calls; HDF5 itself honours the variable when it is set).  Not collective.  Caller closes *fapl. */
mn_err mn_corpus_fapl(MPI_Comm comm, int coll_metadata, const char *hints, hid_t *fapl);

/* MPI-IO hints from text: "key=value" pairs separated by commas (spaces around them ignored), e.g.
 * "striping_factor=16, striping_unit=4194304, romio_cb_write=enable".  "" or NULL gives MPI_INFO_NULL.  A pair
 * without '=' or with an empty key is MN_ERR_CONFIG naming `origin` and the pair.  Not collective.  The caller frees
 * a non-null *info with MPI_Info_free.  With info NULL only the text is checked, with no MPI call (the config
 * readers, which may run before MPI_Init, do this). */
mn_err mn_mpiio_hints_parse(const char *text, const char *origin, MPI_Info *info);

/* The check before a collective open of an existing corpus file (MPI_File_open inside H5Fopen waits for every rank:
 * a rank that cannot open the file would leave the others waiting forever).  Every rank opens `path` with plain
 * POSIX calls, looks for the HDF5 signature (offset 0, 512, 1024, ...: a user block may precede the superblock) and
 * takes the file size; ranks whose size differs from rank 0's do not see the same file.  The outcome is agreed
 * with mn_agree; on failure every failing rank has printed its path and the OS reason, and rank 0 prints one line
 * listing the failing ranks with their reasons.
 * Collective on comm.  Returns MN_OK everywhere, or the same agreed MN_ERR_IO/MN_ERR_FORMAT on every rank. */
mn_err mn_corpus_check_readable(MPI_Comm comm, const char *path);

/* Attribute writers (create + write + close; every call checked).  In a parallel file every rank must call them
 * with identical values (attributes are metadata). */
mn_err mn_h5_attr_str(hid_t loc, const char *name, const char *value);
mn_err mn_h5_attr_strs(hid_t loc, const char *name, const char *values, int n, int stride);
mn_err mn_h5_attr_i64(hid_t loc, const char *name, const int64_t *v, int n);
mn_err mn_h5_attr_i32(hid_t loc, const char *name, int32_t v);
mn_err mn_h5_attr_f64(hid_t loc, const char *name, const double *v, int n);
mn_err mn_h5_attr_u32(hid_t loc, const char *name, uint32_t v);

/* Attribute readers: a missing attribute or a size mismatch is MN_ERR_FORMAT naming `what` (the file/group). */
mn_err mn_h5_read_str(hid_t loc, const char *name, char *out, size_t cap, const char *what);
mn_err mn_h5_read_strs(hid_t loc, const char *name, char *out, int n, int stride, const char *what);
mn_err mn_h5_read_i64(hid_t loc, const char *name, int64_t *v, int n, const char *what);
mn_err mn_h5_read_i32(hid_t loc, const char *name, int32_t *v, const char *what);
mn_err mn_h5_read_f64(hid_t loc, const char *name, double *v, int n, const char *what);
mn_err mn_h5_read_u32(hid_t loc, const char *name, uint32_t *v, const char *what);

/* The chunk geometry readers use for a volume of `shape`: the stored chunk extent when the dataset is chunked
 * (stored[a] > 0), otherwise the writer's rule for 32-voxel chunks (as many per axis as 32 asks for, evened out).
 * Not collective. */
void mn_corpus_chunk_rule(const int64_t shape[3], const int64_t stored[3], int64_t out[3]);

/* CRC-32 (zlib) of a volume's stored bytes: image floats then label bytes. */
uint32_t mn_corpus_data_crc(const float *image, const uint8_t *label, int64_t n);

#endif
