# The data-parallel contract on 1-4 ranks: P-rank updates equal a 1-rank run accumulating the same global batch as
# P micro-batches; replicas bitwise identical; a rank that does not hold dataset d holds no head d.
mn_mpi_test(test_equivalence SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_equivalence.c NPROCS 1 2 3 4 TIMEOUT 300)
