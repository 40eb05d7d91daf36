/* test_safetensors: the safetensors reader/writer and the model's import/export.
 *  - bit-exact round trip of a two-head resnet10 (parameters, BN buffers) through a file, strict mode;
 *  - encoder-only export loaded non-strictly into a model with heads (missing tensors reported), strict refusal;
 *  - the "module." prefix of MedicalNet's DataParallel checkpoints; unexpected, mis-shaped and wrong-dtype tensors
 *    named in the error; a failed strict import leaves the model unchanged;
 *  - corrupt files: every truncation of a valid file, a huge header length, malformed JSON, overlapping offsets,
 *    a hole, a size that does not match the shape, duplicate names, and 3000 random byte corruptions of the header:
 *    each rejected with MN_ERR_FORMAT and a message giving the byte offset or the tensor, never a crash (run the
 *    MN_SANITIZE build to see that no byte outside the buffer is read). */
#include "mednet/limits.h"
#include "mednet/model.h"
#include "mednet/safetensors.h"
#include "test_util.h"

#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

static char dir[64];

static mn_model *make(const mn_head_spec *h, int nh, uint64_t seed)
{
    mn_model_config c = mn_model_config_default();
    c.depth = 10;
    c.nheads = nh;
    c.heads = h;
    c.prefix_heads = 1;
    c.seed = seed;
    mn_model *m = NULL;
    TEST_EXPECT(mn_model_create(&c, &m) == MN_OK, "create");
    return m;
}

static void path(char *buf, const char *name) { snprintf(buf, 256, "%s/%s", dir, name); }

/* Write the model's tensors under a transformed name / dtype. */
static mn_err write_variant(const mn_model *m, const char *file, const char *prefix, const char *skip,
                            const char *extra, const char *as_f64)
{
    int n = mn_model_num_tensors(m), k = 0;
    mn_st_entry *e = calloc((size_t)n + 1, sizeof *e);
    char (*names)[128] = calloc((size_t)n + 1, sizeof *names);
    static double f64[64];
    for (int i = 0; i < n; i++) {
        const mn_tensor_info *t = mn_model_tensor(m, i);
        if (skip && !strcmp(t->name, skip)) continue;
        snprintf(names[k], sizeof names[k], "%s%s", prefix, t->name);
        e[k].name = names[k];
        e[k].dtype = MN_ST_F32;
        e[k].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[k].shape[d] = t->shape[d];
        e[k].data = (t->kind == MN_TENSOR_PARAM ? mn_model_params((mn_model *)m) : mn_model_bn_buffers((mn_model *)m)) +
                    t->offset;
        if (as_f64 && !strcmp(t->name, as_f64)) {
            e[k].dtype = MN_ST_F64;
            e[k].data = f64; /* shape must fit: used on a 64-element tensor */
        }
        k++;
    }
    if (extra) {
        e[k].name = extra;
        e[k].dtype = MN_ST_F32;
        e[k].ndim = 1;
        e[k].shape[0] = 2;
        e[k].data = f64;
        k++;
    }
    mn_err err = mn_st_write(file, e, k, NULL, NULL, 0);
    free(e);
    free(names);
    return err;
}

static unsigned char *read_all(const char *p, size_t *len)
{
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

/* Build a file image from a header string and `data` bytes of zeros. */
static unsigned char *image(const char *header, size_t data, size_t *len)
{
    size_t h = strlen(header);
    unsigned char *b = calloc(8 + h + data + 1, 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    *len = 8 + h + data;
    return b;
}

static void expect_bad(const char *label, const char *header, size_t data, const char *want)
{
    size_t len;
    unsigned char *b = image(header, data, &len);
    mn_safetensors *st = NULL;
    mn_err e = mn_st_parse(b, len, "t.safetensors", &st);
    TEST_EXPECT(e == MN_ERR_FORMAT && !st, "%s: accepted (%d)", label, (int)e);
    TEST_EXPECT(strstr(mn_error_last(), want) != NULL, "%s: message '%s' lacks '%s'", label, mn_error_last(), want);
    mn_st_close(&st);
    free(b);
}

/* Size limits, checked before allocation: a header claiming a 4 TiB tensor (from a file, so the message names
 * it), and a (sparse) file of more than MN_MAX_SAFETENSORS_BYTES, refused before it is read into memory. */
static void test_size_limits(void)
{
    char p[256], big[256];
    path(p, "terabytes.safetensors");
    const char *hdr = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1024,1024,1024,1024],"
                      "\"data_offsets\":[0,4398046511104]}}";
    size_t len;
    unsigned char *b = image(hdr, 16, &len);
    FILE *f = fopen(p, "wb");
    TEST_EXPECT(f && fwrite(b, 1, len, f) == len && fclose(f) == 0, "write %s", p);
    free(b);
    mn_safetensors *st = NULL;
    TEST_EXPECT(mn_st_open(p, &st) == MN_ERR_FORMAT && !st, "4 TiB tensor refused");
    TEST_EXPECT(strstr(mn_error_last(), p) && strstr(mn_error_last(), "past the end"), "msg: %s", mn_error_last());
    path(big, "huge_file.safetensors");
    int fd = open(big, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    TEST_EXPECT(fd >= 0 && ftruncate(fd, (off_t)MN_MAX_SAFETENSORS_BYTES + 8) == 0 && close(fd) == 0,
                "sparse file of %lld bytes", (long long)MN_MAX_SAFETENSORS_BYTES + 8);
    TEST_EXPECT(mn_st_open(big, &st) == MN_ERR_FORMAT && !st, "oversized file refused");
    TEST_EXPECT(strstr(mn_error_last(), big) && strstr(mn_error_last(), "limit"), "msg: %s", mn_error_last());
    unlink(big);
    unlink(p);
    printf("size limits: a 4 TiB tensor claim and a %lld-byte file refused before allocation, naming the file\n",
           (long long)MN_MAX_SAFETENSORS_BYTES + 8);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/mn_st_XXXXXX");
    if (!mkdtemp(dir)) return 1;
    char p1[256], p2[256], p3[256];
    path(p1, "full.safetensors");
    path(p2, "enc.safetensors");
    path(p3, "variant.safetensors");

    /* Round trip, bit-exact. */
    mn_head_spec heads[2] = {{0, 3}, {4, 2}};
    mn_model *a = make(heads, 2, 1), *b = make(heads, 2, 2);
    mn_test_rng r = {42};
    mn_test_fill(&r, mn_model_bn_buffers(a), mn_model_num_bn_buffers(a), 1.0f);
    TEST_EXPECT(mn_model_save_safetensors(a, p1, -2) == MN_OK, "save");
    TEST_EXPECT(memcmp(mn_model_params(a), mn_model_params(b), 4096) != 0, "seeds differ");
    mn_import_report rep;
    mn_model_set_bn_batches(a, -1, 17);
    mn_model_set_bn_batches(a, 1, 5);
    TEST_EXPECT(mn_model_save_safetensors(a, p1, -2) == MN_OK, "save");
    TEST_EXPECT(mn_model_load_safetensors(b, p1, 1, &rep) == MN_OK, "strict load");
    TEST_EXPECT(mn_model_bn_batches(b, -1) == 17 && mn_model_bn_batches(b, 1) == 5 && mn_model_bn_batches(b, 0) == 0,
                "num_batches_tracked restored per part");
    TEST_EXPECT(rep.loaded == mn_model_num_tensors(a) && !rep.missing && !rep.unexpected && !rep.mis_shaped,
                "report: loaded %d of %d", rep.loaded, mn_model_num_tensors(a));
    TEST_EXPECT(!memcmp(mn_model_params(a), mn_model_params(b), mn_model_num_params(a) * sizeof(float)) &&
                    !memcmp(mn_model_bn_buffers(a), mn_model_bn_buffers(b), mn_model_num_bn_buffers(a) * sizeof(float)),
                "round trip bit-exact");
    mn_safetensors *st = NULL;
    TEST_EXPECT(mn_st_open(p1, &st) == MN_OK, "reopen");
    const mn_st_tensor *t = mn_st_find(st, "heads.4.conv_seg.1.num_batches_tracked");
    TEST_EXPECT(t && t->dtype == MN_ST_I64 && t->ndim == 0, "num_batches_tracked as I64 scalar");
    t = mn_st_find(st, "layer2.0.downsample.0.weight");
    TEST_EXPECT(t && t->ndim == 5 && t->shape[0] == 128 && t->shape[1] == 64 && t->shape[2] == 1, "shape in file");
    TEST_EXPECT(mn_st_metadata(st, "format") && !strcmp(mn_st_metadata(st, "format"), "pt"), "metadata");
    mn_st_close(&st);

    /* Encoder-only export: strict import into a model with heads fails naming a head tensor; non-strict loads. */
    TEST_EXPECT(mn_model_save_safetensors(a, p2, -1) == MN_OK, "save encoder");
    mn_model *c = make(heads, 2, 3);
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_model_load_safetensors(c, p2, 1, &rep) == MN_ERR_FORMAT, "strict refuses missing heads");
    TEST_EXPECT(strstr(mn_error_last(), "missing") && strstr(mn_error_last(), "heads.0.conv_seg.0.weight"),
                "names missing: %s", mn_error_last());
    TEST_EXPECT(memcmp(mn_model_params(a), mn_model_params(c), 4096) != 0, "failed strict import changed nothing");
    TEST_EXPECT(mn_model_load_safetensors(c, p2, 0, &rep) == MN_OK && rep.missing == 2 * 12 &&
                    !memcmp(mn_model_params(a), mn_model_params(c), 14355520 * sizeof(float)),
                "non-strict: encoder loaded, %d missing (head tensors)", rep.missing);

    /* module. prefix. */
    TEST_EXPECT(write_variant(a, p3, "module.", NULL, NULL, NULL) == MN_OK, "write module.");
    TEST_EXPECT(mn_model_load_safetensors(c, p3, 1, &rep) == MN_OK && rep.loaded == mn_model_num_tensors(a),
                "module. prefix accepted");

    /* Unexpected, missing, wrong dtype. */
    TEST_EXPECT(write_variant(a, p3, "", "bn1.bias", "layer9.0.conv1.weight", NULL) == MN_OK, "write variant");
    TEST_EXPECT(mn_model_load_safetensors(c, p3, 1, &rep) == MN_ERR_FORMAT && rep.unexpected == 1 && rep.missing == 1,
                "strict: unexpected + missing");
    TEST_EXPECT(strstr(mn_error_last(), "layer9.0.conv1.weight") && strstr(mn_error_last(), "bn1.bias"),
                "names both: %s", mn_error_last());
    TEST_EXPECT(write_variant(a, p3, "", NULL, NULL, "bn1.weight") == MN_OK, "write f64 variant");
    TEST_EXPECT(mn_model_load_safetensors(c, p3, 0, &rep) == MN_ERR_FORMAT && strstr(mn_error_last(), "bn1.weight") &&
                    strstr(mn_error_last(), "F64"),
                "dtype named: %s", mn_error_last());

    /* Mis-shaped: a 3-class head file into a 5-class head. */
    mn_head_spec other[2] = {{0, 5}, {4, 2}};
    mn_model *d = make(other, 2, 1);
    TEST_EXPECT(mn_model_load_safetensors(d, p1, 1, &rep) == MN_ERR_FORMAT && rep.mis_shaped == 1 &&
                    strstr(mn_error_last(), "heads.0.conv_seg.6.weight") && strstr(mn_error_last(), "3x32x1x1x1"),
                "mis-shaped named: %s", mn_error_last());
    TEST_EXPECT(mn_model_load_safetensors(d, p1, 0, &rep) == MN_OK && rep.mis_shaped == 1 &&
                    rep.loaded == mn_model_num_tensors(d) - 1,
                "non-strict skips the mis-shaped tensor");

    /* Corrupt files: every truncation of a valid small file. */
    mn_st_entry e[3] = {{"a", MN_ST_F32, 2, {2, 3}, NULL}, {"b.c", MN_ST_I64, 0, {0}, NULL},
                        {"d", MN_ST_U8, 1, {5}, NULL}};
    float fa[6] = {1, 2, 3, 4, 5, 6};
    int64_t ib = 7;
    unsigned char ud[5] = {1, 2, 3, 4, 5};
    e[0].data = fa;
    e[1].data = &ib;
    e[2].data = ud;
    const char *mk[1] = {"k"}, *mv[1] = {"v"};
    TEST_EXPECT(mn_st_write(p3, e, 3, mk, mv, 1) == MN_OK, "write small");
    size_t len = 0;
    unsigned char *img = read_all(p3, &len);
    TEST_EXPECT(img && mn_st_parse(img, len, "small", &st) == MN_OK && mn_st_count(st) == 3, "small parses");
    t = mn_st_find(st, "a");
    float back[6];
    if (t) memcpy(back, t->data, sizeof back);
    TEST_EXPECT(t && !memcmp(back, fa, sizeof fa), "small data");
    mn_st_close(&st);
    int all_rejected = 1, all_offsets = 1;
    for (size_t n = 0; img && n < len; n++) {
        mn_err er = mn_st_parse(img, n, "trunc", &st);
        if (er != MN_ERR_FORMAT || st) all_rejected = 0;
        if (!strstr(mn_error_last(), "byte")) all_offsets = 0;
        mn_st_close(&st);
    }
    TEST_EXPECT(all_rejected, "every truncation rejected");
    TEST_EXPECT(all_offsets, "every truncation message names a byte offset");

    /* Targeted corruptions. */
    {
        unsigned char big[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
        TEST_EXPECT(mn_st_parse(big, 10, "big", &st) == MN_ERR_FORMAT && strstr(mn_error_last(), "byte 0"),
                    "2^63 header length: %s", mn_error_last());
    }
    expect_bad("unclosed object", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "byte");
    expect_bad("bad dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "F33");
    expect_bad("size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "'a'");
    expect_bad("past the end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "truncated");
    expect_bad("overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "overlap");
    expect_bad("hole", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "hole");
    expect_bad("trailing data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "after the last");
    expect_bad("duplicate", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                            "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "twice");
    expect_bad("negative dim", "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1, "byte");
    expect_bad("missing key", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "data_offsets");
    expect_bad("garbage after", "{} x", 0, "byte 11");
    expect_bad("unterminated string", "{\"abc", 0, "unterminated");
    expect_bad("reversed offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,0]}}", 1, "reversed");

    /* Random corruption of header bytes: must never crash; a parse that succeeds must still be self-consistent. */
    int ok_parses = 0;
    for (int it = 0; img && it < 3000; it++) {
        unsigned char *cp = malloc(len);
        memcpy(cp, img, len);
        int flips = 1 + (int)(mn_test_rng_u64(&r) % 4);
        for (int f = 0; f < flips; f++) {
            size_t pos = (size_t)(mn_test_rng_u64(&r) % (len < 200 ? len : 200));
            cp[pos] = (unsigned char)mn_test_rng_u64(&r);
        }
        size_t cut = (mn_test_rng_u64(&r) % 4 == 0) ? (size_t)(mn_test_rng_u64(&r) % len) : len;
        if (mn_st_parse(cp, cut, "fuzz", &st) == MN_OK) {
            ok_parses++;
            for (int i = 0; i < mn_st_count(st); i++) {
                const mn_st_tensor *x = mn_st_get(st, i);
                TEST_EXPECT(x->end <= cut && x->begin <= x->end, "fuzz: accepted tensor out of bounds");
            }
        }
        mn_st_close(&st);
        free(cp);
    }
    mn_error_set_quiet(0);
    printf("fuzz: 3000 corrupted images, %d still valid (harmless flips such as whitespace), none out of bounds\n",
           ok_parses);
    free(img);

    test_size_limits();

    mn_model_destroy(&a);
    mn_model_destroy(&b);
    mn_model_destroy(&c);
    mn_model_destroy(&d);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return mn_test_finish("test_safetensors");
}
