/* fuzz_ckpt: the checkpoint reader (src/io/ckpt.c) and the checkpoint description a run validates before any heavy
 * work (mn_train_ckpt_describe in src/train/checkpoint.c): `latest`, the format and step attributes, the identity
 * attributes (config text, corpus checksum, rank count), and arrays read with the type and length the caller
 * expects, over files with damaged attributes, shapes, dtypes and truncated or altered data.
 *
 * Structure-aware (fuzz_h5.h): the empty input is an intact checkpoint of a resnet10 run with one head, laid out as
 * mn_ckpt_write does (Fletcher-32 chunks, string attributes), which must open, describe and read; every non-zero
 * decision damages one attribute, one array or the file's bytes, and the `latest` pointer may be replaced by text
 * from the input.  Any outcome but a crash, a sanitizer report, a leak or a hang is acceptable for damaged files. */
#include "fuzz_h5.h"
#include "mednet/ckpt.h"
#include "mednet/mem.h"
#include "train/train_impl.h"

#include <sys/stat.h>

#define NPARAM 24
#define NBN 6

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_quiet();
    return 0;
}

static void write_ckpt(fz_reader *r, const char *path)
{
    fz_h5 h = {.r = r};
    hid_t f = fz_h5_create(path);
    fz_attr_i64(&h, f, "step", 7);
    fz_attr_str(&h, f, "format", "mednet-checkpoint-1", 0, 0);
    fz_attr_str(&h, f, "mednet_version", "0.1.0", 0, 0);
    fz_attr_str(&h, f, "config", "[model]\ndepth = 10\nshortcut = B\n\n[train]\nsteps = 10\n", 0, 0);
    fz_attr_str(&h, f, "corpus_checksum", "12345678", 0, 0);
    fz_attr_str(&h, f, "nranks", "2", 0, 0);
    fz_attr_str(&h, f, "steps_done", "7", 0, 0);
    float params[NPARAM], bn[NBN];
    for (int i = 0; i < NPARAM; i++) params[i] = (float)i / 7;
    for (int i = 0; i < NBN; i++) bn[i] = 1 + (float)i;
    int64_t updates = 7;
    hid_t enc = H5Gcreate2(f, "encoder", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t np = NPARAM, nb = NBN, one = 1, chunk = 16;
    fz_dataset(&h, enc, "params", H5T_NATIVE_FLOAT, 1, &np, params, &chunk);
    fz_dataset(&h, enc, "bn", H5T_NATIVE_FLOAT, 1, &nb, bn, &chunk);
    fz_dataset(&h, enc, "updates", H5T_NATIVE_INT64, 1, &one, &updates, &one);
    H5Gclose(enc);
    hid_t heads = H5Gcreate2(f, "heads", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t hd = H5Gcreate2(heads, "alpha", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    fz_dataset(&h, hd, "params", H5T_NATIVE_FLOAT, 1, &np, params, &chunk);
    H5Gclose(hd);
    H5Gclose(heads);
    if (H5Fclose(f) < 0) abort();
    fz_h5_damage_file(&h, path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_reader r = {data, size, 0};
    char dir[512], path[600], lp[600];
    fz_path(dir, sizeof dir, "ckpt", ".d");
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/ckpt-7.h5", dir);
    snprintf(lp, sizeof lp, "%s/latest", dir);
    write_ckpt(&r, path);
    /* `latest`: intact, or text from the input. */
    char latest[300] = "ckpt-7.h5\n";
    if (fz_u8(&r) == 1) fz_text(&r, latest, sizeof latest);
    fz_write_file(lp, latest, strlen(latest));

    char found_path[4096];
    int found = 0;
    mn_err e = mn_ckpt_latest(dir, found_path, sizeof found_path, &found);
    if (size == 0 && (e != MN_OK || !found)) abort();
    mn_ckpt_desc d;
    e = mn_train_ckpt_describe(path, &d);
    if (size == 0 && (e != MN_OK || d.depth != 10 || d.step != 7 || d.nranks != 2)) abort();
    mn_ckpt *c = NULL;
    if (mn_ckpt_open(path, &c) == MN_OK) {
        static const char *const names[] = {"encoder/params", "encoder/bn", "encoder/updates", "heads/alpha/params",
                                            "heads/beta/params", "encoder", "encoder/params/x"};
        for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++) {
            int ex = 0;
            mn_ckpt_type t;
            size_t n = 0;
            (void)mn_ckpt_info(c, names[i], &ex, &t, &n);
        }
        float params[NPARAM], bn[NBN], hp[NPARAM];
        int64_t updates = 0;
        mn_ckpt_array a[4] = {{"encoder/params", MN_CKPT_F32, params, NPARAM},
                              {"encoder/bn", MN_CKPT_F32, bn, NBN},
                              {"encoder/updates", MN_CKPT_I64, &updates, 1},
                              {"heads/alpha/params", MN_CKPT_F32, hp, NPARAM}};
        e = mn_ckpt_read(c, a, 4);
        if (size == 0 && (e != MN_OK || updates != 7 || bn[5] != 6)) abort();
        char *v = NULL;
        if (mn_ckpt_attr_get(c, "mednet_version", &v) == MN_OK) mn_free(&v);
        mn_ckpt_close(&c);
    } else if (size == 0) {
        abort();
    }
    unlink(lp);
    unlink(path);
    rmdir(dir);
    return 0;
}
