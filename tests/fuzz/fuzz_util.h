/* fuzz_util.h: shared pieces of the fuzz harnesses (tests/fuzz/fuzz_*.c).
 *
 * - fz_write_file: the parsers under test read files (libnifti, HDF5, fopen), so each input is written to a file
 *   of this process (under $TMPDIR, default /tmp) and the parser is pointed at it.
 * - fz_reader: structure-aware harnesses (corpus, checkpoint) draw their decisions from the input bytes.  A
 *   decision read past the end of the input is 0, and 0 always means "as mednet writes it", so the empty input
 *   describes a valid file and every non-zero byte is one kind of damage.  The seeds are therefore tiny.
 * - fz_quiet: the library's error messages are switched off while fuzzing (thousands of inputs per second, each
 *   rejected with a message); MN_FUZZ_VERBOSE=1 keeps them, and the standalone driver (fuzz_main.c, the ctest
 *   regression run) always prints them.
 */
#ifndef MN_FUZZ_UTIL_H
#define MN_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mednet/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* 1 in the standalone regression driver (fuzz_main.c defines it), 0 under libFuzzer. */
#ifdef FZ_MAIN
extern int fz_standalone;
#else
__attribute__((weak)) int fz_standalone = 0;
#endif

static inline void fz_quiet(void)
{
    const char *v = getenv("MN_FUZZ_VERBOSE");
    if (!fz_standalone && !(v && *v == '1')) mn_error_set_quiet(1);
}

/* "<tmpdir>/mn_fuzz_<tag>_<pid><suffix>" into buf. */
static inline void fz_path(char *buf, size_t cap, const char *tag, const char *suffix)
{
    const char *t = getenv("TMPDIR");
    snprintf(buf, cap, "%s/mn_fuzz_%s_%ld%s", t && *t ? t : "/tmp", tag, (long)getpid(), suffix);
}

/* Write n bytes to path (replacing it); aborts on failure: a harness that cannot write its file tests nothing. */
static inline void fz_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "fuzz harness: cannot write %s\n", path);
        abort();
    }
}

/* The decision reader. */
typedef struct fz_reader {
    const uint8_t *p;
    size_t n, pos;
} fz_reader;

static inline uint8_t fz_u8(fz_reader *r) { return r->pos < r->n ? r->p[r->pos++] : 0; }

static inline uint32_t fz_u32(fz_reader *r)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)fz_u8(r) << (8 * i);
    return v;
}

static inline uint64_t fz_u64(fz_reader *r) { return (uint64_t)fz_u32(r) | (uint64_t)fz_u32(r) << 32; }

/* Up to max bytes of text (stops at a NUL or the end of the input) into buf, NUL-terminated. */
static inline void fz_text(fz_reader *r, char *buf, size_t max)
{
    size_t k = 0;
    while (k + 1 < max && r->pos < r->n && r->p[r->pos]) buf[k++] = (char)r->p[r->pos++];
    if (r->pos < r->n) r->pos++; /* the NUL */
    buf[k] = 0;
}

#endif
