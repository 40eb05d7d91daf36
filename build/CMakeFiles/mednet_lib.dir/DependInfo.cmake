
# Consider dependencies only in project.
set(CMAKE_DEPENDS_IN_PROJECT_ONLY OFF)

# The set of languages for which implicit dependencies are needed:
set(CMAKE_DEPENDS_LANGUAGES
  )

# The set of dependency files which are needed:
set(CMAKE_DEPENDS_DEPENDENCY_FILES
  "/work/main/src/core/config.c" "CMakeFiles/mednet_lib.dir/src/core/config.c.o" "gcc" "CMakeFiles/mednet_lib.dir/src/core/config.c.o.d"
  "/work/main/src/core/error.c" "CMakeFiles/mednet_lib.dir/src/core/error.c.o" "gcc" "CMakeFiles/mednet_lib.dir/src/core/error.c.o.d"
  "/work/main/src/core/h5check.c" "CMakeFiles/mednet_lib.dir/src/core/h5check.c.o" "gcc" "CMakeFiles/mednet_lib.dir/src/core/h5check.c.o.d"
  "/work/main/src/core/mem.c" "CMakeFiles/mednet_lib.dir/src/core/mem.c.o" "gcc" "CMakeFiles/mednet_lib.dir/src/core/mem.c.o.d"
  "/work/main/src/core/mpicheck.c" "CMakeFiles/mednet_lib.dir/src/core/mpicheck.c.o" "gcc" "CMakeFiles/mednet_lib.dir/src/core/mpicheck.c.o.d"
  "/work/main/src/core/threads.c" "CMakeFiles/mednet_lib.dir/src/core/threads.c.o" "gcc" "CMakeFiles/mednet_lib.dir/src/core/threads.c.o.d"
  )

# Targets to which this target links.
set(CMAKE_TARGET_LINKED_INFO_FILES
  )

# Fortran module output directory.
set(CMAKE_Fortran_TARGET_MODULE_DIR "")
