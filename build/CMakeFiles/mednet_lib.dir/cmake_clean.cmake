file(REMOVE_RECURSE
  "CMakeFiles/mednet_lib.dir/src/core/config.c.o"
  "CMakeFiles/mednet_lib.dir/src/core/config.c.o.d"
  "CMakeFiles/mednet_lib.dir/src/core/error.c.o"
  "CMakeFiles/mednet_lib.dir/src/core/error.c.o.d"
  "CMakeFiles/mednet_lib.dir/src/core/h5check.c.o"
  "CMakeFiles/mednet_lib.dir/src/core/h5check.c.o.d"
  "CMakeFiles/mednet_lib.dir/src/core/mem.c.o"
  "CMakeFiles/mednet_lib.dir/src/core/mem.c.o.d"
  "CMakeFiles/mednet_lib.dir/src/core/mpicheck.c.o"
  "CMakeFiles/mednet_lib.dir/src/core/mpicheck.c.o.d"
  "CMakeFiles/mednet_lib.dir/src/core/threads.c.o"
  "CMakeFiles/mednet_lib.dir/src/core/threads.c.o.d"
  "libmednet.a"
  "libmednet.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/mednet_lib.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
