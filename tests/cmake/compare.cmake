# The pre-training comparison: jobs/compare_transfer.sh end to end on the mricron corpus with tiny step counts (a
# 4-step pre-training, 2 seeds x 4 fine-tuning steps per arm; about 2 to 4 minutes on the shared 2-core machine), its
# table and plot, benchmarks/plot_metrics.py, and the collector's refusal of an empty folder.
add_test(NAME test_compare_transfer
         COMMAND bash ${PROJECT_SOURCE_DIR}/tests/train/test_compare_transfer.sh $<TARGET_FILE:mednet>
                 ${CMAKE_BINARY_DIR}/train-tests/corpus_mricron.h5 ${CMAKE_BINARY_DIR}/compare-test ${MN_MPIEXEC})
set_tests_properties(test_compare_transfer PROPERTIES FIXTURES_REQUIRED mricron_corpus TIMEOUT 1200
                     LABELS "train;slow" ENVIRONMENT "OMP_NUM_THREADS=1")
