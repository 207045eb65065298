# setup.py: include_dirs gives the compiler the installed joblib_fast's
# header and .pxd; there is nothing to link (the functions are fetched at
# import by import_parallel_for()).
import joblib_fast
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize([
    Extension("mykernels", ["mykernels.pyx"], include_dirs=[joblib_fast.get_include()]),
]))
