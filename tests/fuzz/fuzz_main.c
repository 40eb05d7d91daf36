/* fuzz_main.c: a main() for the fuzz harnesses in builds without libFuzzer (the normal gcc build, the sanitizer
 * build): it runs LLVMFuzzerTestOneInput once on every file given, or on every file of every directory given, so
 * that the seed corpora and every input that once crashed a harness (tests/fuzz/regress/<harness>/) are replayed
 * by ctest.  A crash, a sanitizer report or an abort() of the harness fails the test; the driver prints how many
 * inputs it ran. */
#define FZ_MAIN
#include "fuzz_util.h"

#include <dirent.h>
#include <sys/stat.h>

int fz_standalone = 1;

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "out of memory reading %s\n", path);
        return -1;
    }
    printf("input %s (%zu bytes)\n", path, n);
    fflush(stdout);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 1;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv)
{
    LLVMFuzzerInitialize(&argc, &argv);
    int count = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "no such input: %s\n", argv[i]);
            return 2;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (run_file(argv[i]) < 0) return 2;
            count++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d) return 2;
        char **names = NULL;
        int nn = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char **nb = realloc(names, sizeof *nb * (size_t)(nn + 1));
            if (!nb) return 2;
            names = nb;
            names[nn] = malloc(strlen(argv[i]) + strlen(e->d_name) + 2);
            if (!names[nn]) return 2;
            sprintf(names[nn], "%s/%s", argv[i], e->d_name);
            nn++;
        }
        closedir(d);
        qsort(names, (size_t)nn, sizeof *names, cmp_str);
        for (int k = 0; k < nn; k++) {
            if (stat(names[k], &st) == 0 && S_ISREG(st.st_mode)) {
                if (run_file(names[k]) < 0) return 2;
                count++;
            }
            free(names[k]);
        }
        free(names);
    }
    printf("%d input(s) ran without a crash\n", count);
    return count > 0 ? 0 : 2;
}
