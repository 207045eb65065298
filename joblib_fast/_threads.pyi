# Type stub of the worker threads (joblib_fast/_threads.pyx).
import threading
from typing import Any, Callable

PARALLEL_FOR_ABI_VERSION: int
SHARED_THREAD_NAME: str
SPIN_US_DEFAULT: int
parallel_for_api: object

def in_worker_thread() -> bool: ...
def thread_cap() -> int: ...
def max_workers(n_workers: int) -> int: ...
def shared_workers() -> WorkerPool: ...
def shared_pool_threads() -> list[threading.Thread]: ...
def shutdown_shared_pool(timeout: float | None = ...) -> bool: ...

class WorkerPool:
    name: str
    base: int
    pid: int
    threads: list[threading.Thread]
    n_alive: int
    def __init__(self, name: str, base: int,
                 initializer: Callable[[], Any] | None = ...) -> None: ...
    def shutdown(self, wait: bool = ..., timeout: float | None = ...) -> bool: ...

class Lease:
    workers: WorkerPool
    closed: bool
    n_alive: int
    def close(self, wait: bool = ..., timeout: float | None = ...) -> bool: ...
