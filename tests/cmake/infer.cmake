# Inference and evaluation: mednet eval's metrics (hand cases, distance transform against brute force, the command
# against scipy), mednet infer (sliding window against numpy, end-to-end on synthetic volumes, bad input).
mn_test(test_segmetrics SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_segmetrics.c TIMEOUT 60 LABELS infer)
add_test(NAME test_eval_xcheck COMMAND ${MN_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_eval_xcheck.py
         $<TARGET_FILE:mednet> ${CMAKE_BINARY_DIR}/eval_test)
set_tests_properties(test_eval_xcheck PROPERTIES LABELS infer TIMEOUT 120)
