# MednetMPIHDF5.cmake: make parallel HDF5 and MPI agree.
#
# A parallel HDF5 is built against one MPI library.  Linking it into a program built with another MPI gives a
# binary that loads two MPI libraries (say libmpich.so.12 through mpicc and libmpi.so.40 through Open MPI's
# libhdf5) and crashes in MPI_Init or the first file open.  CMake's FindHDF5 does not look at the MPI found by
# FindMPI: it takes the first `h5pcc` on PATH.  So this module
#
#   mn_hdf5_hint_from_mpi()  (before find_package(HDF5)) looks for the HDF5 compiler wrapper that belongs to the
#                            MPI found: `h5pcc<suffix>` for `mpicc<suffix>` (Debian: mpicc.mpich -> h5pcc.mpich),
#                            then `h5pcc.<family>` (mpich or openmpi), next to the MPI compiler or on PATH, and
#                            hands it to FindHDF5 through HDF5_C_COMPILER_EXECUTABLE.  It does nothing when the user
#                            chose an HDF5 (HDF5_C_COMPILER_EXECUTABLE, HDF5_ROOT or HDF5_DIR set), nor when no such
#                            wrapper exists (Spack, modules: one HDF5 per environment, found the usual way).
#   mn_check_hdf5_mpi()      (after both are found) compares the MPI libraries that the HDF5 library needs
#                            (its DT_NEEDED entries, read with objdump) with those of a small program linked
#                            against the MPI found, and stops with a message naming both when they differ.  For
#                            a static HDF5 (no DT_NEEDED) it falls back to the library path (.../openmpi/... vs
#                            the MPI family from mpi.h).
#
# Both rely only on files and tools present wherever the C compiler is (objdump comes with binutils); when a tool
# is missing the check says so and is skipped rather than failing the build.

include(CheckSymbolExists)

# mn_mpi_family(<out>): "openmpi", "mpich" (MPICH and its derivatives: Intel MPI, MVAPICH, Cray MPICH) or
# "unknown", from the macros mpi.h defines.  Needs MPI::MPI_C.
function(mn_mpi_family out)
  set(CMAKE_REQUIRED_LIBRARIES MPI::MPI_C)
  set(CMAKE_REQUIRED_QUIET ON)
  check_symbol_exists(OMPI_MAJOR_VERSION "mpi.h" MN_MPI_IS_OPENMPI)
  check_symbol_exists(MPICH_VERSION "mpi.h" MN_MPI_IS_MPICH)
  if(MN_MPI_IS_OPENMPI)
    set(${out} openmpi PARENT_SCOPE)
  elseif(MN_MPI_IS_MPICH)
    set(${out} mpich PARENT_SCOPE)
  else()
    set(${out} unknown PARENT_SCOPE)
  endif()
endfunction()

# mn_hdf5_hint_from_mpi(): see the file comment.  Call after find_package(MPI), before find_package(HDF5).
function(mn_hdf5_hint_from_mpi)
  if(HDF5_C_COMPILER_EXECUTABLE OR HDF5_ROOT OR HDF5_DIR OR DEFINED ENV{HDF5_ROOT} OR DEFINED ENV{HDF5_DIR})
    return()
  endif()
  mn_mpi_family(family)
  set(names "")
  set(hints "")
  if(MPI_C_COMPILER)
    get_filename_component(mpicc_name "${MPI_C_COMPILER}" NAME)
    get_filename_component(mpicc_dir "${MPI_C_COMPILER}" DIRECTORY)
    list(APPEND hints "${mpicc_dir}")
    if(mpicc_name MATCHES "^mpicc(.+)$")
      list(APPEND names "h5pcc${CMAKE_MATCH_1}")
    endif()
  endif()
  if(NOT family STREQUAL "unknown")
    list(APPEND names "h5pcc.${family}")
  endif()
  if(NOT names)
    return()
  endif()
  find_program(MN_H5PCC_FOR_MPI NAMES ${names} HINTS ${hints} NO_CACHE)
  if(MN_H5PCC_FOR_MPI)
    message(STATUS "HDF5: using ${MN_H5PCC_FOR_MPI}, the HDF5 wrapper of the MPI found (${family}, "
                   "${MPI_C_COMPILER}); set HDF5_C_COMPILER_EXECUTABLE or HDF5_ROOT to choose another")
    set(HDF5_C_COMPILER_EXECUTABLE "${MN_H5PCC_FOR_MPI}" CACHE FILEPATH "HDF5 C compiler wrapper (h5pcc)")
  endif()
endfunction()

# _mn_needed_mpi(<file> <out>): the MPI libraries among <file>'s DT_NEEDED entries (libmpi*.so*, libmpich*.so*),
# or "" when it has none or cannot be read.
function(_mn_needed_mpi file out)
  set(${out} "" PARENT_SCOPE)
  if(NOT MN_OBJDUMP)
    return()
  endif()
  execute_process(COMMAND "${MN_OBJDUMP}" -p "${file}" OUTPUT_VARIABLE dump ERROR_QUIET RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    return()
  endif()
  string(REGEX MATCHALL "NEEDED +lib(mpi|mpich)(_[A-Za-z0-9]+)?\\.so[.0-9]*" lines "${dump}")
  set(libs "")
  foreach(l ${lines})
    string(REGEX REPLACE "^NEEDED +" "" l "${l}")
    list(APPEND libs "${l}")
  endforeach()
  list(REMOVE_DUPLICATES libs)
  set(${out} "${libs}" PARENT_SCOPE)
endfunction()

# mn_check_hdf5_mpi(): see the file comment.  Stops configuration when HDF5 was built for another MPI.
function(mn_check_hdf5_mpi)
  if(CMAKE_OBJDUMP AND NOT MN_OBJDUMP)
    set(MN_OBJDUMP "${CMAKE_OBJDUMP}" CACHE FILEPATH "objdump, to read the MPI libraries HDF5 needs")
  endif()
  find_program(MN_OBJDUMP NAMES objdump DOC "objdump, to read the MPI libraries HDF5 needs")
  mn_mpi_family(family)

  # The HDF5 C library itself (libhdf5.so / libhdf5.a; also an imported target from hdf5-config.cmake).
  set(h5lib "")
  foreach(l ${HDF5_C_LIBRARIES} ${HDF5_LIBRARIES})
    if(TARGET ${l})
      get_target_property(loc ${l} LOCATION)
      set(l "${loc}")
    endif()
    if(l MATCHES "(^|/)lib(hdf5|hdf5_openmpi|hdf5_mpich)(_debug)?\\.(so|a|dylib)")
      set(h5lib "${l}")
      break()
    endif()
  endforeach()
  if(NOT h5lib)
    message(STATUS "HDF5/MPI check: no HDF5 library file in '${HDF5_C_LIBRARIES}'; not checked")
    return()
  endif()
  get_filename_component(h5real "${h5lib}" REALPATH)

  # The MPI libraries a program built here links: a small MPI program, linked like mednet.
  set(probe_dir "${CMAKE_BINARY_DIR}/CMakeFiles/mn_mpi_probe")
  file(WRITE "${probe_dir}/probe.c"
       "#include <mpi.h>\nint main(int argc, char **argv) { MPI_Init(&argc, &argv); return MPI_Finalize(); }\n")
  try_compile(ok "${probe_dir}/build" "${probe_dir}/probe.c" LINK_LIBRARIES MPI::MPI_C
              COPY_FILE "${probe_dir}/probe" OUTPUT_VARIABLE log)
  set(mpi_needed "")
  if(ok)
    _mn_needed_mpi("${probe_dir}/probe" mpi_needed)
  endif()
  _mn_needed_mpi("${h5real}" h5_needed)

  set(hint "Build with the HDF5 of the same MPI: -DHDF5_C_COMPILER_EXECUTABLE=<its h5pcc> or -DHDF5_ROOT=<its \
prefix> (or choose the MPI with -DMPI_C_COMPILER=<mpicc>). On Debian: mpicc.mpich goes with libhdf5-mpich-dev \
(h5pcc.mpich), mpicc.openmpi with libhdf5-openmpi-dev (h5pcc.openmpi). Under Spack or modules, load the hdf5 \
built against the loaded MPI.")
  if(h5_needed AND mpi_needed)
    foreach(l ${h5_needed})
      list(FIND mpi_needed "${l}" at)
      if(at EQUAL -1)
        message(FATAL_ERROR "HDF5 was built for another MPI than the one found.\n"
                "  MPI (${family}, ${MPI_C_COMPILER}): programs link ${mpi_needed}\n"
                "  HDF5 ${HDF5_VERSION} (${h5real}) needs ${h5_needed}\n"
                "A binary linking both would load two MPI libraries and crash.\n${hint}")
      endif()
    endforeach()
    message(STATUS "HDF5/MPI check: HDF5 needs ${h5_needed}, as MPI programs here do")
  elseif((h5real MATCHES "/openmpi/" AND family STREQUAL "mpich")
         OR (h5real MATCHES "/mpich/" AND family STREQUAL "openmpi"))
    message(FATAL_ERROR "HDF5 was built for another MPI than the one found: MPI is ${family} "
            "(${MPI_C_COMPILER}), HDF5 is ${h5real}.\n${hint}")
  else()
    message(STATUS "HDF5/MPI check: cannot read the MPI libraries of ${h5real} "
                   "(static library or no objdump); not checked")
  endif()
endfunction()
