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
