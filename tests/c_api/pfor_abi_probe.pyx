# Imports the parallel_for table on demand (tests/c_api/test_parallel_for.py
# swaps the capsule to check the ABI version check).
from joblib_fast.parallel_for cimport import_parallel_for


def do_import():
    import_parallel_for()
