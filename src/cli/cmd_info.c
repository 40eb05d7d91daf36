/* cmd_info.c: `mednet info`: version, MPI size and the nodes it spans, the launch check's verdict (launcher and MPI
 * library), threads per rank and the BLIS kernel set in use.  A wrong launcher is an agreed error here too, so `srun
 * mednet info` is the cheap way to try a launch line before a long job. */
#include "commands.h"
#include "mednet/dist.h"
#include "mednet/launch.h"
#include "mednet/mpicheck.h"
#include "mednet/threads.h"

mn_err mn_cmd_info(int argc, char **argv, mn_cmd_result *res)
{
    int size = 0;
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    mn_launch launch;
    MN_CALL(mn_agree(MPI_COMM_WORLD, mn_launch_check(MPI_COMM_WORLD, &launch)));
    MN_CALL(mn_agree(MPI_COMM_WORLD, mn_threads_init_comm(mn_threads_resolve(0), MPI_COMM_WORLD)));
    mn_log_info("mednet %s", MN_VERSION);
    int nodes = 0, per_node = 0;
    MN_CALL(mn_agree(MPI_COMM_WORLD, mn_dist_node_count(MPI_COMM_WORLD, &nodes, &per_node)));
    mn_log_info("MPI ranks: %d", size);
    mn_log_info("MPI nodes: %d (shared-memory domains; at most %d ranks on one)", nodes, per_node);
    mn_log_info("MPI library: %s (%s)", mn_mpi_flavour_name(launch.flavour), launch.library);
    mn_log_info("launcher: %s%s%s%s", mn_launcher_name(launch.launcher), launch.plugin[0] ? " (--mpi=" : "",
                launch.plugin, launch.plugin[0] ? ")" : "");
    mn_log_info("launch check: %s", launch.message);
    mn_log_info("threads per rank: %d", mn_threads_count());
    char cpu[256];
    mn_blis_cpu_key(cpu, sizeof cpu);
    mn_log_info("CPU: %s", cpu);
    mn_log_info("BLIS kernels: %s (%s)", mn_blis_arch(), mn_blis_arch_reason());
    mn_log_info("mednet convolution kernels: %s", mn_simd_kernels());
    return MN_OK;
}
