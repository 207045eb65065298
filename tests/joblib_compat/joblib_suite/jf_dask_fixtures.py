"""pytest plugin loaded by the inner run: the event-loop fixtures that
joblib's ``test_dask.py`` asks for (``loop``, ``loop_in_thread`` and the
``cleanup`` they depend on), taken from distributed's test utilities as
joblib's own conftest (not installed with joblib) takes them.  Without
distributed it provides nothing (``test_dask.py`` then skips itself)."""
try:
    from distributed.utils_test import (  # noqa: F401
        cleanup,
        loop,
        loop_in_thread,
    )
except ImportError:
    pass
