"""joblib tests that may fail on joblib_fast, each with its reason.

Keys are pytest node ids of the copied modules (``fnmatch`` patterns, so
that one entry covers the parametrizations of one test); values say why a
drop-in cannot, or should not, pass it.
"""

EXPECTED_FAILURES: dict[str, str] = {
}
