/* fuzz_config: the config parser (inih through src/core/config.c), the command-line overrides, and the readers of
 * both config schemas: a run configuration (mn_run_config_read: [corpus], [train], [model], [optim], [sampler])
 * and a corpus definition (mn_corpus_def_from_config), each followed by the unknown-key check and the canonical
 * dump that checkpoints store.
 *
 * Input: the config text, then optionally a NUL byte and the overrides, one per line (as `section.key=value`
 * arguments would arrive on the command line).  The text is parsed as a string (mn_config_parse: what every rank
 * does with the broadcast file) and also read back through a file (mn_config_read_text: what rank 0 does). */
#include "fuzz_util.h"
#include "mednet/config.h"
#include "mednet/corpus.h"
#include "train/train_impl.h"

#define MAX_OVERRIDES 64

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_quiet();
    return 0;
}

/* Parse text, apply the overrides; NULL when either fails. */
static mn_config *parse(const char *text, char **ov, int nov)
{
    mn_config *c = NULL;
    if (mn_config_parse(text, "fuzz.ini", &c) != MN_OK) return NULL;
    for (int i = 0; i < nov; i++)
        if (mn_config_override(c, ov[i]) != MN_OK) {
            mn_config_destroy(&c);
            return NULL;
        }
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    size_t tlen = strlen(buf);
    /* The overrides after the first NUL: one per line, empty lines skipped. */
    char *ov[MAX_OVERRIDES];
    int nov = 0;
    if (tlen < size) {
        char *s = buf + tlen + 1;
        for (char *line = strtok(s, "\n"); line && nov < MAX_OVERRIDES; line = strtok(NULL, "\n")) ov[nov++] = line;
    }

    /* The file route: what rank 0 reads must be the text (or a NUL-byte error). */
    char path[512];
    fz_path(path, sizeof path, "config", ".ini");
    fz_write_file(path, data, size);
    char *text = NULL;
    size_t len = 0;
    mn_err fe = mn_config_read_text(path, &text, &len);
    if ((fe == MN_OK) != (tlen == size)) abort();
    if (fe == MN_OK && (len != size || memcmp(text, data, size) != 0)) abort();
    free(text);
    unlink(path);

    /* A run configuration. */
    mn_config *c = parse(buf, ov, nov);
    if (c) {
        char *dump = NULL;
        if (mn_config_dump(c, &dump) == MN_OK) {
            /* The dump is what a checkpoint stores and a resume parses again: it must parse to the same
             * configuration (its own dump is identical). */
            mn_config *again = NULL;
            char *dump2 = NULL;
            if (mn_config_parse(dump, "dump", &again) != MN_OK || mn_config_dump(again, &dump2) != MN_OK) abort();
            if (strcmp(dump, dump2) != 0) {
                fprintf(stderr, "config dump does not survive a parse:\n--- dump\n%s--- dump of its parse\n%s", dump,
                        dump2);
                abort();
            }
            mn_config_destroy(&again);
            free(dump2);
            free(dump);
        }
        run_cfg r;
        (void)mn_run_config_read(c, &r);
        mn_config_destroy(&c);
    }
    /* A corpus definition. */
    c = parse(buf, ov, nov);
    if (c) {
        mn_corpus_def *def = NULL;
        if (mn_corpus_def_from_config(c, &def) == MN_OK) (void)mn_config_check_unused(c);
        mn_corpus_def_destroy(&def);
        mn_config_destroy(&c);
    }
    free(buf);
    return 0;
}
