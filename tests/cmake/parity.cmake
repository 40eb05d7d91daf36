# Parity with PyTorch: tests/ref/make_fixtures.py writes the reference fixtures with python3-torch at test
# time (never committed); test_torch_parity runs every layer on them.  The ctest fixture `parity` orders the two.
add_test(NAME parity_fixtures
         COMMAND ${MN_PYTHON} ${PROJECT_SOURCE_DIR}/tests/ref/make_fixtures.py ${CMAKE_BINARY_DIR}/parity_fixtures.h5)
set_tests_properties(parity_fixtures PROPERTIES FIXTURES_SETUP parity TIMEOUT 120 LABELS "parity"
                     ENVIRONMENT "OMP_NUM_THREADS=1")

mn_test(test_torch_parity SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_torch_parity.c
        ARGS ${CMAKE_BINARY_DIR}/parity_fixtures.h5 TIMEOUT 120 LABELS parity)
set_tests_properties(test_torch_parity PROPERTIES FIXTURES_REQUIRED parity)

# The same comparison on 2 threads (BLIS and OpenMP), where a race in a parallel loop would show.
add_test(NAME test_torch_parity_t2 COMMAND test_torch_parity ${CMAKE_BINARY_DIR}/parity_fixtures.h5 2)
set_tests_properties(test_torch_parity_t2 PROPERTIES FIXTURES_REQUIRED parity TIMEOUT 120 LABELS "parity"
                     PROCESSORS 2 ENVIRONMENT "OMP_NUM_THREADS=2")
