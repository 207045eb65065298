"""joblib_fast: a drop-in, much faster replacement for joblib's Parallel.

>>> from math import sqrt
>>> from joblib_fast import Parallel, delayed
>>> Parallel(n_jobs=2, backend="threading")(delayed(sqrt)(i ** 2) for i in range(3))
[0.0, 1.0, 2.0]
"""
from ._core import delayed
from .backends.base import ParallelBackendBase
from .config import (
    cpu_count,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from .errors import RemoteTraceback, TaskError, TerminatedWorkerError
from .parallel import Parallel

__version__ = "0.1.0"

__all__ = [
    "Parallel",
    "delayed",
    "parallel_config",
    "parallel_backend",
    "register_parallel_backend",
    "ParallelBackendBase",
    "cpu_count",
    "effective_n_jobs",
    "TaskError",
    "TerminatedWorkerError",
    "RemoteTraceback",
]
