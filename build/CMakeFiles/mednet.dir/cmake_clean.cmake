file(REMOVE_RECURSE
  "CMakeFiles/mednet.dir/src/cli/main.c.o"
  "CMakeFiles/mednet.dir/src/cli/main.c.o.d"
  "mednet"
  "mednet.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/mednet.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
