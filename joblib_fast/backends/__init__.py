"""Execution backends: each module holds one kind of worker."""
from .base import ParallelBackendBase, SequentialBackend, ThreadingBackend

__all__ = ["ParallelBackendBase", "SequentialBackend", "ThreadingBackend"]
