/* test_read_limits DIR (under mpiexec -n 1): corpus and checkpoint files whose attributes or shapes claim absurd
 * sizes are refused with a message naming the file, before anything of that size is allocated
 * (include/mednet/limits.h).  Copies of DIR/np1.h5 (written by test_corpus_np1) and of a small checkpoint are
 * edited with the HDF5 API:
 *   corpus:     num_datasets = 2^40; num_volumes = 2^40; one volume's image replaced by a chunked, never written
 *               float dataset of 2048^3 voxels (2^33, 32 GiB: HDF5 stores nothing for it, so the file stays small);
 *   checkpoint: `step` an int64[1000] array where a scalar belongs (H5Aread would write 8000 bytes into 8);
 *               `config` an array of 3 strings; a step < 0.
 * Each must fail with MN_ERR_FORMAT whose message names the file and the attribute or the limit. */
#include "mednet/ckpt.h"
#include "mednet/corpus.h"
#include "mednet/limits.h"
#include "mednet/mpicheck.h"
#include "test_util.h"

#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_tmp[64];

static void copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    TEST_EXPECT(a && b, "copy %s -> %s", from, to);
    if (!a || !b) exit(1);
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) TEST_EXPECT(fwrite(buf, 1, n, b) == n, "write %s", to);
    fclose(a);
    TEST_EXPECT(fclose(b) == 0, "close %s", to);
}

/* Replace attribute `name` of object `obj` in file `path` by an int64 attribute of n elements (scalar if n == 0)
 * all equal to v. */
static void set_i64_attr(const char *path, const char *obj, const char *name, int64_t v, hsize_t n)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t o = f >= 0 ? H5Oopen(f, obj, H5P_DEFAULT) : -1;
    TEST_EXPECT(o >= 0, "open %s in %s", obj, path);
    if (H5Aexists(o, name) > 0) H5Adelete(o, name);
    int64_t *vals = malloc(sizeof *vals * (n ? n : 1));
    for (hsize_t i = 0; i < (n ? n : 1); i++) vals[i] = v;
    hid_t sp = n ? H5Screate_simple(1, &n, NULL) : H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(o, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    TEST_EXPECT(a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, vals) >= 0, "write attribute %s", name);
    free(vals);
    H5Aclose(a);
    H5Sclose(sp);
    H5Oclose(o);
    H5Fclose(f);
}

static void expect_refused(mn_err e, const char *path, const char *what, const char *want)
{
    TEST_EXPECT(mn_err_code(e) == MN_ERR_FORMAT, "%s: expected MN_ERR_FORMAT, got %s", what, mn_err_name(e));
    TEST_EXPECT(strstr(mn_error_last(), path) && strstr(mn_error_last(), want), "%s: message '%s' lacks the file "
                "or '%s'", what, mn_error_last(), want);
    printf("  %s: refused: %s\n", what, mn_error_last());
}

static void test_corpus(const char *dir)
{
    char good[1100], bad[128];
    snprintf(good, sizeof good, "%s/np1.h5", dir);
    mn_corpus_info *info = NULL;
    TEST_EXPECT(mn_corpus_open(MPI_COMM_WORLD, good, &info) == MN_OK && info->num_datasets > 0, "open %s", good);
    if (!info) return;
    char ds[MN_CORPUS_NAME_LEN + 2], vol[160];
    snprintf(ds, sizeof ds, "/%s", info->datasets[0].name);
    snprintf(vol, sizeof vol, "/%s/vol_0000", info->datasets[0].name);
    mn_corpus_info_destroy(&info);

    snprintf(bad, sizeof bad, "%s/num_datasets.h5", g_tmp);
    copy_file(good, bad);
    set_i64_attr(bad, "/", "num_datasets", (int64_t)1 << 40, 0);
    expect_refused(mn_corpus_open(MPI_COMM_WORLD, bad, &info), bad, "num_datasets = 2^40", "num_datasets");
    TEST_EXPECT(info == NULL, "no corpus returned");

    snprintf(bad, sizeof bad, "%s/num_volumes.h5", g_tmp);
    copy_file(good, bad);
    set_i64_attr(bad, ds, "num_volumes", (int64_t)1 << 40, 0);
    expect_refused(mn_corpus_open(MPI_COMM_WORLD, bad, &info), bad, "num_volumes = 2^40", "num_volumes");

    /* An image claiming 2048^3 voxels; the label keeps its shape, so the limit must fire on the image itself. */
    snprintf(bad, sizeof bad, "%s/huge_volume.h5", g_tmp);
    copy_file(good, bad);
    hid_t f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t g = f >= 0 ? H5Gopen2(f, vol, H5P_DEFAULT) : -1;
    TEST_EXPECT(g >= 0 && H5Ldelete(g, "image", H5P_DEFAULT) >= 0, "delete %s/image", vol);
    hsize_t dims[3] = {2048, 2048, 2048}, chunk[3] = {32, 32, 32};
    hid_t sp = H5Screate_simple(3, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 3, chunk);
    hid_t d = H5Dcreate2(g, "image", H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    TEST_EXPECT(d >= 0, "create the 2048^3 image");
    H5Dclose(d), H5Pclose(dcpl), H5Sclose(sp), H5Gclose(g), H5Fclose(f);
    expect_refused(mn_corpus_open(MPI_COMM_WORLD, bad, &info), bad, "a 2048^3 volume", "limit");
}

static void test_ckpt(void)
{
    float w[4] = {1, 2, 3, 4};
    mn_ckpt_array a[1] = {{"encoder/params", MN_CKPT_F32, w, 4}};
    mn_ckpt_attr at[1] = {{"config", "[model]\ndepth = 10\n"}};
    char good[256], bad[128];
    TEST_EXPECT(mn_ckpt_write(g_tmp, 3, a, 1, at, 1, 0, good, sizeof good) == MN_OK, "write a checkpoint");
    mn_ckpt *c = NULL;
    TEST_EXPECT(mn_ckpt_open(good, &c) == MN_OK && mn_ckpt_step(c) == 3, "intact checkpoint opens");
    mn_ckpt_close(&c);

    snprintf(bad, sizeof bad, "%s/step_array.h5", g_tmp);
    copy_file(good, bad);
    set_i64_attr(bad, "/", "step", 5, 1000);
    expect_refused(mn_ckpt_open(bad, &c), bad, "step as int64[1000]", "1000 elements");
    TEST_EXPECT(c == NULL, "no checkpoint returned");

    snprintf(bad, sizeof bad, "%s/step_negative.h5", g_tmp);
    copy_file(good, bad);
    set_i64_attr(bad, "/", "step", -4, 0);
    expect_refused(mn_ckpt_open(bad, &c), bad, "step < 0", "step -4");

    snprintf(bad, sizeof bad, "%s/config_array.h5", g_tmp);
    copy_file(good, bad);
    hid_t f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
    TEST_EXPECT(f >= 0 && H5Adelete(f, "config") >= 0, "delete config");
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, 8);
    hsize_t n = 3;
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t at3 = H5Acreate2(f, "config", t, sp, H5P_DEFAULT, H5P_DEFAULT);
    TEST_EXPECT(at3 >= 0 && H5Awrite(at3, t, "[a]\0\0\0\0\0[b]\0\0\0\0\0[c]\0\0\0\0\0") >= 0, "write config[3]");
    H5Aclose(at3), H5Sclose(sp), H5Tclose(t), H5Fclose(f);
    TEST_EXPECT(mn_ckpt_open(bad, &c) == MN_OK, "open (format and step are intact)");
    char *v = NULL;
    if (c) expect_refused(mn_ckpt_attr_get(c, "config", &v), bad, "config as 3 strings", "3 elements");
    TEST_EXPECT(v == NULL, "no value returned");
    mn_ckpt_close(&c);
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    if (argc < 2) {
        fprintf(stderr, "usage: test_read_limits DIR\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mn_limits_XXXXXX");
    if (!mkdtemp(g_tmp)) return 1;
    mn_error_set_quiet(1);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    printf("corpus (limits: %d datasets, %lld voxels per volume):\n", MN_MAX_CORPUS_DATASETS,
           (long long)MN_MAX_VOLUME_VOXELS);
    test_corpus(argv[1]);
    printf("checkpoint:\n");
    test_ckpt();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    int rc = mn_test_finish("test_read_limits");
    MPI_Finalize();
    return rc;
}
