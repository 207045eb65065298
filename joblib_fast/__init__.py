"""joblib_fast: a drop-in, much faster replacement for joblib's Parallel.

>>> from math import sqrt
>>> from joblib_fast import Parallel, delayed
>>> Parallel(n_jobs=2, backend="threading")(delayed(sqrt)(i ** 2) for i in range(3))
[0.0, 1.0, 2.0]

Layers
------
Imports point down this list, never up, never in a cycle, and never at
another module's private (``_``) names; ``tests/project/test_layers.py``
keeps it so.  A module may import its own layer or any layer below it::

    joblib_fast/__init__.py         public names only
    parallel, joblib_backend        Parallel: arguments, backend choice
    _run                            one call's lifecycle, for every backend
    config                          parallel_config, the backend registry
    backends                        (the package: re-exports)
    backends.user, backends.processes, backends.dask
                                    one room per kind of pool
    backends.base                   ParallelBackendBase, sequential, threading
    _push                           a pool driven by push (joblib's submit)
    backends.native                 the pool contract (CallOptions, Pool)
    _core, _kernels                 compiled: dispatch core, test kernels
    _native_threads                 native pools (BLAS) capped while
                                    workers run
    _threads                        compiled: the worker threads, parallel_for
    _context                        thread-local settings, n_jobs rules
    _cpu, _gc, _progress, _args, errors
                                    leaves: no package imports but these

Imports of the package itself are at module level; function-level imports
are for optional third-party packages (numpy, cloudpickle, tqdm, dask,
joblib).  One documented exception: ``SequentialBackend.get_nested_backend``
imports ``config`` (its nested backend is "whatever is active here").
"""
import importlib
import os

from ._core import delayed
from ._run import CallStats
from .backends.base import ParallelBackendBase
from .config import (
    cpu_count,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from .errors import (
    ParallelTimeoutError,
    RemoteTraceback,
    TaskError,
    TerminatedWorkerError,
)
from .parallel import Parallel

__version__ = "0.1.0"


def get_include() -> str:
    """The folder to add to ``include_dirs`` when building a Cython module
    that does ``from joblib_fast.parallel_for cimport ...`` (it holds
    ``joblib_fast/parallel_for.h``; nothing to link).

    .. versionadded:: 0.1.0
    """
    return os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "include")


def register_joblib_backend(name: str = "joblib_fast",
                            replace_builtin: bool = False) -> str:
    """Run ``joblib.Parallel`` (and scikit-learn...) on joblib_fast's pools.

    Registers joblib_fast's process backend under ``name`` with
    ``joblib.register_parallel_backend``; with ``replace_builtin=True``
    joblib's ``"loky"``, ``"multiprocessing"`` and ``"threading"`` names run
    on joblib_fast too.  Returns ``name``.  Needs joblib (the ``joblib``
    extra); importing joblib_fast does not import it.  See
    :func:`joblib_fast.joblib_backend.register_joblib_backend`.

    .. versionadded:: 0.1.0
    """
    module = importlib.import_module(".joblib_backend", __name__)
    return module.register_joblib_backend(name, replace_builtin)


__all__ = [
    "Parallel",
    "CallStats",
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
    "ParallelTimeoutError",
    "register_joblib_backend",
    "get_include",
]
