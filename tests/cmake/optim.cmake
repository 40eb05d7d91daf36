# Optimisers: reference trajectories from torch.optim, generated at test time.
add_test(NAME optim_reference COMMAND ${MN_PYTHON} ${PROJECT_SOURCE_DIR}/tests/ref/optim_ref.py
         ${CMAKE_BINARY_DIR}/optim_ref.bin)
set_tests_properties(optim_reference PROPERTIES FIXTURES_SETUP optim_ref TIMEOUT 120)
mn_test(test_optim SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_optim.c ARGS ${CMAKE_BINARY_DIR}/optim_ref.bin)
set_tests_properties(test_optim PROPERTIES FIXTURES_REQUIRED optim_ref)
