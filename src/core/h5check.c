/* h5check.c: HDF5 error reporting.  HDF5's automatic printing is switched off once; on a failure we print our line
 * (rank, file:line, the call) followed by HDF5's own stack, which names the innermost cause. */
#include "mednet/h5check.h"

#include <stdio.h>

mn_err mn_h5_report(const char *call, const char *file, int line, const char *func)
{
    mn_err e = mn_error_report(MN_ERR_HDF5, file, line, func, "HDF5 call failed: %s", call);
    H5Eprint2(H5E_DEFAULT, stderr);
    return e;
}

mn_err mn_h5_init(void)
{
    if (H5Eset_auto2(H5E_DEFAULT, NULL, NULL) < 0) MN_FAIL(MN_ERR_HDF5, "H5Eset_auto2 failed");
    return MN_OK;
}
