/* mem.h: checked, aligned allocation.  Buffers are 64-byte aligned (one cache line, one AVX-512 vector). */
#ifndef MEDNET_MEM_H
#define MEDNET_MEM_H

#include <stddef.h>
#include "mednet/error.h"

/* Allocate `bytes` (may be 0) aligned to 64 bytes into *out; `what` names the buffer in the error message.
 * On failure *out is NULL and MN_ERR_MEM is returned.  Not collective. */
mn_err mn_malloc(size_t bytes, const char *what, void **out);

/* As mn_malloc, zero-filled. */
mn_err mn_calloc(size_t bytes, const char *what, void **out);

/* Free a buffer from mn_malloc/mn_calloc and set the caller's pointer to NULL; accepts NULL. */
void mn_free(void *pptr);

/* Resident-set high-water mark of this process in bytes (VmHWM), 0 if unknown. */
size_t mn_mem_peak_rss(void);

#endif
