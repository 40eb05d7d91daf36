/* fuzz_safetensors: the safetensors importer: the bounds-checked parser (mn_st_parse on the bytes, mn_st_open on a
 * file) and the model import that matches its tensors against a resnet10 encoder with one conv_seg head
 * (mn_model_load_safetensors, non-strict and strict), as `mednet model --import` and fine-tuning from MedicalNet
 * weights do.  A parsed file must describe tensors inside the input: every tensor's bytes are read. */
#include "fuzz_util.h"
#include "mednet/model.h"
#include "mednet/safetensors.h"

static mn_model *model;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_quiet();
    static const mn_head_spec head = {0, 2};
    mn_model_config c = mn_model_config_default();
    c.depth = 10;
    c.nheads = 1;
    c.heads = &head;
    if (mn_model_create(&c, &model) != MN_OK) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mn_safetensors *st = NULL;
    if (mn_st_parse(data, size, "fuzz.safetensors", &st) == MN_OK) {
        unsigned sum = 0;
        for (int i = 0; i < mn_st_count(st); i++) {
            const mn_st_tensor *t = mn_st_get(st, i);
            const unsigned char *b = t->data;
            for (size_t k = 0; k < t->end - t->begin; k++) sum += b[k];
            if (mn_st_find(st, t->name) == NULL) abort();
        }
        /* Used, so that the reads above are not optimised away. */
        if (sum == 0xFFFFFFFFu) fprintf(stderr, "checksum of every tensor byte: %u\n", sum);
        (void)mn_st_metadata(st, "format");
        mn_st_close(&st);
    }
    char path[512];
    fz_path(path, sizeof path, "st", ".safetensors");
    fz_write_file(path, data, size);
    mn_import_report rep;
    (void)mn_model_load_safetensors(model, path, 0, &rep);
    (void)mn_model_load_safetensors(model, path, 1, &rep);
    unlink(path);
    return 0;
}
