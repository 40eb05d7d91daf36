/* test_blis_choose: the BLIS kernel-set chooser (src/core/blis_choose.c, src/core/threads.c).
 *
 * Checks, in a private cache directory: a first choice measures and writes the cache, a second reads it; a
 * garbage or stale cache line (a set BLIS lacks or the CPU cannot run) is measured again; an unwritable cache
 * still chooses; candidates that are not BLIS sets, that the CPU cannot run, or whose probe crashes (the
 * MEDNET_BLIS_PROBE_CRASH hook aborts that child) are reported unavailable and skipped; with no measurable
 * candidate mn_threads_init keeps BLIS's own choice behind the generic guard; a bad MEDNET_BLIS_ARCH is an error
 * that leaves BLIS untouched; so is a bad MEDNET_ISA or one the CPU lacks, and MEDNET_ISA=none turns mednet's own
 * kernels off. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mednet/threads.h"
#include "nn/stem.h"
#include "test_util.h"

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0, c;
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

int main(void)
{
    char dir[] = "/tmp/mednet-blis-XXXXXX", path[256];
    if (!mkdtemp(dir)) return 2;
    setenv("XDG_CACHE_HOME", dir, 1);
    unsetenv("MEDNET_BLIS_CANDIDATES");
    unsetenv("MEDNET_BLIS_ARCH");
    unsetenv("BLIS_ARCH_TYPE");
    snprintf(path, sizeof path, "%s/mednet/blis-kernels", dir);
    int avx2 = mn_blis_cpu_lacks("haswell") == NULL, avx512 = mn_blis_cpu_lacks("skx") == NULL;
    char cpu[256];
    mn_blis_cpu_key(cpu, sizeof cpu);
    printf("CPU: %s\n", cpu);

    /* 1. measure, cache, read back */
    mn_blis_choice a, b;
    mn_blis_choose(&a);
    printf("first:  %s: %s (%s)\n", a.name, a.rates, a.source);
    TEST_EXPECT(a.name[0] && a.measured, "the first choice measures");
    TEST_EXPECT(mn_blis_arch_id(a.name) >= 0 && mn_blis_cpu_lacks(a.name) == NULL, "a runnable set: %s", a.name);
    TEST_EXPECT(strstr(a.rates, "auto=") != NULL, "BLIS's own choice is measured: %s", a.rates);
    if (avx512) TEST_EXPECT(strstr(a.rates, "skx ") != NULL, "skx measured on an AVX-512 CPU: %s", a.rates);
    if (avx2) TEST_EXPECT(strstr(a.rates, "haswell ") != NULL, "haswell measured on an AVX2 CPU: %s", a.rates);
    TEST_EXPECT(count_lines(path) == 1, "one cache line in %s, found %d", path, count_lines(path));
    mn_blis_choose(&b);
    TEST_EXPECT(!b.measured && strcmp(a.name, b.name) == 0 && strstr(b.source, "cached in") != NULL,
                "second choice from the cache: %s (%s)", b.name, b.source);
    TEST_EXPECT(strcmp(a.rates, b.rates) == 0, "cached rates kept: '%s' vs '%s'", a.rates, b.rates);

    /* 2. garbage and a stale line for this CPU naming a set the CPU lacks / BLIS lacks: measured again */
    const char *stale[] = {avx512 ? "nosuchset" : "skx", "knl"};
    for (int s = 0; s < 2; s++) {
        FILE *f = fopen(path, "r");
        char line[1024] = "";
        if (!f || !fgets(line, sizeof line, f)) return 2;
        fclose(f);
        char *tab = line;
        for (int i = 0; i < 3 && tab; i++) tab = strchr(tab + 1, '\t'); /* format, cpu, blis: then the choice */
        if (!tab) return 2;
        char *end = strchr(tab + 1, '\t');
        if (!end) return 2;
        f = fopen(path, "w");
        fprintf(f, "garbage line without tabs\n%.*s\t%s%s", (int)(tab - line), line, stale[s], end);
        fclose(f);
        mn_blis_choice c;
        mn_blis_choose(&c);
        TEST_EXPECT(c.measured && c.name[0], "stale cached choice '%s' measured again (%s)", stale[s], c.source);
        TEST_EXPECT(count_lines(path) == 1, "the rewrite keeps one line, found %d", count_lines(path));
    }

    /* 3. an unwritable cache directory: still chooses, says it did not cache */
    setenv("XDG_CACHE_HOME", "/proc/mednet-cannot-write-here", 1);
    mn_blis_choice u;
    mn_blis_choose(&u);
    TEST_EXPECT(u.name[0] && u.measured && strstr(u.source, "not cached (") != NULL, "unwritable cache: %s (%s)",
                u.name, u.source);
    setenv("XDG_CACHE_HOME", dir, 1);

    /* 4. unavailable candidates are skipped: not a set, CPU lacks it, probe crashes */
    if (avx2) {
        setenv("MEDNET_BLIS_CANDIDATES", avx512 ? "nosuchset,knl,skx,haswell" : "nosuchset,skx,zen3,haswell", 1);
        setenv("MEDNET_BLIS_PROBE_CRASH", avx512 ? "skx" : "zen3", 1);
        mn_blis_choice f;
        mn_blis_choose(&f);
        printf("skips:  %s: %s (%s)\n", f.name, f.rates, f.source);
        TEST_EXPECT(strcmp(f.name, "haswell") == 0, "the one measurable set chosen, got '%s'", f.name);
        TEST_EXPECT(strstr(f.rates, "nosuchset unavailable (not a BLIS kernel set)") != NULL, "%s", f.rates);
        TEST_EXPECT(strstr(f.rates, avx512 ? "knl unavailable (CPU lacks" : "skx unavailable (CPU lacks") != NULL,
                    "%s", f.rates);
        TEST_EXPECT(strstr(f.rates, avx512 ? "skx unavailable (probe died with signal 6" :
                                             "zen3 unavailable (probe died with signal 6") != NULL,
                    "%s", f.rates);
        TEST_EXPECT(strstr(f.source, "not cached") != NULL, "a hand-picked list is not cached: %s", f.source);
        unsetenv("MEDNET_BLIS_PROBE_CRASH");
    }

    /* 5. a bad MEDNET_BLIS_ARCH is an error and leaves BLIS alone; then nothing measurable: BLIS's own choice */
    setenv("MEDNET_BLIS_ARCH", "nosuchset", 1);
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_threads_init(1) == MN_ERR_ARG, "MEDNET_BLIS_ARCH=nosuchset rejected");
    mn_error_set_quiet(0);
    TEST_EXPECT(strstr(mn_error_last(), "nosuchset") != NULL, "the message names it: %s", mn_error_last());
    unsetenv("MEDNET_BLIS_ARCH");
    /* 6. MEDNET_ISA: a bad value, or a set this CPU lacks, is an error naming it; a good one is applied */
    setenv("MEDNET_ISA", "sse9", 1);
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_threads_init(1) == MN_ERR_ARG, "MEDNET_ISA=sse9 rejected");
    mn_error_set_quiet(0);
    TEST_EXPECT(strstr(mn_error_last(), "MEDNET_ISA='sse9'") != NULL, "the message names it: %s", mn_error_last());
    if (!avx512) {
        setenv("MEDNET_ISA", "avx512", 1);
        mn_error_set_quiet(1);
        TEST_EXPECT(mn_threads_init(1) == MN_ERR_ARG, "MEDNET_ISA=avx512 rejected on a CPU without AVX-512");
        mn_error_set_quiet(0);
        TEST_EXPECT(strstr(mn_error_last(), "lacks") != NULL, "the message says so: %s", mn_error_last());
    }
    setenv("MEDNET_ISA", "none", 1);
    setenv("MEDNET_BLIS_CANDIDATES", "nosuchset", 1);
    TEST_EXPECT(mn_threads_init(1) == MN_OK, "mn_threads_init with nothing measurable");
    TEST_EXPECT(mn_stem_isa() == MN_STEM_ISA_NONE && strcmp(mn_simd_kernels(), "none (set by MEDNET_ISA=none)") == 0,
                "MEDNET_ISA=none applied: %s", mn_simd_kernels());
    unsetenv("MEDNET_ISA");
    printf("fallback: %s (%s)\n", mn_blis_arch(), mn_blis_arch_reason());
    TEST_EXPECT(strstr(mn_blis_arch_reason(), "measuring failed") != NULL, "%s", mn_blis_arch_reason());
    if (avx2) TEST_EXPECT(strcmp(mn_blis_arch(), "generic") != 0, "the generic guard still acts");

    unlink(path);
    char sub[300];
    snprintf(sub, sizeof sub, "%s/mednet", dir);
    rmdir(sub);
    rmdir(dir);
    return mn_test_finish("test_blis_choose");
}
