"""joblib's own tests of ``Parallel`` and of its dask backend run against
joblib_fast.

See ``runner.py`` (how), ``substitute.py`` (the import substitution),
``jf_compat.py`` (joblib's module names made of joblib_fast's),
``jf_dask_fixtures.py`` (the fixtures ``test_dask.py`` needs) and
``expected_failures.py`` (what may fail, and why).
"""
