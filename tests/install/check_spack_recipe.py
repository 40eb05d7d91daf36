#!/usr/bin/python3
"""check_spack_recipe.py RECIPE CMAKELISTS: the Spack recipe (packaging/spack/mednet/package.py) and CMakeLists.txt
agree, without Spack (ctest label "install", tests/cmake/install.cmake).

  - every dependency CMakeLists.txt (and cmake/*.cmake next to it) looks for with find_package, pkg_check_modules
    or find_library has a depends_on in the recipe (through the table CMAKE_TO_SPACK below; a dependency the table
    does not know is a failure: add it to the table and to the recipe);
  - every library the recipe depends on is one CMake looks for (build tools and the test-only Python stack aside);
  - hdf5 is required with +mpi and from a version with H5Pset_file_locking, blis with OpenMP threads when CMake
    uses OpenMP, cmake at least cmake_minimum_required;
  - the recipe has a `native` variant, default False, passed as MN_NATIVE (so MN_NATIVE=OFF unless +native), and
    CMakeLists.txt's MN_NATIVE defaults to OFF; the `tests` variant is passed as MN_BUILD_TESTS.

The recipe is read with the ast module, never imported, so Spack need not be installed.
"""
import ast
import glob
import os
import re
import sys

# CMake dependency (kind, name) -> Spack package, or None when the compiler provides it.
CMAKE_TO_SPACK = {
    ("find_package", "MPI"): "mpi",
    ("find_package", "HDF5"): "hdf5",
    ("find_package", "OpenMP"): None,  # the compiler's runtime
    ("find_package", "Threads"): None,  # the C library's pthreads
    ("find_package", "PkgConfig"): "pkgconfig",
    ("find_package", "ZLIB"): "zlib-api",
    ("pkg_check_modules", "inih"): "libinih",
    ("find_library", "blis"): "blis",
    ("find_library", "nifti2"): "nifti-clib",
    ("find_library", "znz"): "nifti-clib",
}
# Recipe dependencies CMake does not look for as libraries.
NOT_LIBRARIES = {"c", "cmake", "pkgconfig", "python", "py-torch", "py-numpy", "py-h5py"}

failures = []


def check(cond, what):
    print("  %s %s" % ("ok  " if cond else "FAIL", what))
    if not cond:
        failures.append(what)


def cmake_commands(text, name):
    """Argument strings of every call of the CMake command `name` (comments stripped)."""
    text = re.sub(r"#[^\n]*", "", text)
    out = []
    for m in re.finditer(r"\b%s\s*\(" % name, text, flags=re.I):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.end():i - 1].split())
    return out


def cmake_dependencies(paths):
    deps = set()
    for p in paths:
        text = open(p).read()
        for args in cmake_commands(text, "find_package"):
            deps.add(("find_package", args[0]))
        for args in cmake_commands(text, "pkg_check_modules"):
            keywords = {"REQUIRED", "QUIET", "IMPORTED_TARGET", "GLOBAL", "NO_CMAKE_PATH",
                        "NO_CMAKE_ENVIRONMENT_PATH"}
            for mod in args[1:]:
                if mod not in keywords:
                    deps.add(("pkg_check_modules", re.split(r"[<>=]", mod)[0]))
        for args in cmake_commands(text, "find_library"):
            # find_library(<VAR> name [path...]) or find_library(<VAR> NAMES name... [HINTS ...] ...)
            names = args[args.index("NAMES") + 1:] if "NAMES" in args else args[1:2]
            stop = {"HINTS", "PATHS", "PATH_SUFFIXES", "DOC", "NO_CACHE", "REQUIRED", "NAMES_PER_DIR"}
            for n in names:
                if n in stop:
                    break
                deps.add(("find_library", n))
    return deps


def recipe_calls(tree, fname):
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == fname:
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            kw = {k.arg: (k.value.value if isinstance(k.value, ast.Constant) else None) for k in node.keywords}
            calls.append((args, kw))
    return calls


def main():
    recipe_path, cmakelists = sys.argv[1], sys.argv[2]
    src = os.path.dirname(os.path.abspath(cmakelists))
    cmake_files = [cmakelists] + sorted(glob.glob(os.path.join(src, "cmake", "*.cmake")))
    top = open(cmakelists).read()
    tree = ast.parse(open(recipe_path).read(), recipe_path)

    # The recipe's dependencies: spec string -> package name.
    specs = {}
    for args, kw in recipe_calls(tree, "depends_on"):
        spec = args[0]
        name = re.match(r"[A-Za-z0-9_-]+", spec).group(0)
        specs.setdefault(name, []).append((spec, kw))
    print("recipe %s: depends on %s" % (recipe_path, ", ".join(sorted(specs))))

    deps = cmake_dependencies(cmake_files)
    print("CMake looks for: %s" % ", ".join("%s(%s)" % d for d in sorted(deps)))
    needed = set()
    for d in sorted(deps):
        if d not in CMAKE_TO_SPACK:
            check(False, "%s(%s) is not in check_spack_recipe.py's table: add it there and to the recipe" % d)
            continue
        pkg = CMAKE_TO_SPACK[d]
        if pkg is None:
            print("  ok   %s(%s): provided by the compiler" % d)
            continue
        needed.add(pkg)
        check(pkg in specs, "%s(%s) -> depends_on(\"%s\")" % (d[0], d[1], pkg))
    for pkg in sorted(set(specs) - NOT_LIBRARIES):
        check(pkg in needed, "depends_on(\"%s\") corresponds to a library CMake looks for" % pkg)

    # Constraints CMake relies on.
    hdf5 = " ".join(s for s, _ in specs.get("hdf5", []))
    check("+mpi" in hdf5, "hdf5 is required +mpi (%s)" % hdf5)
    check("1.10.7" in hdf5 and "1.12.1" in hdf5, "hdf5 versions start at 1.10.7 / 1.12.1 (H5Pset_file_locking)")
    if ("find_package", "OpenMP") in deps:
        blis = " ".join(s for s, _ in specs.get("blis", []))
        check("threads=openmp" in blis, "blis is required with threads=openmp (%s)" % blis)
    cmin = re.search(r"cmake_minimum_required\s*\(\s*VERSION\s+([0-9.]+)", top, re.I).group(1)
    cspec = " ".join(s for s, _ in specs.get("cmake", []))
    m = re.search(r"cmake@([0-9.]+):", cspec)
    check(m is not None and tuple(map(int, m.group(1).split("."))) >= tuple(map(int, cmin.split("."))),
          "depends_on cmake@%s: or newer (%s)" % (cmin, cspec))
    for pkg in ("py-torch", "python"):
        for spec, kw in specs.get(pkg, []):
            check(kw.get("when") == "+tests", "%s only with +tests" % pkg)

    # Variants and how they reach CMake.
    variants = {args[0]: kw for args, kw in recipe_calls(tree, "variant")}
    check("native" in variants and variants["native"].get("default") is False, "variant native, default False")
    check("tests" in variants, "variant tests")
    defines = {tuple(args[:2]) for args, kw in recipe_calls(tree, "define_from_variant")}
    check(("MN_NATIVE", "native") in defines, "MN_NATIVE is defined from the native variant (OFF unless +native)")
    check(("MN_BUILD_TESTS", "tests") in defines, "MN_BUILD_TESTS is defined from the tests variant")
    m = re.search(r"option\s*\(\s*MN_NATIVE\s+\"[^\"]*\"\s+(ON|OFF)\s*\)", top)
    check(m is not None and m.group(1) == "OFF", "CMakeLists.txt: MN_NATIVE defaults to OFF")
    check(re.search(r"option\s*\(\s*MN_BUILD_TESTS\b", top) is not None, "CMakeLists.txt: option MN_BUILD_TESTS")

    # Every recipe in the package repository parses, and nifti-clib (not in Spack's builtin repository) is there.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(recipe_path)))
    for p in sorted(glob.glob(os.path.join(repo, "*", "package.py"))):
        ast.parse(open(p).read(), p)
    check(os.path.exists(os.path.join(repo, "nifti-clib", "package.py")), "packaging/spack/nifti-clib/package.py")

    if failures:
        print("FAIL: %d check(s) failed" % len(failures))
        return 1
    print("Spack recipe and CMakeLists.txt agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
