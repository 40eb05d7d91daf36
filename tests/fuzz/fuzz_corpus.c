/* fuzz_corpus: the corpus reader (src/data/corpus_read.c and corpus_h5.c): mn_corpus_open (the POSIX check, rank
 * 0's metadata read, the broadcasts) and mn_shard_load (the MPI-IO open, independent reads, CRC checks), on one
 * MPI rank, over corpus files with damaged attributes, shapes, dtypes and truncated or altered data.
 *
 * Structure-aware (fuzz_h5.h): the input is a list of decisions.  The harness writes a corpus of 1 or 2 datasets
 * with 1 or 2 small volumes each, exactly as `mednet prep` lays it out (corpus.h), applying each decision to the
 * attribute or dataset it belongs to, closes the file, damages its bytes as the last decisions say, and opens it.
 * The empty input is an intact corpus, which must open and load; any other outcome must be an error return (the
 * sanitizers and libFuzzer catch crashes, leaks, overruns and hangs). */
#include "data/corpus_impl.h"
#include "fuzz_h5.h"
#include "mednet/corpus.h"

#include <mpi.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_quiet();
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited && MPI_Init(NULL, NULL) != MPI_SUCCESS) abort();
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return 0;
}

/* Write the corpus described by the decisions in r to path. */
static void write_corpus(fz_reader *r, const char *path)
{
    fz_h5 h = {.r = r};
    hid_t f = fz_h5_create(path);
    int nd = 1 + (fz_u8(r) & 1);
    static const char *const dnames[2] = {"alpha", "beta"};
    char names[2 * MN_CORPUS_NAME_LEN] = {0};
    for (int d = 0; d < nd; d++) snprintf(names + d * MN_CORPUS_NAME_LEN, MN_CORPUS_NAME_LEN, "%s", dnames[d]);
    fz_attr_i64(&h, f, "format_version", MN_CORPUS_FORMAT);
    fz_attr_str(&h, f, "mednet_version", "0.1.0", 0, 0);
    fz_attr_str(&h, f, "name", "fuzz", 0, 0);
    fz_attr_i64(&h, f, "num_datasets", nd);
    fz_attr_str(&h, f, "datasets", names, MN_CORPUS_NAME_LEN, nd);
    fz_attr_u32(&h, f, "checksum", 0x12345678u);
    for (int d = 0; d < nd; d++) {
        if (fz_u8(r) == 1) continue; /* the group is missing */
        hid_t g = H5Gcreate2(f, dnames[d], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        int nv = 1 + (fz_u8(r) & 1);
        char cls[2 * MN_CORPUS_NAME_LEN] = "background\0";
        snprintf(cls + MN_CORPUS_NAME_LEN, MN_CORPUS_NAME_LEN, "organ");
        double spacing[3] = {1, 1, 2};
        fz_attr_str(&h, g, "name", dnames[d], 0, 0);
        fz_attr_str(&h, g, "modality", "MR", 0, 0);
        fz_attr_str(&h, g, "role", d ? "target" : "pretrain", 0, 0);
        fz_attr_i64(&h, g, "num_classes", 2);
        fz_attr_str(&h, g, "class_names", cls, MN_CORPUS_NAME_LEN, 2);
        fz_attr_num(&h, g, "spacing", H5T_NATIVE_DOUBLE, 8, spacing, 3);
        /* The dataset's preprocessing record (what `mednet infer` repeats). */
        double clip[2] = {-5, 5}, mean = 0, sd = 1;
        fz_attr_str(&h, g, "normalisation", "zscore", 0, 0);
        fz_attr_num(&h, g, "norm_clip", H5T_NATIVE_DOUBLE, 8, clip, 2);
        fz_attr_num(&h, g, "norm_mean", H5T_NATIVE_DOUBLE, 8, &mean, 1);
        fz_attr_num(&h, g, "norm_std", H5T_NATIVE_DOUBLE, 8, &sd, 1);
        fz_attr_i64(&h, g, "antialias", 1);
        fz_attr_i64(&h, g, "num_volumes", nv);
        for (int v = 0; v < nv; v++) {
            char vn[32];
            snprintf(vn, sizeof vn, "vol_%04d", v);
            if (fz_u8(r) == 1) continue;
            hid_t vg = H5Gcreate2(g, vn, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
            hsize_t dims[3] = {3 + (hsize_t)v, 4, 5 + (hsize_t)d}, chunk[3] = {2, 4, 4};
            size_t n = (size_t)(dims[0] * dims[1] * dims[2]);
            float img[5 * 4 * 7];
            uint8_t lab[5 * 4 * 7];
            for (size_t i = 0; i < n; i++) img[i] = (float)i * 0.25f - 3, lab[i] = (uint8_t)(i % 3 == 0);
            double fg = 0.3;
            fz_attr_num(&h, vg, "foreground_share", H5T_NATIVE_DOUBLE, 8, &fg, 1);
            fz_attr_u32(&h, vg, "data_crc32", mn_corpus_data_crc(img, lab, (int64_t)n));
            fz_dataset(&h, vg, "image", H5T_NATIVE_FLOAT, 3, dims, img, chunk);
            fz_dataset(&h, vg, "label", H5T_NATIVE_UINT8, 3, dims, lab, chunk);
            H5Gclose(vg);
        }
        H5Gclose(g);
    }
    if (H5Fclose(f) < 0) abort();
    fz_h5_damage_file(&h, path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_reader r = {data, size, 0};
    char path[512];
    fz_path(path, sizeof path, "corpus", ".h5");
    write_corpus(&r, path);
    mn_corpus_info *info = NULL;
    mn_err e = mn_corpus_open(MPI_COMM_WORLD, path, &info);
    if (size == 0 && e != MN_OK) abort(); /* the intact corpus must open */
    for (int role = 0; !e && role < 2; role++) {
        mn_shard_plan *plan = NULL;
        mn_shard *shard = NULL;
        if (mn_shard_assign(info, 1, 0, (mn_role)role, &plan) != MN_OK) continue;
        mn_err le = mn_shard_load(MPI_COMM_WORLD, info, plan, &shard);
        if (size == 0 && le != MN_OK) abort();
        mn_shard_destroy(&shard);
        mn_shard_plan_destroy(&plan);
    }
    mn_corpus_info_destroy(&info);
    unlink(path);
    return 0;
}
