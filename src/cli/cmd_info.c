/* cmd_info.c: `mednet info`: version, MPI size, threads per rank and the BLIS kernel set in use. */
#include "commands.h"
#include "mednet/mpicheck.h"
#include "mednet/threads.h"

mn_err mn_cmd_info(int argc, char **argv, mn_cmd_result *res)
{
    int size = 0;
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    MN_CALL(mn_agree(MPI_COMM_WORLD, mn_threads_init(mn_threads_resolve(0))));
    mn_log_info("mednet %s", MN_VERSION);
    mn_log_info("MPI ranks: %d", size);
    mn_log_info("threads per rank: %d", mn_threads_count());
    mn_log_info("BLIS kernels: %s (%s)", mn_blis_arch(), mn_blis_arch_reason());
    return MN_OK;
}
