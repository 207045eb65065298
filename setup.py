"""Build declarations for the compiled parts; metadata is in pyproject.toml.

Cython compiler directives are set here, once, for every extension (no
``# cython:`` header lines in the .pyx files).
"""
from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

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
        extra_compile_args=["-O2"],
    ),
    Extension(
        "joblib_fast._core",
        ["joblib_fast/_core.pyx"],
        include_dirs=["src_c"],
        depends=HEADERS,
        extra_compile_args=["-O2"],
    ),
    # GIL-releasing kernels used by the tests and benchmarks/bench.py.
    Extension(
        "joblib_fast._kernels",
        ["joblib_fast/_kernels.pyx"],
        include_dirs=["src_c"],
        depends=HEADERS,
        extra_compile_args=["-O2"],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
