/* args.c: argument parsing shared by the sub-commands. */
#include "commands.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

mn_err mn_cli_number(const char *cmd, const char *opt, const char *v, double lo, double hi, double *out)
{
    MN_CHECK(v != NULL, MN_ERR_ARG, "mednet %s: %s needs a value", cmd, opt);
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    MN_CHECK(end != v && !*end && !errno && isfinite(x) && x >= lo && x <= hi, MN_ERR_ARG,
             "mednet %s: %s needs a number in [%g, %g], got '%s'", cmd, opt, lo, hi, v);
    *out = x;
    return MN_OK;
}
