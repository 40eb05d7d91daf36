# Core: config parsing, errors, memory.
mn_test(test_core SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_core.c)
