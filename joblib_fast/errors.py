"""The public exceptions of joblib_fast (re-exported by the package)."""
from __future__ import annotations


class TaskError(TypeError):
    """An item of the iterable given to ``Parallel`` is not a task."""


class TerminatedWorkerError(RuntimeError):
    """A worker process died (crash, ``os._exit``, a signal, the OOM killer)
    while the call was running."""


class RemoteTraceback(Exception):
    """Carries the worker-side traceback text as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nWorker traceback:\n" + self.tb


class TaskFailedError(RuntimeError):
    """A task raised an exception that could not be sent back as itself."""


def abandons_running_tasks(error: BaseException | None) -> bool:
    """True when a call that ended with ``error`` must not wait for its
    running tasks: a task stuck past its timeout may never end, and Ctrl-C
    (or an exit, or a ``return_as`` generator closed early) must return at
    once.  The workers are stopped without being waited for."""
    return isinstance(error, TimeoutError) or (
        error is not None and not isinstance(error, Exception))
