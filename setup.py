"""Build declarations for the compiled parts; metadata is in pyproject.toml."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DIRECTIVES = {
    "language_level": "3",
    "embedsignature": True,
    "initializedcheck": False,
}

extensions = [
    Extension(
        "joblib_fast._core",
        ["joblib_fast/_core.pyx"],
        include_dirs=["src_c"],
        extra_compile_args=["-O2"],
    ),
    # GIL-releasing kernels used by the tests and benchmarks/bench.py.
    Extension(
        "joblib_fast._kernels",
        ["joblib_fast/_kernels.pyx"],
        include_dirs=["src_c", numpy.get_include()],
        extra_compile_args=["-O2"],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
