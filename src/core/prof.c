/* prof.c: the step's per-layer-type time breakdown (see mednet/prof.h).  A stack of kinds and the time of the last
 * event; each event charges the elapsed time to the kind on top.  Depth is small (step > head > conv at most). */
#include "mednet/prof.h"

#include <string.h>
#include <time.h>

#define MN_PROF_DEPTH 16

static int g_on;
static int g_depth; /* entries on the stack; the bottom (index 0) is MN_PROF_OTHER */
static mn_prof_kind g_stack[MN_PROF_DEPTH];
static double g_sum[MN_PROF_NKINDS], g_last;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void charge(void)
{
    double t = now_s();
    g_sum[g_stack[g_depth - 1]] += t - g_last;
    g_last = t;
}

void mn_prof_reset(void)
{
    memset(g_sum, 0, sizeof g_sum);
    g_depth = 1;
    g_stack[0] = MN_PROF_OTHER;
    g_last = now_s();
}

void mn_prof_enable(int on)
{
    g_on = on;
    mn_prof_reset();
}

int mn_prof_enabled(void) { return g_on; }

void mn_prof_push(mn_prof_kind kind)
{
    if (!g_on) return;
    charge();
    if (g_depth < MN_PROF_DEPTH) g_stack[g_depth++] = kind;
}

void mn_prof_pop(void)
{
    if (!g_on) return;
    charge();
    if (g_depth > 1) g_depth--;
}

void mn_prof_refine(mn_prof_kind kind)
{
    if (!g_on) return;
    mn_prof_kind top = g_stack[g_depth - 1];
    if (top != MN_PROF_CONV_BWD && top != MN_PROF_CONV_BWD_DATA && top != MN_PROF_CONV_BWD_WEIGHTS) return;
    charge();
    g_stack[g_depth - 1] = kind;
}

double mn_prof_seconds(mn_prof_kind kind)
{
    if (kind < 0 || kind >= MN_PROF_NKINDS) return 0;
    double open = g_on && g_depth > 0 && g_stack[g_depth - 1] == kind ? now_s() - g_last : 0;
    return g_sum[kind] + open;
}

const char *mn_prof_name(mn_prof_kind kind)
{
    static const char *names[MN_PROF_NKINDS] = {"other",   "conv fwd", "conv bwd (bias)", "conv bwd-data",
                                                "conv bwd-weights", "bn fwd", "bn bwd", "relu",
                                                "pool",    "head",     "loss",  "optimiser"};
    return kind >= 0 && kind < MN_PROF_NKINDS ? names[kind] : "?";
}
