# Installation (tests/install/): the build tree installed into a fresh temporary prefix runs from there (mednet
# info, prep of the default corpus and a short pretrain on 2 ranks), and the Spack recipe in packaging/spack/ lists
# a dependency for every library CMakeLists.txt looks for.
add_test(NAME install_prefix
         COMMAND ${CMAKE_COMMAND} -E env CMAKE_COMMAND=${CMAKE_COMMAND}
                 bash ${PROJECT_SOURCE_DIR}/tests/install/run_install_test.sh ${CMAKE_BINARY_DIR} ${MN_MPIEXEC})
set_tests_properties(install_prefix PROPERTIES TIMEOUT 600 LABELS "install;mpi" PROCESSORS 2
                     ENVIRONMENT "OMP_NUM_THREADS=1")
add_test(NAME install_spack_recipe
         COMMAND ${MN_PYTHON} ${PROJECT_SOURCE_DIR}/tests/install/check_spack_recipe.py
                 ${PROJECT_SOURCE_DIR}/packaging/spack/mednet/package.py ${PROJECT_SOURCE_DIR}/CMakeLists.txt)
set_tests_properties(install_spack_recipe PROPERTIES TIMEOUT 60 LABELS "install")
