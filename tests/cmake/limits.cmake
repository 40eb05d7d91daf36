# Size limits (include/mednet/limits.h) of the corpus and checkpoint readers: absurd counts and shapes in HDF5
# attributes and datasets are refused, naming the file, before allocation.  (The NIfTI and safetensors limits are
# checked in test_nifti and test_safetensors.)
mn_mpi_test(test_read_limits SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_read_limits.c NPROCS 1
            ARGS ${MN_CORPUS_TEST_DIR} TIMEOUT 60 LABELS corpus)
set_tests_properties(test_read_limits_np1 PROPERTIES FIXTURES_REQUIRED corpus_np1)
