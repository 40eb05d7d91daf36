# The output-folder lock (src/io/lock.c): taken and released; refused with an agreed error naming the holder (live
# pid on this host, another job, another host outside Slurm, damaged file); taken over from a dead or recycled pid
# and from the same Slurm job on another host.
mn_mpi_test(test_lock SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_lock.c NPROCS 1 2 TIMEOUT 60)
