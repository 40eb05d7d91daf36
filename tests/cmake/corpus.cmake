# Corpus (issue 4): NIfTI reading, normalisation, the parallel-HDF5 corpus, shards, sampler, mednet prep.
mn_test(test_nifti SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_nifti.c TIMEOUT 60 LABELS corpus)

# The synthetic inputs (a fixture: the 1-, 2- and 4-rank runs read the same files), the MPI corpus test, and the
# identity of the 1-, 2- and 4-rank corpora checked with h5diff (hdf5-tools).
set(MN_CORPUS_TEST_DIR ${CMAKE_BINARY_DIR}/corpus_test)
mn_test(test_corpus_inputs SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_corpus_inputs.c ARGS ${MN_CORPUS_TEST_DIR}
        TIMEOUT 60 LABELS corpus)
set_tests_properties(test_corpus_inputs PROPERTIES FIXTURES_SETUP corpus_inputs)
mn_mpi_test(test_corpus SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_corpus.c NPROCS 1 2 4
            ARGS ${MN_CORPUS_TEST_DIR} TIMEOUT 120 LABELS corpus)
foreach(np 1 2 4)
  set_tests_properties(test_corpus_np${np} PROPERTIES FIXTURES_REQUIRED corpus_inputs FIXTURES_SETUP corpus_np${np})
endforeach()
find_program(MN_H5DIFF h5diff REQUIRED)
add_test(NAME test_corpus_h5diff
         COMMAND sh -c "${MN_H5DIFF} -v1 np1.h5 np2.h5 && ${MN_H5DIFF} -v1 np1.h5 np4.h5 && echo 'corpora of 1, 2 and 4 ranks are identical'"
         WORKING_DIRECTORY ${MN_CORPUS_TEST_DIR})
set_tests_properties(test_corpus_h5diff PROPERTIES LABELS corpus TIMEOUT 60
                     FIXTURES_REQUIRED "corpus_np1;corpus_np2;corpus_np4")
