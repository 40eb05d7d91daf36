# Spack recipe for nifti_clib, the NIfTI-1/NIfTI-2 C libraries (libniftiio, libnifti2, libznz), which mednet reads
# its input volumes with.  Spack's builtin repository has no package for it; this one lives next to mednet's.
from spack.package import *

try:  # Spack >= 1.0 keeps its build systems in the builtin package repository
    from spack_repo.builtin.build_systems.cmake import CMakePackage
except ImportError:  # older Spack exports CMakePackage from spack.package
    pass


class NiftiClib(CMakePackage):
    """C libraries for reading and writing NIfTI-1 and NIfTI-2 neuroimaging files (.nii, .nii.gz)."""

    homepage = "https://nifti-imaging.github.io"
    git = "https://github.com/NIFTI-Imaging/nifti_clib.git"

    # Fetched by tag: the project's build derives its version from `git describe --tags`.
    version("3.0.1", tag="v3.0.1")
    version("3.0.0", tag="v3.0.0")

    depends_on("c", type="build")
    depends_on("cmake@3.10.2:", type="build")
    depends_on("zlib-api")

    def cmake_args(self):
        return [
            self.define("BUILD_SHARED_LIBS", True),
            self.define("USE_NIFTI2_CODE", True),
            self.define("NIFTI_BUILD_TESTING", False),  # its tests download data at configure time
            self.define("NIFTI_BUILD_APPLICATIONS", False),
        ]
