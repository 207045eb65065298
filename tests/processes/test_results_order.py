"""The process backend: results and their order for every return_as.
"""
from __future__ import annotations

import random

import pytest
from helpers import proc_tasks
from helpers.proc_tasks import square

from joblib_fast import Parallel, delayed

# ------------------------------------------------------------- results


@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_results(return_as):
    out = Parallel(n_jobs=2, return_as=return_as)(
        delayed(square)(i) for i in range(200))
    if return_as == "list":
        assert out == [i * i for i in range(200)]
        return
    assert not isinstance(out, list)
    out = list(out)
    if return_as == "generator":
        assert out == [i * i for i in range(200)]
    else:
        assert sorted(out) == [i * i for i in range(200)]


@pytest.mark.parametrize("return_as", ["list", "generator"])
def test_order_preserved_under_random_durations(return_as):
    rng = random.Random(0)
    durations = [rng.uniform(0, 0.02) for _ in range(60)]
    out = Parallel(n_jobs=2, return_as=return_as)(
        delayed(proc_tasks.sleep_then_return)(i, d)
        for i, d in enumerate(durations))
    assert list(out) == list(range(60))


@pytest.mark.slow
def test_generator_unordered_yields_in_completion_order():
    # Task 0 is much longer than the others: it cannot come first.
    durations = [1.0] + [0.005] * 20
    out = list(Parallel(n_jobs=2, return_as="generator_unordered")(
        delayed(proc_tasks.sleep_then_return)(i, d)
        for i, d in enumerate(durations)))
    assert sorted(out) == list(range(21))
    # A batch queued behind task 0 on its worker may come after it.
    assert out.index(0) >= len(out) - 3, out
