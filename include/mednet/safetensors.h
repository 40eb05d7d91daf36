/* safetensors.h: reading and writing the safetensors format (Hugging Face), the interchange format of mednet's
 * weights with PyTorch.
 *
 * File layout: 8-byte little-endian unsigned header length H; H bytes of UTF-8 JSON
 *   {"name": {"dtype": "F32", "shape": [64, 1, 7, 7, 7], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "value"}}
 * (padded with spaces to a multiple of 8 by our writer); then the data region, tensors stored little-endian, row
 * major, offsets relative to the start of the data region.  The reader validates as the reference implementation
 * does: header length within the file, well-formed JSON, known dtypes, end - begin == numel * dtype size, tensors
 * tiling the data region without holes or overlaps and ending exactly at the end of the file.  Any violation is
 * MN_ERR_FORMAT with the byte offset in the file and the tensor name where one applies; the parser never reads
 * outside the buffer.  The whole file is read into memory (weights of one model, at most a few hundred MiB).
 */
#ifndef MEDNET_SAFETENSORS_H
#define MEDNET_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include "mednet/error.h"

typedef enum mn_st_dtype {
    MN_ST_F32 = 0, MN_ST_F64, MN_ST_F16, MN_ST_BF16, MN_ST_I64, MN_ST_I32, MN_ST_I16, MN_ST_I8, MN_ST_U8, MN_ST_BOOL,
    MN_ST_NDTYPES
} mn_st_dtype;

#define MN_ST_MAX_DIMS 8

typedef struct mn_st_tensor {
    char *name;
    mn_st_dtype dtype;
    int ndim;
    int64_t shape[MN_ST_MAX_DIMS];
    size_t begin, end;    /* byte offsets into the data region */
    const void *data;     /* points into the loaded file (may be unaligned: copy with memcpy) */
} mn_st_tensor;

typedef struct mn_safetensors mn_safetensors;

/* Name ("F32") and size in bytes of a dtype. */
const char *mn_st_dtype_name(mn_st_dtype t);
size_t mn_st_dtype_size(mn_st_dtype t);

/* Parse a whole file image of `len` bytes (copied).  `origin` names it in messages.  MN_ERR_FORMAT on any
 * inconsistency (with the byte offset).  *out is NULL on error. */
mn_err mn_st_parse(const void *buf, size_t len, const char *origin, mn_safetensors **out);

/* Read and parse a file (MN_ERR_IO if it cannot be read). */
mn_err mn_st_open(const char *path, mn_safetensors **out);

void mn_st_close(mn_safetensors **st); /* accepts NULL, sets *st to NULL */

int mn_st_count(const mn_safetensors *st);
const mn_st_tensor *mn_st_get(const mn_safetensors *st, int i); /* in file order of data offsets */
const mn_st_tensor *mn_st_find(const mn_safetensors *st, const char *name);
/* Value of a __metadata__ key, or NULL. */
const char *mn_st_metadata(const mn_safetensors *st, const char *key);

/* One tensor to write. */
typedef struct mn_st_entry {
    const char *name;
    mn_st_dtype dtype;
    int ndim;
    int64_t shape[MN_ST_MAX_DIMS];
    const void *data; /* numel * dtype size bytes, native little-endian */
} mn_st_entry;

/* Write n tensors in the given order, with optional metadata (nmeta key/value pairs, may be 0), to `path` through
 * a temporary file renamed into place.  Names must be unique and free of '"' and '\\'.  MN_ERR_IO on a write error
 * (naming the path). */
mn_err mn_st_write(const char *path, const mn_st_entry *e, int n, const char *const *meta_keys,
                   const char *const *meta_values, int nmeta);

#endif
