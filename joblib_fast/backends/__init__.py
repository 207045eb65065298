"""Execution backends: each module holds one kind of worker."""
from .base import ParallelBackendBase
from .sequential import SequentialBackend
from .threading import ThreadingBackend

__all__ = ["ParallelBackendBase", "SequentialBackend", "ThreadingBackend"]
