/* limits.h: the size limits mednet applies to the files it reads, checked against what a header or attribute
 * CLAIMS before anything is allocated or read, so that a corrupt or hostile file is refused with a message naming
 * it instead of being attempted (a NIfTI header claiming 2^40 voxels would otherwise ask malloc for terabytes).
 * README.md ("Trust and limits") lists them for users; raise one here if real data ever needs it.
 */
#ifndef MEDNET_LIMITS_H
#define MEDNET_LIMITS_H

#include <stdint.h>

/* Voxels of one volume, NIfTI input or corpus volume: 2^31 (8 GiB as float32).  The largest scans in use (a
 * 512x512x2000 whole-body CT) have about 2^29. */
#define MN_MAX_VOLUME_VOXELS ((int64_t)1 << 31)

/* One axis of a volume (a NIfTI-2 header stores 64-bit extents). */
#define MN_MAX_VOLUME_EXTENT ((int64_t)1 << 20)

/* A safetensors file, which is read whole into memory: 16 GiB (MedicalNet's resnet200 is about 0.3 GiB). */
#define MN_MAX_SAFETENSORS_BYTES ((int64_t)16 << 30)

/* A checkpoint string attribute (the config text is the largest, a few KiB): 64 MiB. */
#define MN_MAX_CKPT_ATTR_BYTES ((int64_t)64 << 20)

/* Datasets of a corpus (the metadata tables are sized from the file's count before its groups are read). */
#define MN_MAX_CORPUS_DATASETS 4096

/* A config file: 16 MiB. */
#define MN_MAX_CONFIG_BYTES ((int64_t)16 << 20)

#endif
