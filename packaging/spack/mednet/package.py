# Spack recipe for mednet: pre-training 3-D ResNets on HPC clusters (MPI + parallel HDF5 + BLIS).
#
#   spack repo add <mednet checkout>/packaging/spack
#   spack install mednet ^mpich            # or ^openmpi, a site MPI declared as external, ...
#   spack install mednet +native            # -march=native: only for nodes with the build machine's CPU
#
# Every library CMakeLists.txt looks for (find_package, pkg_check_modules, find_library) has a dependency here;
# tests/install/check_spack_recipe.py keeps the two lists in step (ctest label "install").  Spack builds hdf5 with
# the same MPI as mednet, which is what cmake/MednetMPIHDF5.cmake checks.
import os

from spack.package import *

try:  # Spack >= 1.0 keeps its build systems in the builtin package repository
    from spack_repo.builtin.build_systems.cmake import CMakePackage
except ImportError:  # older Spack exports CMakePackage from spack.package
    pass


class Mednet(CMakePackage):
    """MedicalNet-style pre-training of 3-D medical-imaging networks (3-D ResNet encoder, one decoder head per
    dataset) as an MPI program: data-parallel training, a parallel-HDF5 corpus, BLIS GEMMs, Slurm job scripts."""

    # The recipe builds the checkout it lives in (packaging/spack/mednet/ -> the repository root); a site that
    # mirrors mednet elsewhere overrides git, or uses `spack develop mednet@main` in its own clone.
    git = "file://" + os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))

    version("main", branch="main")

    variant("tests", default=False, description="Build the test suite and benchmarks (ctest; needs PyTorch)")
    variant(
        "native",
        default=False,
        description="Compile with -march=native (the binary may die with SIGILL on other CPUs)",
    )

    depends_on("c", type="build")
    depends_on("cmake@3.20:", type="build")
    depends_on("pkgconfig", type="build")  # pkg_check_modules(inih)

    depends_on("mpi@3:")
    # H5Pset_file_locking appeared in 1.10.7 and 1.12.1; the MPI-IO driver needs +mpi.
    depends_on("hdf5@1.10.7:1.10,1.12.1: +mpi")
    depends_on("blis threads=openmp")
    depends_on("nifti-clib@3:")  # NIfTI-2 API: packaging/spack/nifti-clib
    depends_on("libinih")
    depends_on("zlib-api")

    # The tests compare with PyTorch references and read HDF5 fixtures from Python.
    depends_on("python@3.8:", type=("build", "test"), when="+tests")
    depends_on("py-torch", type="test", when="+tests")
    depends_on("py-numpy", type="test", when="+tests")
    depends_on("py-h5py", type="test", when="+tests")

    def cmake_args(self):
        args = [
            self.define_from_variant("MN_NATIVE", "native"),
            self.define_from_variant("MN_BUILD_TESTS", "tests"),
            self.define("MPI_C_COMPILER", self.spec["mpi"].mpicc),
            # the HDF5 Spack built for this MPI, not an h5pcc that happens to be on PATH
            self.define("HDF5_ROOT", self.spec["hdf5"].prefix),
        ]
        if self.spec.satisfies("+tests"):
            args.append(self.define("MN_PYTHON", self.spec["python"].command.path))
        return args

    def check(self):
        with working_dir(self.build_directory):
            ctest("--output-on-failure", "-LE", "slurm")
