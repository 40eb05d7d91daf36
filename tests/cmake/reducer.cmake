# The bucketed reducer's message pattern (src/parallel/reducer.c): test_reducer_pattern.sh runs the driver under Open
# MPI's PML monitoring and checks the bytes each rank sends and receives.  At 4 ranks it tells a tree rooted at
# rank 0 from a bandwidth-optimal all-reduce; at 2 ranks both move the same bytes, so it checks the result and the
# balance only.  Exit 77 (no PML monitoring in this MPI) is reported as skipped.
add_executable(test_reducer_pattern ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_reducer_pattern.c)
target_compile_options(test_reducer_pattern PRIVATE ${MN_WARNINGS})
target_link_libraries(test_reducer_pattern PRIVATE mednet_lib)
target_include_directories(test_reducer_pattern PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
foreach(np 2 4)
  add_test(NAME test_reducer_pattern_np${np}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_reducer_pattern.sh ${np}
                   $<TARGET_FILE:test_reducer_pattern> ${MN_MPIEXEC})
  set_tests_properties(test_reducer_pattern_np${np} PROPERTIES TIMEOUT 150 LABELS "mpi;reducer" PROCESSORS ${np}
                       SKIP_RETURN_CODE 77 ENVIRONMENT "OMP_NUM_THREADS=1")
endforeach()
