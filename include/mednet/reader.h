/* reader.h: the shard reader: the voxels of one rank's volumes, read on demand through a bounded cache.
 *
 * A reader serves boxes (axis-aligned sub-arrays) of the image and label of the volumes of one rank's shard, from
 * one of two backends:
 *   file    the corpus file (mednet/corpus.h), opened lazily with HDF5's serial (POSIX) driver by this rank alone;
 *           boxes are assembled from whole chunks of the stored datasets (each chunk read with a chunk-aligned
 *           hyperslab selection, an independent read: no rank waits for another), held in an LRU cache of at most
 *           `cache_bytes` (0: no bound, the cache grows to the whole shard).  HDF5's own chunk cache is turned off so
 *           that a chunk is held once.
 *   memory  an mn_shard already in memory (mn_shard_load): the special case "the cache holds the shard".
 * Both backends give the same bytes for the same box, and the same foreground index (below), so a sampler over
 * either gives bitwise identical crops.
 *
 * Foreground index: the sampler draws a foreground voxel as "a class present in the volume, uniformly, then the
 * k-th voxel of that class".  Voxels are counted in CHUNK ORDER (chunks z-major, then y, then x; raster order inside
 * a chunk), so the k-th voxel is found from per-chunk class counts plus one chunk of labels, without holding the
 * volume.  The counts are built the first time a volume's foreground is asked for, by reading its labels once
 * (1 byte per voxel); they take (chunks x classes present) 32-bit counts per volume and are not evicted.  An
 * in-memory shard without chunk geometry (mn_shard_volume.chunk = 0) counts the whole volume as one chunk, which is
 * plain raster order.
 *
 * Threads: a reader is not thread-safe.  Debian's parallel HDF5 is built without thread safety, so one thread at a
 * time may call into a file reader, and no other thread may call HDF5 while it does (mednet/prefetch.h arranges
 * this).  A reader makes no MPI call: it needs no more than MPI_THREAD_FUNNELED from a helper thread.
 *
 * Integrity: both backends check each volume's data_crc32 before its first crop: the in-memory loader as it loads,
 * a file reader when it first opens the volume (one whole read of its image and label into a temporary buffer that
 * does not count against the cache).  HDF5 read errors (a truncated or damaged chunk) name the file, dataset and
 * volume.
 */
#ifndef MEDNET_READER_H
#define MEDNET_READER_H

#include <stdint.h>
#include "mednet/corpus.h"
#include "mednet/error.h"

typedef struct mn_reader mn_reader;

/* Per-volume foreground index: classes present (ascending) and their voxel counts per chunk. */
typedef struct mn_reader_fg {
    int64_t n;                 /* foreground voxels (label > 0) */
    int nclasses;              /* foreground classes present */
    int classes[255];          /* their labels, ascending */
    int64_t total[255];        /* voxels of each present class */
    int nchunks;
    int32_t *count;            /* [nchunks][nclasses]: voxels of classes[c] in chunk j */
} mn_reader_fg;

typedef struct mn_reader_stats {
    int64_t hits, misses;      /* chunk look-ups served from the cache / read from the file */
    int64_t bytes_read;        /* voxel bytes read from the file */
    int64_t cache_bytes;       /* voxel bytes held now */
    int64_t cache_peak;        /* most voxel bytes ever held */
    int64_t index_bytes;       /* foreground-index bytes held (not bounded by the cache) */
    double read_seconds;       /* time inside H5Dread */
} mn_reader_stats;

/* A file reader over rank `rank`'s volumes of `plan` in info->path, with a cache of at most cache_bytes (0: no
 * bound).  Opens nothing yet (the first read opens the file).  Not collective, no MPI call.  info and plan are
 * borrowed and must outlive the reader.  MN_ERR_ARG/MN_ERR_MEM on bad arguments or memory. */
mn_err mn_reader_create_file(const mn_corpus_info *info, const mn_shard_plan *plan, int rank, int64_t cache_bytes,
                             mn_reader **out);

/* A memory reader over a loaded shard (borrowed).  Not collective. */
mn_err mn_reader_create_memory(const mn_shard *shard, mn_reader **out);

/* Close the file (if open) and free everything.  Calls HDF5: same thread rule as the reads. */
void mn_reader_destroy(mn_reader **rd);

int mn_reader_num_volumes(const mn_reader *rd);
/* Shape (D, H, W) and corpus dataset index of shard volume k. */
const int64_t *mn_reader_shape(const mn_reader *rd, int k);
int mn_reader_dataset(const mn_reader *rd, int k);
/* Class of shard volume k when its dataset is a classification dataset, -1 otherwise. */
int mn_reader_class(const mn_reader *rd, int k);

/* Voxel bytes of the whole shard (image + label). */
int64_t mn_reader_shard_bytes(const mn_reader *rd);

/* Copy the box [lo, hi) (each lo[a] < hi[a] inside the volume) of shard volume k: image into img and labels into
 * lab (either may be NULL), both (hi-lo) boxes in raster order, overwritten.  Not collective.  Errors: MN_ERR_ARG for
 * a box outside the volume, MN_ERR_FORMAT naming the file, dataset and volume when a chunk cannot be read or has
 * another shape than the metadata says, MN_ERR_MEM. */
mn_err mn_reader_box(mn_reader *rd, int k, const int64_t lo[3], const int64_t hi[3], float *img, uint8_t *lab);

/* The foreground index of shard volume k (built on first use, see above); *fg is owned by the reader. */
mn_err mn_reader_foreground(mn_reader *rd, int k, const mn_reader_fg **fg);

/* Position (z, y, x) of the idx-th voxel (0 <= idx < fg->total[c]) of present class number c (an index into
 * fg->classes) of volume k, in chunk order.  Reads one chunk of labels. */
mn_err mn_reader_fg_voxel(mn_reader *rd, int k, int c, int64_t idx, int64_t pos[3]);

/* Counters since creation. */
void mn_reader_get_stats(const mn_reader *rd, mn_reader_stats *st);

#endif
