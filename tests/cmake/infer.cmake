# Inference and evaluation: mednet eval's metrics (hand cases, distance transform against brute force, the command
# against scipy), mednet infer (sliding window against numpy, end-to-end on synthetic volumes, bad input).
mn_test(test_segmetrics SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_segmetrics.c TIMEOUT 60 LABELS infer)
add_test(NAME test_eval_xcheck COMMAND ${MN_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_eval_xcheck.py
         $<TARGET_FILE:mednet> ${CMAKE_BINARY_DIR}/eval_test ${MN_MPIEXEC})
set_tests_properties(test_eval_xcheck PROPERTIES LABELS infer TIMEOUT 120)
set(MN_INFER_TEST_DIR ${CMAKE_BINARY_DIR}/infer_test)
file(MAKE_DIRECTORY ${MN_INFER_TEST_DIR})
mn_test(test_infer_window SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_infer_window.c ARGS ${MN_INFER_TEST_DIR}
        TIMEOUT 60 LABELS infer)
set_tests_properties(test_infer_window PROPERTIES FIXTURES_SETUP infer_window)
add_test(NAME test_infer_window_numpy COMMAND ${MN_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_infer_window.py
         ${MN_INFER_TEST_DIR})
set_tests_properties(test_infer_window_numpy PROPERTIES LABELS infer TIMEOUT 60 FIXTURES_REQUIRED infer_window)
# End to end: prep + a short training on synthetic blobs, then inference on an oblique, flipped, anisotropic volume
# larger than the crop (grid and header kept, Dice >= 0.9, TTA, probabilities against PyTorch, 1 vs 2 ranks, bad
# input).  Measured 5 to 10 minutes on the shared 2-core machine at load averages of 20 to 30 (240 training steps
# are most of it; a step took 0.5 s there): labelled slow.
add_test(NAME test_infer_e2e COMMAND ${MN_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_infer_e2e.py
         $<TARGET_FILE:mednet> ${MN_INFER_TEST_DIR}/e2e ${MN_MPIEXEC})
set_tests_properties(test_infer_e2e PROPERTIES LABELS "infer;slow" TIMEOUT 1500 ENVIRONMENT "OMP_NUM_THREADS=1")
# Inference from safetensors: a 12-step training, its export, infer from both bitwise equal; a file without the
# export's metadata refused without options and accepted with --config/--corpus/--head (2 ranks); encoder-only refused;
# a 2-class head for a 3-class dataset refused; fine-tuning from an encoder file missing a tensor refused.
add_test(NAME test_infer_safetensors COMMAND ${MN_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_infer_safetensors.py
         $<TARGET_FILE:mednet> ${MN_INFER_TEST_DIR}/safetensors ${MN_MPIEXEC})
set_tests_properties(test_infer_safetensors PROPERTIES LABELS "infer;train" TIMEOUT 600 ENVIRONMENT "OMP_NUM_THREADS=1")
