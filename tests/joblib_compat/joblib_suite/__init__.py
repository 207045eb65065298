"""joblib's own tests of ``Parallel`` run against joblib_fast.

See ``runner.py`` (how), ``substitute.py`` (the import substitution),
``jf_compat.py`` (joblib's module names made of joblib_fast's) and
``expected_failures.py`` (what may fail, and why).
"""
