# The data-parallel contract on 1-4 ranks: P-rank updates equal a 1-rank run accumulating the same global batch as
# P micro-batches; replicas bitwise identical; a rank that does not hold dataset d holds no head d.
mn_mpi_test(test_equivalence SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_equivalence.c NPROCS 1 2 3 4 TIMEOUT 300)
# The same with SyncBN: P ranks x BATCH equal ONE batch of P x BATCH on one rank (encoder statistics global).
foreach(np 1 2 3 4)
  add_test(NAME test_equivalence_syncbn_np${np}
           COMMAND ${MN_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} ${np} $<TARGET_FILE:test_equivalence> syncbn)
  set_tests_properties(test_equivalence_syncbn_np${np} PROPERTIES TIMEOUT 300 LABELS "mpi" PROCESSORS ${np}
                       ENVIRONMENT "OMP_NUM_THREADS=1")
endforeach()
