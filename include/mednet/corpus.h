/* corpus.h: the aggregated pre-training corpus: its definition (INI), `mednet prep` (NIfTI -> one parallel-HDF5
 * file), the metadata reader, the deterministic shard assignment and the per-rank shard loader.
 *
 * Corpus file layout (format version MN_CORPUS_FORMAT; every name below is readable with h5dump or h5py):
 *
 *   /                       attrs: format_version (int), mednet_version, name, num_datasets, datasets (names,
 *                                  fixed-length strings in corpus order), checksum (uint32, the corpus identity),
 *                                  checksum_hex
 *   /<dataset>/             attrs: name, modality ("MR", "CT", "other"), role ("pretrain" or "target"),
 *                                  num_classes, class_names, spacing (double[3], x,y,z mm), normalisation,
 *                                  label_map (text), num_volumes, skipped (pairs skipped with --skip-bad) and
 *                                  skipped_pairs ("image | label | reason" lines),
 *                                  norm_clip (double[2]) and norm_mean/norm_std for dataset-level (CT) statistics,
 *                                  task ("segmentation" or "classification"; absent in older files = segmentation)
 *   /<dataset>/vol_0000/    attrs: source_image, source_label, image_bytes, label_bytes, image_crc32, label_crc32,
 *                                  source_dim_image (int64[3]), source_spacing (double[3]), affine_source,
 *                                  affine (double[4][4]: voxel (i,j,k,1) -> world mm of the stored grid),
 *                                  norm_mean, norm_std, norm_clip (double[2]), foreground_share, data_crc32,
 *                                  antialias_sigma (double[3], voxels of the source axes; 0 = not filtered),
 *                                  class (int32, classification datasets only: the volume's class, 0..num_classes-1)
 *   /<dataset>/vol_0000/image   float32 (D, H, W) = (z, y, x), chunked
 *   /<dataset>/vol_0000/label   uint8   (D, H, W): class index, 0 = background
 *
 * Everything in the file is a deterministic function of the inputs and the definition, so 1, 2 and 4 ranks
 * produce the same file contents (h5diff finds no difference); nothing rank- or time-dependent is stored.
 */
#ifndef MEDNET_CORPUS_H
#define MEDNET_CORPUS_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include "mednet/config.h"
#include "mednet/error.h"
#include "mednet/preprocess.h"

#define MN_CORPUS_FORMAT 1
#define MN_CORPUS_MAX_CLASSES 32
#define MN_CORPUS_NAME_LEN 64
#define MN_CORPUS_MAX_RANGES 256

typedef enum mn_modality { MN_MOD_MR = 0, MN_MOD_CT, MN_MOD_OTHER } mn_modality;
/* MN_ROLE_EXCLUDED is never stored: a run marks the datasets its corpus.datasets list leaves out. */
typedef enum mn_role { MN_ROLE_PRETRAIN = 0, MN_ROLE_TARGET, MN_ROLE_EXCLUDED } mn_role;
/* What a dataset's labels are: a label volume per image (segmentation), or one class per volume (classification:
 * the label volume is still stored and used only to centre crops on foreground). */
typedef enum mn_task { MN_TASK_SEG = 0, MN_TASK_CLS } mn_task;

/* ---- the definition: one [corpus] section and one section per dataset ---------------------------------------
 *
 *   [corpus]  name, output, root (prefix of relative paths), spacing (1 or 3 numbers, mm; default: per dataset),
 *             chunk (largest chunk edge in voxels, default 32; evened out per axis), compress (gzip level 0..9,
 *             1 rank only), skip_bad, affine_tolerance (mm, default 1e-3), mpiio_hints (MPI-IO hints for the
 *             file's parallel create, "key=value, ...": striping_factor, striping_unit, romio_cb_write, ...).  configs/corpus_example.ini documents
 *             every key.
 *   [<name>]  image, label (a file, a comma-separated list or a glob each; paired in sorted order), modality
 *             (MR | CT | other), role (pretrain | target), classes (comma-separated names, background first),
 *             label_map ("code:class" or "lo-hi:class", comma-separated; default identity), label_grid
 *             (same | world), spacing, normalisation (zscore | ct | window | none; default zscore, ct for CT),
 *             window (lo, hi), crop (bool, default true), antialias (bool, default true), task (segmentation |
 *             classification), class_labels (classification: a CSV file of `subject,label` rows, the subject being
 *             the image file name without .nii/.nii.gz, the label an integer in 0..classes-1)
 */
typedef struct mn_dataset_def {
    char name[MN_CORPUS_NAME_LEN];
    mn_modality modality;
    mn_role role;
    int num_classes;
    char class_names[MN_CORPUS_MAX_CLASSES][MN_CORPUS_NAME_LEN];
    int num_ranges;
    mn_label_range ranges[MN_CORPUS_MAX_RANGES];
    char label_map_text[2048];
    int label_grid;   /* 1: label resampled through world coordinates; 0: grids must match */
    int has_spacing;
    double spacing[3];
    mn_norm normalisation;
    double window[2];
    int crop;
    int antialias;          /* Gaussian low-pass before downsampling an image (mn_antialias) */
    mn_task task;
    char class_labels[1024];/* classification: the CSV file of `subject,label` rows (relative to root) */
    char image_pattern[1024], label_pattern[1024];
    int num_pairs;          /* after mn_corpus_def_expand */
    char **images, **labels;
    int *pair_class;        /* after mn_corpus_def_expand, classification only: the class of each pair */
} mn_dataset_def;

typedef struct mn_corpus_def {
    char name[MN_CORPUS_NAME_LEN];
    char output[1024];
    char root[1024];
    int has_spacing;
    double spacing[3];
    int chunk;
    int compress;
    int skip_bad;
    double affine_tolerance;
    char mpiio_hints[1024];  /* MPI-IO hints for the parallel create ("key=value, ..."), "" = none */
    int num_datasets;
    mn_dataset_def *datasets;
} mn_corpus_def;

/* Read a corpus definition from a parsed config; every key is read, then mn_config_check_unused makes unknown
 * keys errors.  Not collective (call it on every rank with the same broadcast text).  MN_ERR_CONFIG naming the
 * section and key on bad values. */
mn_err mn_corpus_def_from_config(mn_config *cfg, mn_corpus_def **out);

/* Rank 0 reads the file and broadcasts its text; every rank parses it, applies `overrides` (n of
 * "section.key=value") and builds the definition.  Collective on comm; a bad file gives the same error on every
 * rank. */
mn_err mn_corpus_def_load(MPI_Comm comm, const char *path, char **overrides, int noverrides, mn_corpus_def **out);

/* Expand the image/label patterns (globs, lists) on rank 0 and broadcast the file lists, and for a classification
 * dataset each image's class from its class_labels CSV.  Collective.  A pattern matching nothing, different image
 * and label counts, or a CSV problem (an image without a row, a label that is not an integer in 0..classes-1, a
 * subject listed twice; the message names the CSV file and the row or subject) is an error on every rank. */
mn_err mn_corpus_def_expand(MPI_Comm comm, mn_corpus_def *def);

void mn_corpus_def_destroy(mn_corpus_def **def);

/* ---- prep ---------------------------------------------------------------------------------------------------- */

typedef struct mn_prep_options {
    const char *output;  /* overrides [corpus] output when not NULL */
    int force;           /* replace an existing corpus */
    int skip_bad;        /* 1: a bad pair is a warning and skipped; -1: use the definition's skip_bad */
} mn_prep_options;

typedef struct mn_prep_summary {
    int volumes_written, pairs_skipped;
    int64_t bytes_read;      /* NIfTI bytes read */
    int64_t bytes_written;   /* voxel bytes written */
    double seconds;
    uint32_t checksum;
} mn_prep_summary;

/* Build the corpus: volumes are spread round-robin over the ranks of comm, each rank preprocesses its own in
 * memory, the metadata is combined, the file is created collectively at "<output>.tmp" with the MPI-IO driver,
 * each rank writes its volumes (independent writes), and rank 0 renames it to <output>.
 * Collective on comm.  Checks before the write (an existing output without opt->force, an output directory some
 * rank cannot write to, the definition) and input errors (bad files, labels, grids) are agreed (mn_err_is_agreed)
 * by all ranks before any file is created, so they return the same error everywhere and leave nothing behind; an
 * existing output is never touched without opt->force.  A failed rename is agreed too.  Errors inside the HDF5
 * write phase may differ between ranks and are not agreed: the caller aborts. */
mn_err mn_corpus_prep(MPI_Comm comm, const mn_corpus_def *def, const mn_prep_options *opt, mn_prep_summary *sum);

/* ---- reading ------------------------------------------------------------------------------------------------- */

typedef struct mn_corpus_volume {
    int dataset;            /* index into datasets */
    int index;              /* volume index within its dataset */
    int64_t shape[3];       /* D, H, W */
    double foreground_share;
    uint32_t data_crc32;
    int cls;                /* classification datasets: the volume's class; -1 otherwise */
} mn_corpus_volume;

typedef struct mn_corpus_dataset {
    char name[MN_CORPUS_NAME_LEN];
    char modality[16];
    mn_role role;
    mn_task task;
    int num_classes;
    char class_names[MN_CORPUS_MAX_CLASSES][MN_CORPUS_NAME_LEN];
    double spacing[3];
    mn_norm normalisation;  /* and its dataset-wide statistics (CT, window): */
    double norm_clip[2], norm_mean, norm_std;
    int antialias;          /* low-pass before downsampling */
    int num_volumes;
    int first_volume;       /* index of its first volume in mn_corpus_info.volumes */
} mn_corpus_dataset;

typedef struct mn_corpus_info {
    char path[1024];
    char name[MN_CORPUS_NAME_LEN];
    char mednet_version[32];
    int format_version;
    uint32_t checksum;      /* the corpus identity: store it in checkpoints */
    int num_datasets, num_volumes;
    mn_corpus_dataset *datasets;
    mn_corpus_volume *volumes;  /* dataset-major order */
} mn_corpus_info;

/* Open a corpus file and read its metadata: every rank first checks that it can read the file itself (POSIX open,
 * the HDF5 signature, the same size as on rank 0), then rank 0 reads the metadata (serial HDF5) and broadcasts it,
 * so thousands of ranks cost one reader.  `path` may differ between ranks (each checks its own; the metadata is
 * rank 0's).  Collective on comm.  Every error is agreed (mn_err_is_agreed): a file missing or unreadable on some
 * ranks (each failing rank names its path and the OS reason, rank 0 lists the failing ranks), a truncated or edited
 * file (a dataset or volume listed but missing, a wrong format version) give the same MN_ERR_IO/MN_ERR_FORMAT on
 * every rank; only a failing MPI call is not agreed. */
mn_err mn_corpus_open(MPI_Comm comm, const char *path, mn_corpus_info **out);

void mn_corpus_info_destroy(mn_corpus_info **info);

/* Print the per-dataset summary (volumes, shapes, spacing, classes, foreground share) to f. Not collective. */
void mn_corpus_print_summary(const mn_corpus_info *info, FILE *f);

/* ---- the preprocessing record --------------------------------------------------------------------------------
 *
 * What inference must repeat of prep for a dataset's model to see its kind of input: the grid spacing, the
 * intensity normalisation with its dataset-wide statistics, the anti-aliasing switch, and the classes.  Training
 * writes it into every checkpoint (attribute `preprocessing`) as INI text, one section per dataset of the run:
 *
 *   [<dataset>]
 *   classes = background, ...      class names, background first (their count is the head's class count)
 *   modality = MR                  MR | CT | other
 *   spacing = 2, 2, 2              mm along x, y, z
 *   normalisation = zscore         zscore | ct | window | none
 *   norm_clip = lo, hi             dataset statistics of ct / window (unused by zscore and none)
 *   norm_mean = m
 *   norm_std = s
 *   antialias = true
 *
 * Numbers are printed with 17 significant digits, so the record reads back bit for bit. */
typedef struct mn_prep_record {
    char name[MN_CORPUS_NAME_LEN];
    int num_classes;
    char class_names[MN_CORPUS_MAX_CLASSES][MN_CORPUS_NAME_LEN];
    char modality[16];
    double spacing[3];
    mn_norm normalisation;
    double norm_clip[2], norm_mean, norm_std;
    int antialias;
} mn_prep_record;

/* The record of dataset d of a corpus.  Not collective. */
void mn_prep_record_of(const mn_corpus_info *info, int d, mn_prep_record *out);

/* Append the INI section of `rec` to the malloc'ed text *text (NULL: start one).  MN_ERR_MEM.  Not collective. */
mn_err mn_prep_record_append(const mn_prep_record *rec, char **text);

/* Read section `name` of a parsed record text.  MN_ERR_CONFIG naming the key (origin: the checkpoint) when a key
 * is missing or malformed.  Not collective. */
mn_err mn_prep_record_read(mn_config *cfg, const char *name, mn_prep_record *out);

/* ---- shard assignment ---------------------------------------------------------------------------------------
 *
 * Rule (deterministic from (corpus, P, seed)): the datasets of the selected role are put in an order (corpus
 * order, or a permutation drawn from `seed` when seed != 0), their volumes concatenated dataset by dataset into a
 * list of V volumes, and the list cut into P contiguous blocks:
 *   V >= P: rank r holds volumes [floor(r*V/P), floor((r+1)*V/P)): every volume on exactly one rank, every rank
 *           at least one volume (so at least one dataset), shard sizes differ by at most one, and a dataset with
 *           n volumes spans at most ceil(n / floor(V/P)) + 1 ranks (contiguous blocks never scatter a dataset).
 *   V <  P: rank r holds volume floor(r*V/P): each volume is REPLICATED on floor(P/V) or ceil(P/V) consecutive
 *           ranks, every rank holds exactly one volume.
 * Contiguity keeps each dataset on as few (and consecutive) ranks as balanced shards allow, so the per-dataset
 * communicators are small. */
typedef struct mn_shard_item {
    int dataset;   /* corpus dataset index */
    int volume;    /* index into mn_corpus_info.volumes */
} mn_shard_item;

typedef struct mn_shard_plan {
    int nranks;
    int *offset;          /* nranks+1: items of rank r are items[offset[r] .. offset[r+1]) */
    mn_shard_item *items;
    int num_datasets;     /* corpus dataset count */
    int *holders_offset;  /* num_datasets+1: ranks holding dataset d are holders[holders_offset[d] .. +1) */
    int *holders;         /* ascending rank numbers; a dataset of another role has none */
} mn_shard_plan;

/* Build the plan for nranks ranks over the datasets whose role is `role`.  MN_ERR_ARG if there are none. */
mn_err mn_shard_assign(const mn_corpus_info *info, int nranks, uint64_t seed, mn_role role, mn_shard_plan **out);

void mn_shard_plan_destroy(mn_shard_plan **plan);

/* 1 if rank holds dataset d. */
int mn_shard_plan_holds(const mn_shard_plan *plan, int rank, int dataset);

/* Print the plan as two tables (rank -> datasets/volumes, dataset -> ranks). Not collective. */
void mn_shard_plan_print(const mn_shard_plan *plan, const mn_corpus_info *info, FILE *f);

/* One loaded volume of a shard. */
typedef struct mn_shard_volume {
    int dataset, volume;      /* as in mn_shard_item */
    int64_t shape[3];         /* D, H, W */
    int64_t chunk[3];         /* chunk extent in the file (mn_corpus_chunk_rule); 0: the whole volume is one chunk */
    float *image;             /* D*H*W floats */
    uint8_t *label;           /* D*H*W class indices */
    int cls_tag;              /* classification: the volume's class + 1; 0: none (so a zeroed entry is segmentation) */
} mn_shard_volume;

typedef struct mn_shard {
    int num_volumes;
    mn_shard_volume *volumes;
    int64_t bytes;            /* voxel bytes held by this rank */
} mn_shard;

/* Read this rank's volumes of `plan` from the corpus into memory.  Every rank first checks that it can read
 * info->path (as mn_corpus_open does); then the file is opened collectively with the MPI-IO driver on comm, each
 * rank reads its own volumes with independent reads and checks the CRC-32 of each against the file's data_crc32,
 * and the file is closed collectively.  Allocation, the open, the reads and the CRC checks are agreed: a corrupt
 * volume on any rank (named by file, dataset and volume on the rank that read it) gives the same agreed
 * MN_ERR_FORMAT on every rank.  File locking is disabled for the open (parallel file systems reject it) unless
 * HDF5_USE_FILE_LOCKING is set in the environment.  Collective on comm (size must equal plan->nranks).  Only a
 * failing MPI call gives an error that is not agreed (the caller aborts).  On error *out may hold a partly loaded
 * shard: release it with mn_shard_destroy. */
mn_err mn_shard_load(MPI_Comm comm, const mn_corpus_info *info, const mn_shard_plan *plan, mn_shard **out);

void mn_shard_destroy(mn_shard **shard);

#endif
