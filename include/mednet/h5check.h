/* h5check.h: the HDF5 check macro.  Negative return values (hid_t or herr_t) are failures; the message names the
 * call and prints HDF5's own error stack.  mn_h5_init turns off HDF5's automatic stack printing so that each error
 * is printed once, by us, with our context. */
#ifndef MEDNET_H5CHECK_H
#define MEDNET_H5CHECK_H

#include <hdf5.h>
#include "mednet/error.h"

/* Report a failed HDF5 call (used by MN_H5). */
mn_err mn_h5_report(const char *call, const char *file, int line, const char *func);

/* `expr` may be an assignment: MN_H5(dset = H5Dopen2(...)). */
#define MN_H5(expr)                                                                                     \
    do {                                                                                                \
        if ((expr) < 0) return mn_h5_report(#expr, __FILE__, __LINE__, __func__);                     \
    } while (0)

/* Disable HDF5's automatic error printing (we print the stack in mn_h5_report). Not collective. */
mn_err mn_h5_init(void);

#endif
