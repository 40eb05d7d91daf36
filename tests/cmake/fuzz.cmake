# The fuzz harnesses (tests/fuzz) without libFuzzer: each replays its seed corpus and every input that once made a
# harness fail (tests/fuzz/regress/<harness>/), so that a fixed finding stays fixed.  Under MN_SANITIZE these runs
# are checked by ASan and UBSan too.  The fuzzing itself: tests/fuzz/run_fuzz.sh in a MN_FUZZ build.
set(MN_FUZZ_DIR ${PROJECT_SOURCE_DIR}/tests/fuzz)
foreach(h nifti config safetensors corpus ckpt)
  add_executable(fuzz_replay_${h} ${MN_FUZZ_DIR}/fuzz_${h}.c ${MN_FUZZ_DIR}/fuzz_main.c)
  target_compile_options(fuzz_replay_${h} PRIVATE ${MN_WARNINGS})
  target_include_directories(fuzz_replay_${h} PRIVATE ${PROJECT_SOURCE_DIR}/src ${MN_FUZZ_DIR})
  target_link_libraries(fuzz_replay_${h} PRIVATE mednet_lib)
  set(dirs ${MN_FUZZ_DIR}/seeds/${h})
  if(EXISTS ${MN_FUZZ_DIR}/regress/${h})
    list(APPEND dirs ${MN_FUZZ_DIR}/regress/${h})
  endif()
  add_test(NAME test_fuzz_replay_${h} COMMAND fuzz_replay_${h} ${dirs})
  set_tests_properties(test_fuzz_replay_${h} PROPERTIES LABELS "fuzz" TIMEOUT 120 ENVIRONMENT "OMP_NUM_THREADS=1")
endforeach()
