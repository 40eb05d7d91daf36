/* mem.c: checked aligned allocation and the peak-RSS probe.
 *
 * 64-byte alignment through posix_memalign (2 MiB and transparent huge pages for buffers of 8 MiB or more).
 * Working buffers are allocated once at setup and reused every step (page faults are expensive on VMs), so nothing
 * here is on a hot path.
 */
#define _GNU_SOURCE
#include "mednet/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

mn_err mn_malloc(size_t bytes, const char *what, void **out)
{
    *out = NULL;
    void *p = NULL;
    /* A large buffer is aligned to a huge page and offered to transparent huge pages (in the kernel's "madvise"
     * mode only such ranges get them): one fault per 2 MiB instead of one per 4 KiB when it is first touched, and
     * fewer TLB misses when it is streamed.  The advice is a hint: its failure changes nothing. */
    const size_t huge = (size_t)2 << 20;
    int big = bytes >= 4 * huge;
    /* posix_memalign(0) may return NULL; allocate one line so callers can always free. */
    int rc = posix_memalign(&p, big ? huge : 64, bytes ? bytes : 64);
    MN_CHECK(rc == 0 && p != NULL, MN_ERR_MEM, "cannot allocate %zu bytes for %s", bytes, what ? what : "buffer");
#ifdef MADV_HUGEPAGE
    if (big) (void)madvise(p, bytes & ~(huge - 1), MADV_HUGEPAGE);
#endif
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
