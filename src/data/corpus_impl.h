/* corpus_impl.h: private helpers shared by the corpus writer (corpus_write.c) and reader (corpus_read.c):
 * checked attribute writes/reads and the file-access property list policy. */
#ifndef MN_DATA_CORPUS_IMPL_H
#define MN_DATA_CORPUS_IMPL_H

#include <stdint.h>
#include "mednet/corpus.h"
#include "mednet/h5check.h"

/* File-access property list: MPI-IO on comm (serial sec2 when comm == MPI_COMM_NULL), collective metadata
 * operations, and file locking off unless the user set HDF5_USE_FILE_LOCKING (parallel file systems such as
 * Lustre reject the lock calls; HDF5 itself honours the variable when it is set).  Caller closes *fapl. */
mn_err mn_corpus_fapl(MPI_Comm comm, hid_t *fapl);

/* Attribute writers (create + write + close; every call checked).  In a parallel file every rank must call them
 * with identical values (attributes are metadata). */
mn_err mn_h5_attr_str(hid_t loc, const char *name, const char *value);
mn_err mn_h5_attr_strs(hid_t loc, const char *name, const char *values, int n, int stride);
mn_err mn_h5_attr_i64(hid_t loc, const char *name, const int64_t *v, int n);
mn_err mn_h5_attr_f64(hid_t loc, const char *name, const double *v, int n);
mn_err mn_h5_attr_u32(hid_t loc, const char *name, uint32_t v);

/* Attribute readers: a missing attribute or a size mismatch is MN_ERR_FORMAT naming `what` (the file/group). */
mn_err mn_h5_read_str(hid_t loc, const char *name, char *out, size_t cap, const char *what);
mn_err mn_h5_read_strs(hid_t loc, const char *name, char *out, int n, int stride, const char *what);
mn_err mn_h5_read_i64(hid_t loc, const char *name, int64_t *v, int n, const char *what);
mn_err mn_h5_read_f64(hid_t loc, const char *name, double *v, int n, const char *what);
mn_err mn_h5_read_u32(hid_t loc, const char *name, uint32_t *v, const char *what);

/* CRC-32 (zlib) of a volume's stored bytes: image floats then label bytes. */
uint32_t mn_corpus_data_crc(const float *image, const uint8_t *label, int64_t n);

#endif
