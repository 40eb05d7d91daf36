# Fault drills (tests/train/run_drill.sh, label `drill`): a rank SIGKILLed or SIGSTOPped mid-step, a full and a
# read-only file system, the output folder removed, the corpus changed under a running job, SIGUSR1/SIGTERM in
# every phase, damaged and foreign checkpoints, on the corpus of tests/cmake/train.cmake.  Each prints and asserts the time from the fault to the end of the
# job and what survived.  They run serially (timing assertions, mounts).  The launcher drills (kill, stop) and the
# checkpoint drills also carry the `mpi` label, so the MPICH pass of .ci/run runs them under Hydra too; the others
# exercise mednet's own code paths, which do not depend on the MPI library.
set(MN_DRILL_DIR ${CMAKE_BINARY_DIR}/drills)
file(MAKE_DIRECTORY ${MN_DRILL_DIR})
function(mn_drill name)
  cmake_parse_arguments(D "MPI" "TIMEOUT" "" ${ARGN})
  set(labels "drill;train")
  if(D_MPI)
    list(APPEND labels mpi)
  endif()
  add_test(NAME drill_${name}
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/train/run_drill.sh ${name} $<TARGET_FILE:mednet>
                   ${PROJECT_SOURCE_DIR}/configs/pretrain_mricron.ini ${CMAKE_BINARY_DIR}/train-tests/corpus_mricron.h5
                   ${MN_DRILL_DIR}/${name} ${MN_MPIEXEC})
  set_tests_properties(drill_${name} PROPERTIES FIXTURES_REQUIRED mricron_corpus TIMEOUT ${D_TIMEOUT}
                       LABELS "${labels}" RUN_SERIAL TRUE ENVIRONMENT "OMP_NUM_THREADS=1")
endfunction()
mn_drill(kill MPI TIMEOUT 300)
mn_drill(stop MPI TIMEOUT 300)
mn_drill(checkpoints MPI TIMEOUT 600)
mn_drill(disk_full TIMEOUT 600)
mn_drill(outdir TIMEOUT 600)
mn_drill(corpus TIMEOUT 600)
mn_drill(signals TIMEOUT 900)
