# Corpus: NIfTI reading, normalisation, the parallel-HDF5 corpus, shards, sampler, mednet prep.
mn_test(test_nifti SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_nifti.c TIMEOUT 60 LABELS corpus)

# The synthetic inputs (a fixture: the 1-, 2- and 4-rank runs read the same files), the MPI corpus test, and the
# identity of the 1-, 2- and 4-rank corpora checked with h5diff (hdf5-tools).
set(MN_CORPUS_TEST_DIR ${CMAKE_BINARY_DIR}/corpus_test)
file(MAKE_DIRECTORY ${MN_CORPUS_TEST_DIR})  # the working directory of the tests below must exist before they start
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
         COMMAND sh -c "${MN_H5DIFF} -v1 np1.h5 np2.h5 && ${MN_H5DIFF} -v1 np1.h5 np4.h5 && ${MN_H5DIFF} -v1 np1.h5 np1_gzip.h5 && ${MN_H5DIFF} -v1 np1_skip.h5 np2_skip.h5 && ${MN_H5DIFF} -v1 np1_skip.h5 np4_skip.h5 && echo 'corpora of 1, 2 and 4 ranks (also with skipped pairs, and gzip on 1 rank) are identical'"
         WORKING_DIRECTORY ${MN_CORPUS_TEST_DIR})
set_tests_properties(test_corpus_h5diff PROPERTIES LABELS corpus TIMEOUT 60
                     FIXTURES_REQUIRED "corpus_np1;corpus_np2;corpus_np4")

# The real mricron corpus (Debian's mricron-data) through the `mednet prep` command on 1, 2 and 4 ranks: it builds,
# prints its per-dataset summary, and the 1-, 2- and 4-rank runs give identical files.
set(MN_MRICRON_INI ${PROJECT_SOURCE_DIR}/configs/corpus_mricron.ini)
add_test(NAME test_prep_mricron_np1
         COMMAND sh -c "$<TARGET_FILE:mednet> prep ${MN_MRICRON_INI} --output mricron_np1.h5 --force > mricron_np1.log && cat mricron_np1.log && grep -Eq 'colin_aal +pretrain MR +1 ' mricron_np1.log && grep -Eq 'colin_harvardoxford +pretrain' mricron_np1.log && grep -Eq 'colin_brainmask +pretrain.* 2: background,brain' mricron_np1.log && grep -Eq 'inia19_neuromaps +target' mricron_np1.log"
         WORKING_DIRECTORY ${MN_CORPUS_TEST_DIR})
add_test(NAME test_prep_mricron_np2
         COMMAND ${MN_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} 2 $<TARGET_FILE:mednet> prep ${MN_MRICRON_INI}
                 --output mricron_np2.h5 --force
         WORKING_DIRECTORY ${MN_CORPUS_TEST_DIR})
add_test(NAME test_prep_mricron_np4
         COMMAND ${MN_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} 4 $<TARGET_FILE:mednet> prep ${MN_MRICRON_INI}
                 --output mricron_np4.h5 --force
         WORKING_DIRECTORY ${MN_CORPUS_TEST_DIR})
set_tests_properties(test_prep_mricron_np4 PROPERTIES FIXTURES_REQUIRED corpus_inputs FIXTURES_SETUP mricron_np4
                     PROCESSORS 4 LABELS corpus)
set_tests_properties(test_prep_mricron_np1 PROPERTIES FIXTURES_REQUIRED corpus_inputs FIXTURES_SETUP mricron_np1)
set_tests_properties(test_prep_mricron_np2 PROPERTIES FIXTURES_REQUIRED corpus_inputs FIXTURES_SETUP mricron_np2
                     PROCESSORS 2)
add_test(NAME test_prep_mricron_h5diff
         COMMAND sh -c "${MN_H5DIFF} -v1 mricron_np1.h5 mricron_np2.h5 && ${MN_H5DIFF} -v1 mricron_np1.h5 mricron_np4.h5 && echo 'mricron corpora of 1, 2 and 4 ranks are identical'"
         WORKING_DIRECTORY ${MN_CORPUS_TEST_DIR})
set_tests_properties(test_prep_mricron_h5diff PROPERTIES FIXTURES_REQUIRED "mricron_np1;mricron_np2;mricron_np4")

# The command on bad input (every case, 1 and 2 ranks): non-zero exit, the cause named, nothing written, an
# existing corpus never modified; corrupt corpus files rejected by `mednet prep --info`.
add_test(NAME test_prep_cli_bad
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_corpus_cli.sh $<TARGET_FILE:mednet> ${MN_MPIEXEC}
                 ${MPIEXEC_NUMPROC_FLAG}
         WORKING_DIRECTORY ${MN_CORPUS_TEST_DIR})
set_tests_properties(test_prep_cli_bad PROPERTIES FIXTURES_REQUIRED "corpus_inputs;corpus_np1;mricron_np1"
                     LABELS corpus TIMEOUT 120)
set_tests_properties(test_prep_mricron_np1 test_prep_mricron_np2 test_prep_mricron_h5diff PROPERTIES LABELS corpus)

# An independent re-implementation (numpy, raw NIfTI headers, no libnifti) of the resampling, label maps and
# normalisation, compared with every volume of the real mricron corpus.
add_test(NAME test_corpus_xcheck COMMAND ${MN_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_corpus_xcheck.py
         mricron_np1.h5 WORKING_DIRECTORY ${MN_CORPUS_TEST_DIR})
set_tests_properties(test_corpus_xcheck PROPERTIES FIXTURES_REQUIRED mricron_np1 LABELS corpus TIMEOUT 120)

# The documented example definition (every key) stays valid: it builds on mricron-data.
add_test(NAME test_prep_example
         COMMAND sh -c "$<TARGET_FILE:mednet> prep ${PROJECT_SOURCE_DIR}/configs/corpus_example.ini --output example.h5 --force > example.log && cat example.log && grep -Eq 'colin_window +pretrain other' example.log"
         WORKING_DIRECTORY ${MN_CORPUS_TEST_DIR})
set_tests_properties(test_prep_example PROPERTIES FIXTURES_REQUIRED corpus_inputs LABELS corpus)

# A corpus file that one rank cannot open (a path only it gets wrong, a directory, not HDF5, another file): every
# rank returns an agreed error within seconds from mn_corpus_open and mn_shard_load; the TIMEOUT turns a hang into
# a failure.
mn_mpi_test(test_corpus_open_fault SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_corpus_open_fault.c NPROCS 3
            ARGS ${MN_CORPUS_TEST_DIR} TIMEOUT 30 LABELS corpus)
set_tests_properties(test_corpus_open_fault_np3 PROPERTIES FIXTURES_REQUIRED corpus_np1)

# Damaged copies of the corpus (seeded byte flips in the voxel data, truncations before and after the open): the
# open or the shard load returns an agreed error on every rank, never a local one (MPI_Abort), never a hang.
mn_mpi_test(test_corpus_damage SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_corpus_damage.c NPROCS 2
            ARGS ${MN_CORPUS_TEST_DIR} TIMEOUT 60 LABELS corpus)
set_tests_properties(test_corpus_damage_np2 PROPERTIES FIXTURES_REQUIRED corpus_np1)

# The streaming shard reader: streamed (cache 5x smaller than the shard, I/O thread, look-ahead) and in-memory
# batches are bitwise identical, the cache stays within its bound, start-up issues a fixed number of collectives
# (counted through MPI's profiling interface) whatever the corpus size and P.
mn_mpi_test(test_stream SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_stream.c NPROCS 1 2
            ARGS ${MN_CORPUS_TEST_DIR} TIMEOUT 120 LABELS corpus)
foreach(np 1 2)
  set_tests_properties(test_stream_np${np} PROPERTIES FIXTURES_REQUIRED "corpus_np1;mricron_np1")
endforeach()

# MPI-IO hints on the parallel create: the file is the same as without them; a malformed hint is one clear error.
string(REPLACE ";" " " MN_MPIEXEC_LINE "${MN_MPIEXEC}")
add_test(NAME test_prep_hints
         COMMAND sh -c "${MN_MPIEXEC_LINE} ${MPIEXEC_NUMPROC_FLAG} 2 $<TARGET_FILE:mednet> prep ${MN_MRICRON_INI} --output hints.h5 --force 'corpus.mpiio_hints=romio_cb_write=enable, striping_factor=2, striping_unit=1048576' && ${MN_H5DIFF} -v1 mricron_np1.h5 hints.h5 && ! $<TARGET_FILE:mednet> prep ${MN_MRICRON_INI} --output hints_bad.h5 --force corpus.mpiio_hints=nonsense > hints_bad.log 2>&1 && grep -q \"mpiio_hints: 'nonsense' is not key=value\" hints_bad.log && test ! -e hints_bad.h5 && echo 'hints: same file with hints; a malformed hint refused'"
         WORKING_DIRECTORY ${MN_CORPUS_TEST_DIR})
set_tests_properties(test_prep_hints PROPERTIES FIXTURES_REQUIRED "corpus_inputs;mricron_np1" LABELS corpus
                     PROCESSORS 2 TIMEOUT 120)
