# MednetVersions.cmake: the oldest dependency versions mednet builds with, checked by what mednet calls rather
# than by version strings alone (site installations often report odd versions, or none, through pkg-config).
#
#   HDF5   >= 1.10.7 in the 1.10 series, >= 1.12.1 in the 1.12 series, any 1.14: H5Pset_file_locking (turning off
#          HDF5's file locks, which many parallel file systems reject) first appeared in 1.10.7 and 1.12.1;
#          1.12.0 lacks it.  Parallel (MPI-IO) build required.
#   nifti  nifti_clib >= 3.0 (the NIfTI-2 API: nifti2_io.h, libnifti2 and libznz).
#   inih   a release with ini_parse_string (the config text is parsed from a broadcast buffer, not a file);
#          found through pkg-config (inih.pc).
#
# Each function stops configuration with a message that names the library found and what is missing.

include(CheckSymbolExists)
include(CheckCSourceCompiles)

# mn_check_hdf5_version(): needs MPI::MPI_C and the HDF5_C_* variables of find_package(HDF5).
function(mn_check_hdf5_version)
  set(CMAKE_REQUIRED_INCLUDES ${HDF5_C_INCLUDE_DIRS})
  set(CMAKE_REQUIRED_DEFINITIONS ${HDF5_C_DEFINITIONS})
  set(CMAKE_REQUIRED_LIBRARIES ${HDF5_C_LIBRARIES} MPI::MPI_C)
  set(CMAKE_REQUIRED_QUIET ON)
  check_symbol_exists(H5Pset_file_locking "hdf5.h" MN_HAVE_H5PSET_FILE_LOCKING)
  check_symbol_exists(H5Pset_fapl_mpio "hdf5.h" MN_HAVE_H5PSET_FAPL_MPIO)
  if(NOT MN_HAVE_H5PSET_FILE_LOCKING)
    message(FATAL_ERROR "HDF5 ${HDF5_VERSION} (${HDF5_C_LIBRARIES}) has no H5Pset_file_locking: mednet needs "
                        "HDF5 >= 1.10.7 (1.10 series) or >= 1.12.1 (1.12 series) or 1.14.\n"
                        "Point CMake at a newer parallel HDF5 with -DHDF5_ROOT=<prefix>.")
  endif()
  if(NOT MN_HAVE_H5PSET_FAPL_MPIO)
    message(FATAL_ERROR "HDF5 ${HDF5_VERSION} (${HDF5_C_LIBRARIES}) has no H5Pset_fapl_mpio: it is not a "
                        "parallel build, or it does not link with the MPI found.")
  endif()
  message(STATUS "HDF5 ${HDF5_VERSION}: H5Pset_file_locking and H5Pset_fapl_mpio found")
endfunction()

# mn_check_nifti(): needs NIFTI_INCLUDE_DIR, NIFTI_LIBRARY, ZNZ_LIBRARY.
function(mn_check_nifti)
  set(CMAKE_REQUIRED_INCLUDES ${NIFTI_INCLUDE_DIR})
  set(CMAKE_REQUIRED_LIBRARIES ${NIFTI_LIBRARY} ${ZNZ_LIBRARY} ZLIB::ZLIB m)
  set(CMAKE_REQUIRED_QUIET ON)
  check_c_source_compiles("
#include <nifti2_io.h>
int main(void) {
  nifti_image *im = nifti_image_read(\"x.nii\", 0);  /* nifti2_image_read in the NIfTI-2 API */
  int64_t nx = im ? im->nx : 0;                      /* 64-bit dimensions: NIfTI-2 */
  nifti_image_free(im);
  return (int)nx;
}" MN_HAVE_NIFTI2)
  if(NOT MN_HAVE_NIFTI2)
    message(FATAL_ERROR "libnifti (${NIFTI_LIBRARY}, headers in ${NIFTI_INCLUDE_DIR}) does not provide the "
                        "NIfTI-2 API: mednet needs nifti_clib >= 3.0 (nifti2_io.h, libnifti2, libznz).")
  endif()
endfunction()

# mn_check_inih(): needs PkgConfig::INIH.
function(mn_check_inih)
  set(CMAKE_REQUIRED_LIBRARIES PkgConfig::INIH)
  set(CMAKE_REQUIRED_QUIET ON)
  check_symbol_exists(ini_parse_string "ini.h" MN_HAVE_INI_PARSE_STRING)
  if(NOT MN_HAVE_INI_PARSE_STRING)
    message(FATAL_ERROR "inih ${INIH_VERSION} (${INIH_LINK_LIBRARIES}) has no ini_parse_string: "
                        "mednet needs a newer inih.")
  endif()
endfunction()
