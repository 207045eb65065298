"""Task functions for tests/numpy/test_born_shared_results.py (importable by
process workers): large arrays made in a worker, what its allocator
counted."""
from __future__ import annotations

import os

import numpy as np

# Arrays a worker keeps after returning them (mutated by a later task).
KEPT: list = []


def counters() -> dict:
    """The worker allocator's counters (after a trim of its cache)."""
    from joblib_fast.backends.processes import _born_shared
    _born_shared.trim()
    return _born_shared.stats()


def counted(func, *args):
    """(func(*args), the allocator's counters before the reply)."""
    before = counters()
    return func(*args), before


def stats() -> dict:
    """The worker allocator's counters, as they are."""
    from joblib_fast.backends.processes import _born_shared
    return _born_shared.stats()


def full(n: int, value: float):
    return np.full(n, value)


def ones(n: int):
    return np.ones(n)


def views(n: int):
    a = np.arange(n, dtype=np.float64)
    f = np.asfortranarray(a.reshape(8, -1))
    return [a[3:], a[::-1], a[::2], f, f.T, a.reshape(8, -1)[:, 1:],
            a[: n // 10]]


def resized(n: int, m: int):
    a = np.arange(n, dtype=np.float64)
    a.resize(m, refcheck=False)
    return a


def keep(n: int):
    a = np.full(n, 7.0)
    KEPT.append(a)
    return a


def mutate_kept() -> int:
    for a in KEPT:
        a[:] = -1.0
    n = len(KEPT)
    KEPT.clear()
    return n


def fork_and_write(n: int):
    """A child forked while the worker holds a large array writes to it;
    then the worker writes to it and the child reads it: neither sees the
    other's write.  Returns (worker's value after, child's value seen)."""
    a = np.full(n, 1.0)
    to_worker_r, to_worker_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write, wait for the worker's write, read
        a[:] = 2.0
        os.write(to_worker_w, b"x")
        os.read(to_child_r, 1)
        os.write(to_worker_w, str(float(a[-1])).encode().ljust(16))
        os._exit(0)
    os.read(to_worker_r, 1)   # the child wrote
    seen_here = float(a[-1])
    a[:] = 3.0                # the worker writes
    os.write(to_child_w, b"y")
    child_saw = float(os.read(to_worker_r, 16).decode())
    os.waitpid(pid, 0)
    for fd in (to_worker_r, to_worker_w, to_child_r, to_child_w):
        os.close(fd)
    return seen_here, child_saw


def descriptors_and_maps() -> tuple[int, int]:
    """Open descriptors and shared-memory mappings of this worker."""
    with open("/proc/self/maps") as f:
        maps = sum("memfd:joblib_fast_result" in line for line in f)
    return len(os.listdir("/proc/self/fd")), maps


def churn(n: int, rounds: int) -> float:
    """Large temporaries made and dropped, results never returned."""
    total = 0.0
    for _ in range(rounds):
        a = np.ones(n)
        b = a * 2.0
        b.resize(n + 4096, refcheck=False)
        total += float(b[:n].sum())
        del a, b
    return total


def die_mid_reply(n: int):
    """Return two large arrays, but die after passing the first one's
    descriptor (a worker killed in the middle of its reply)."""
    from joblib_fast.backends.processes import wire
    send = wire.send_fds

    def first_then_die(sock, fds):
        send(sock, fds[:1])
        os._exit(3)

    wire.send_fds = first_then_die
    return np.ones(n), np.ones(n)
