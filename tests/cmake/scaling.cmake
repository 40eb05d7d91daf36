# Scaling studies: the projection model against hand-computed cases (fast), and a real local sweep (P = 1, 2 on the
# mricron corpus of the train fixture) through jobs/scaling_study.sh and the collector (about a minute or more on
# 2 shared cores: label slow).  Not labelled mpi: the sweep launches with Open MPI's mpirun (jobs/run_local.sh).
add_test(NAME test_scaling_model COMMAND /usr/bin/python3 ${PROJECT_SOURCE_DIR}/tests/scaling/test_scaling_model.py)
set_tests_properties(test_scaling_model PROPERTIES TIMEOUT 60 LABELS "scaling")
add_test(NAME test_scaling_study
         COMMAND bash ${PROJECT_SOURCE_DIR}/tests/scaling/test_scaling_study.sh $<TARGET_FILE:mednet>
                 $<TARGET_FILE_DIR:bench_allreduce> ${PROJECT_SOURCE_DIR}/configs/pretrain_mricron.ini
                 ${CMAKE_BINARY_DIR}/train-tests/corpus_mricron.h5 ${CMAKE_BINARY_DIR}/scaling-test)
set_tests_properties(test_scaling_study PROPERTIES FIXTURES_REQUIRED mricron_corpus TIMEOUT 900
                     LABELS "scaling;slow" ENVIRONMENT "OMP_NUM_THREADS=1")
