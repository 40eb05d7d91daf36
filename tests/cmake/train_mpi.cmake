# The data-parallel contract through the real training step (mn_trainer_step) on 2-4 ranks: P ranks x M
# micro-batches equal one rank accumulating the same micro-batches; replicas bitwise identical; a rank that does not
# hold dataset d holds no head d.  Weighted samples, ignored voxels, Dice and head_lr_mult on both sides.
mn_mpi_test(test_equivalence SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_equivalence.c NPROCS 2 3 4 TIMEOUT 300)
# The same with SyncBN: P ranks x BATCH equal ONE rank with micro-batches of P x BATCH (encoder statistics global).
foreach(np 2 3 4)
  add_test(NAME test_equivalence_syncbn_np${np}
           COMMAND ${MN_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} ${np} $<TARGET_FILE:test_equivalence> syncbn)
  set_tests_properties(test_equivalence_syncbn_np${np} PROPERTIES TIMEOUT 300 LABELS "mpi" PROCESSORS ${np}
                       ENVIRONMENT "OMP_NUM_THREADS=1")
endforeach()
