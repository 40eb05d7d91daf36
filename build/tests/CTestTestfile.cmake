# CMake generated Testfile for 
# Source directory: /work/main/tests
# Build directory: /work/main/build/tests
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
add_test([=[test_core]=] "/work/main/build/tests/test_core")
set_tests_properties([=[test_core]=] PROPERTIES  ENVIRONMENT "OMP_NUM_THREADS=1;MN_TEST_DATA=/work/main/tests/data" LABELS "" TIMEOUT "300" _BACKTRACE_TRIPLES "/work/main/tests/CMakeLists.txt;15;add_test;/work/main/tests/cmake/core.cmake;2;mn_test;/work/main/tests/cmake/core.cmake;0;;/work/main/tests/CMakeLists.txt;43;include;/work/main/tests/CMakeLists.txt;0;")
