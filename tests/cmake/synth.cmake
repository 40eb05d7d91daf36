# Synthetic corpora (`mednet synth`, src/data/deform.c): the deformations (identity, whole-voxel translation, label
# values, determinism, grid writer) and the command end to end (same bytes for a seed and for 1 and 2 ranks, bad
# input, prep and a few pre-training steps on the result).
mn_test(test_deform SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_deform.c TIMEOUT 60 LABELS corpus)
add_test(NAME test_synth_cli
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/synth/test_synth_cli.sh $<TARGET_FILE:mednet>
                 ${PROJECT_SOURCE_DIR}/configs/corpus_mricron.ini ${PROJECT_SOURCE_DIR}/configs/pretrain_mricron.ini
                 ${CMAKE_BINARY_DIR}/synth-tests ${MN_MPIEXEC})
set_tests_properties(test_synth_cli PROPERTIES LABELS "corpus;mpi" TIMEOUT 600 PROCESSORS 2
                     ENVIRONMENT "OMP_NUM_THREADS=1")
