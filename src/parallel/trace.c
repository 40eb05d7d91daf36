/* trace.c: a per-rank timeline in the Chrome trace "JSON array" format, as Horovod's timeline does for its
 * all-reduces: one complete event ("ph":"X") per compute phase, bucket all-reduce or data load.
 *
 * Events are streamed to the file with stdio buffering (no in-memory event list to grow), so a long run costs a
 * constant amount of memory.  The array format tolerates a missing closing bracket, so a run killed midway still
 * leaves a loadable timeline.  Timestamps are microseconds since mn_trace_open; open the traces of all ranks right
 * after a barrier so that their origins line up (MPI_Wtime is not globally synchronised across nodes).
 */
#include "mednet/dist.h"
#include "mednet/mem.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

struct mn_trace {
    FILE *f;
    char path[1024];
    double t0;
    int rank;
    long nevents;
};

/* Write s as a JSON string body (quotes and backslashes escaped, control characters dropped). */
static void put_json_str(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        if ((unsigned char)*s >= 0x20) fputc(*s, f);
    }
}

mn_err mn_trace_open(const char *path, int rank, mn_trace **out)
{
    MN_CHECK(path && out, MN_ERR_ARG, "NULL path or out");
    *out = NULL;
    mn_trace *t = NULL;
    MN_CALL(mn_calloc(sizeof *t, "trace", (void **)&t));
    snprintf(t->path, sizeof t->path, "%s", path);
    t->f = fopen(path, "w");
    if (!t->f) {
        int e = errno;
        mn_free(&t);
        MN_FAIL(MN_ERR_IO, "cannot create timeline file '%s': %s", path, strerror(e));
    }
    t->t0 = MPI_Wtime();
    t->rank = rank;
    fprintf(t->f, "[\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"rank %d\"}}", rank, rank);
    *out = t;
    return MN_OK;
}

mn_err mn_trace_event(mn_trace *t, const char *name, const char *cat, double start, double dur, int tid)
{
    if (!t) return MN_OK;
    fputs(",\n{\"name\":\"", t->f);
    put_json_str(t->f, name);
    fputs("\",\"cat\":\"", t->f);
    put_json_str(t->f, cat);
    fprintf(t->f, "\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,\"pid\":%d,\"tid\":%d}", (start - t->t0) * 1e6,
            dur * 1e6, t->rank, tid);
    MN_CHECK(!ferror(t->f), MN_ERR_IO, "write error on timeline file '%s'", t->path);
    t->nevents++;
    return MN_OK;
}

mn_err mn_trace_close(mn_trace **pt)
{
    if (!pt || !*pt) return MN_OK;
    mn_trace *t = *pt;
    *pt = NULL;
    fputs("\n]\n", t->f);
    int bad = ferror(t->f);
    int rc = fclose(t->f);
    char path[1024];
    snprintf(path, sizeof path, "%s", t->path);
    mn_free(&t);
    MN_CHECK(!bad && rc == 0, MN_ERR_IO, "write error while closing timeline file '%s'", path);
    return MN_OK;
}
