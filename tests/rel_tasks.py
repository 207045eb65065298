"""Task functions for tests/test_reliability.py (importable by workers)."""
from __future__ import annotations

import os
import subprocess
import time


class CodeError(Exception):
    """Builds its own message from its argument."""

    def __init__(self, code):
        super().__init__(f"failed with code {code}")
        self.code = code


def raise_code_error(code):
    raise CodeError(code)


def big_array(i, n=300_000):
    import numpy as np
    return np.full(n, i, dtype=np.float64)


def spawn_sleeper_then_hang(path):
    """Start a grandchild, write its pid to ``path``, then hang."""
    child = subprocess.Popen(["sleep", "600"])
    with open(path + ".tmp", "w") as f:
        f.write(str(child.pid))
    os.replace(path + ".tmp", path)  # whole or absent
    time.sleep(600)


def pid_and_value(x):
    return x, os.getpid()


def sleeper_or_fail(path, i):
    """Task 0 starts a grandchild and hangs; task 1 fails once it runs."""
    if i == 0:
        spawn_sleeper_then_hang(path)
    while not os.path.exists(path):
        time.sleep(0.01)
    raise ValueError("task 1 fails")
