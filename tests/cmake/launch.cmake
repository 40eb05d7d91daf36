# The launch check (src/parallel/launch.c): the decision fed the environments of every launcher (Open MPI mpirun,
# Hydra, srun with and without PMI, a forgotten srun, two 1-rank jobs), then the real check under this launcher.
mn_mpi_test(test_launch SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_launch.c NPROCS 1 2 TIMEOUT 60)
