/* mem.c: checked aligned allocation and the peak-RSS probe.
 *
 * 64-byte alignment through posix_memalign.  Working buffers are allocated once at setup and reused every step
 * (page faults are expensive; see ENVIRONMENT.md), so nothing here is on a hot path.
 */
#define _POSIX_C_SOURCE 200809L
#include "mednet/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mn_err mn_malloc(size_t bytes, const char *what, void **out)
{
    *out = NULL;
    void *p = NULL;
    /* posix_memalign(0) may return NULL; allocate one line so callers can always free. */
    int rc = posix_memalign(&p, 64, bytes ? bytes : 64);
    MN_CHECK(rc == 0 && p != NULL, MN_ERR_MEM, "cannot allocate %zu bytes for %s", bytes, what ? what : "buffer");
    *out = p;
    return MN_OK;
}

mn_err mn_calloc(size_t bytes, const char *what, void **out)
{
    MN_CALL(mn_malloc(bytes, what, out));
    memset(*out, 0, bytes);
    return MN_OK;
}

void mn_free(void *pptr)
{
    void **pp = (void **)pptr;
    if (!pp) return;
    free(*pp);
    *pp = NULL;
}

size_t mn_mem_peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = (size_t)strtoull(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb * 1024;
}
