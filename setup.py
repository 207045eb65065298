"""Build declarations for the compiled parts; metadata is in pyproject.toml.

Cython compiler directives are set here, once, for every extension (no
``# cython:`` header lines in the .pyx files).
"""
import sys
from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DIRECTIVES = {
    "language_level": "3",
    "embedsignature": True,
    "initializedcheck": False,
    "cdivision": True,
}

# Every extension includes the plain C headers: editing one rebuilds them.
HEADERS = sorted(glob("src_c/*.h"))

extensions = [
    # The worker threads and the parallel_for C API (its public header is
    # under joblib_fast/include, shipped for users' builds).
    Extension(
        "joblib_fast._threads",
        ["joblib_fast/_threads.pyx"],
        include_dirs=["src_c", "joblib_fast/include"],
        depends=HEADERS + ["joblib_fast/include/joblib_fast/parallel_for.h"],
    ),
    Extension(
        "joblib_fast._core",
        ["joblib_fast/_core.pyx"],
        include_dirs=["src_c"],
        depends=HEADERS,
    ),
    # GIL-releasing kernels used by the tests and benchmarks/bench.py.
    Extension(
        "joblib_fast._kernels",
        ["joblib_fast/_kernels.pyx"],
        include_dirs=["src_c"],
        depends=HEADERS,
    ),
]


def born_shared_extension():
    """Process workers' NumPy allocator (results born in shared memory):
    plain C against NumPy's headers, built when NumPy can be imported here
    (pyproject.toml lists it among the build requirements; a build without
    it leaves results on the copy path).  Linux only: the segments are
    memfd files (segment_memfd.h)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        import numpy
    except ImportError:
        print("joblib_fast: NumPy is not importable at build time: results "
              "of process workers are copied into shared memory instead of "
              "being born there", file=sys.stderr)
        return []
    folder = "joblib_fast/backends/processes"
    return [Extension(
        "joblib_fast.backends.processes._born_shared",
        [f"{folder}/_born_shared.c"],
        include_dirs=[numpy.get_include(), folder],
        depends=[f"{folder}/segment_memfd.h"],
    )]


class BuildExt(build_ext):
    """GCC and Clang get -O2; MSVC keeps the /O2 its setuptools driver
    passes (it takes no GCC-style flags)."""

    def build_extensions(self):
        if self.compiler.compiler_type != "msvc":
            for ext in self.extensions:
                ext.extra_compile_args = ["-O2", *ext.extra_compile_args]
        super().build_extensions()


# Guarded: ci/cross_check.sh reads `extensions` and DIRECTIVES from here
# to generate the same C for other targets (setuptools runs this file as
# __main__).
if __name__ == "__main__":
    setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES)
          + born_shared_extension(),
          cmdclass={"build_ext": BuildExt})
