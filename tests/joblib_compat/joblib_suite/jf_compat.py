"""joblib's ``joblib.parallel`` / ``joblib._parallel_backends`` /
``joblib._dask`` names, made of joblib_fast's.

joblib's own test modules, copied by ``test_joblib_suite.py``, import this
module wherever they imported those joblib modules (see
``substitute.py``).  Everything here is a public name of joblib_fast or a
module attribute joblib exposes under the same name, except the two backend
classes below and ``AutoBatchingMixin``: joblib's own class (joblib_fast
has none: its batch sizer is in the compiled core), which
``test_dask.py`` imports from ``joblib.parallel`` to compare with.

joblib has two process backends, ``LokyBackend`` and
``MultiprocessingBackend``; joblib_fast has one (``"loky"`` and
``"multiprocessing"`` are both its process backend).  joblib's tests check
``type(p._backend) is LokyBackend``, so each name gets its own subclass of
joblib_fast's process backend, registered under that name.
"""
import multiprocessing as mp  # noqa: F401 - joblib.parallel.mp

from joblib._parallel_backends import AutoBatchingMixin  # noqa: F401

from joblib_fast import (  # noqa: F401
    Parallel,
    ParallelBackendBase,
    cpu_count,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from joblib_fast.backends.base import SequentialBackend, ThreadingBackend  # noqa: F401
from joblib_fast.backends.dask import DaskDistributedBackend  # noqa: F401
from joblib_fast.backends.processes import ProcessBackend
from joblib_fast.config import (  # noqa: F401
    BACKENDS,
    DEFAULT_BACKEND,
    EXTERNAL_BACKENDS,
    get_active_backend,
)


class LokyBackend(ProcessBackend):
    """joblib_fast's process backend under joblib's "loky" class name."""


class MultiprocessingBackend(ProcessBackend):
    """joblib_fast's process backend under joblib's "multiprocessing"
    class name."""


register_parallel_backend("loky", LokyBackend)
register_parallel_backend("multiprocessing", MultiprocessingBackend)
