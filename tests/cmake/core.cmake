# Core: config parsing, errors, memory.
mn_test(test_core SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_core.c)

# The BLIS kernel-set chooser: measurement in child processes, the cache, unavailable sets, the fall-back.
mn_test(test_blis_choose SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_blis_choose.c TIMEOUT 600 LABELS blis)
mn_mpi_test(test_blis_shared SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_blis_shared.c NPROCS 1 3 TIMEOUT 600
            LABELS blis)
