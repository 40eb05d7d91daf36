/* error.c: error reporting and logging.
 *
 * One line per stack level, prefixed with the rank when one is set.  The last message is kept per thread so that
 * tests can check what a bad input was rejected with.  Nothing here calls MPI: the rank is handed in once by the
 * application after MPI_Init.
 */
#include "mednet/error.h"
#include "mednet/tensor.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int g_rank = -1;
static int g_quiet = 0;
static _Thread_local char g_last[1024];

const char *mn_err_name(mn_err code)
{
    switch (mn_err_code(code)) {
    case MN_OK: return "MN_OK";
    case MN_ERR_ARG: return "MN_ERR_ARG";
    case MN_ERR_SHAPE: return "MN_ERR_SHAPE";
    case MN_ERR_MEM: return "MN_ERR_MEM";
    case MN_ERR_IO: return "MN_ERR_IO";
    case MN_ERR_FORMAT: return "MN_ERR_FORMAT";
    case MN_ERR_MPI: return "MN_ERR_MPI";
    case MN_ERR_HDF5: return "MN_ERR_HDF5";
    case MN_ERR_NIFTI: return "MN_ERR_NIFTI";
    case MN_ERR_CONFIG: return "MN_ERR_CONFIG";
    case MN_ERR_NUMERIC: return "MN_ERR_NUMERIC";
    case MN_ERR_INTERNAL: return "MN_ERR_INTERNAL";
    }
    return "MN_ERR_UNKNOWN";
}

void mn_error_set_rank(int rank) { g_rank = rank; }
int mn_error_rank(void) { return g_rank; }
void mn_error_set_quiet(int quiet) { g_quiet = quiet; }
const char *mn_error_last(void) { return g_last; }

mn_err mn_error_report(mn_err code, const char *file, int line, const char *func, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Keep the first (innermost) message: "called from" lines only add the path. */
    if (strncmp(msg, "called from", 11) != 0) snprintf(g_last, sizeof g_last, "%s", msg);
    if (!g_quiet && !((int)code & MN_ERR_REMOTE)) {
        if (g_rank >= 0)
            fprintf(stderr, "[rank %d] %s:%d %s: %s\n", g_rank, file, line, func, msg);
        else
            fprintf(stderr, "%s:%d %s: %s\n", file, line, func, msg);
        fflush(stderr);
    }
    return code;
}

void mn_log_info(const char *fmt, ...)
{
    if (g_rank > 0) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

void mn_log_warn(const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_rank >= 0)
        fprintf(stderr, "[rank %d] warning: %s\n", g_rank, msg);
    else
        fprintf(stderr, "warning: %s\n", msg);
    fflush(stderr);
}

char *mn_shape_str(const mn_shape *s, char *buf)
{
    snprintf(buf, 64, "%dx%dx%dx%dx%d", s->n, s->c, s->d, s->h, s->w);
    return buf;
}
