"""Parallel gives the results of the plain loop, whatever the knobs."""
from __future__ import annotations

import random
from collections import Counter

import pytest
from helpers.common import BACKENDS, RETURN_AS, add, sleep_and_return, square

from joblib_fast import Parallel, delayed, parallel_config

N_JOBS = (1, 2, -1)


def collect(result, return_as):
    """The results as a list; generators are checked to be lazy objects."""
    if return_as == "list":
        assert isinstance(result, list)
        return result
    assert not isinstance(result, list)
    assert iter(result) is result, "a generator output must be an iterator"
    return list(result)


def check_same(got, expected, return_as):
    if return_as == "generator_unordered":
        assert Counter(got) == Counter(expected)
        assert len(got) == len(expected)
    else:
        assert got == expected


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs", N_JOBS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_results_equal_plain_loop(backend, n_jobs, return_as):
    expected = [square(i) for i in range(100)]
    out = Parallel(n_jobs=n_jobs, backend=backend, return_as=return_as)(
        delayed(square)(i) for i in range(100))
    check_same(collect(out, return_as), expected, return_as)


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_list_input_and_duplicates(backend, return_as):
    # A list (not a generator) of tasks, with repeated values.
    tasks = [delayed(square)(i % 7) for i in range(50)]
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as)(tasks)
    check_same(collect(out, return_as), [square(i % 7) for i in range(50)],
               return_as)


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs", N_JOBS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_args_and_kwargs_are_passed(backend, n_jobs, return_as):
    tasks = [delayed(add)(i, b=10 * i, c=100 * i) for i in range(30)]
    out = Parallel(n_jobs=n_jobs, backend=backend, return_as=return_as)(tasks)
    check_same(collect(out, return_as), [111 * i for i in range(30)],
               return_as)


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_positional_and_keyword_mix(backend, return_as):
    tasks = [delayed(add)(1, 2, c=3), delayed(add)(a=4), delayed(add)(5, b=6)]
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as)(tasks)
    check_same(collect(out, return_as), [6, 4, 11], return_as)


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs", N_JOBS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("empty", [list, lambda: iter(()), tuple],
                         ids=["list", "iterator", "tuple"])
def test_empty_iterable(backend, n_jobs, return_as, empty):
    out = Parallel(n_jobs=n_jobs, backend=backend, return_as=return_as)(
        empty())
    assert collect(out, return_as) == []


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("n_jobs", (2, 3, -1))
@pytest.mark.parametrize("batch_size", (1, 3, "auto"))
def test_order_under_random_durations(n_jobs, batch_size, return_as):
    # Tasks finish in a random order; the ordered outputs must not care.
    rng = random.Random(1234 + n_jobs)
    durations = [rng.choice((0.0, 0.0, 0.001, 0.003, 0.006))
                 for _ in range(60)]
    out = Parallel(n_jobs=n_jobs, backend="threading", return_as=return_as,
                   batch_size=batch_size)(
        delayed(sleep_and_return)(i, d) for i, d in enumerate(durations))
    check_same(collect(out, return_as), list(range(60)), return_as)


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_size", (1, 2, 7, 1000, "auto"))
def test_batch_size(backend, batch_size, return_as):
    out = Parallel(n_jobs=2, backend=backend, batch_size=batch_size,
                   return_as=return_as)(delayed(square)(i) for i in range(101))
    check_same(collect(out, return_as), [i * i for i in range(101)],
               return_as)


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pre_dispatch",
                         ("all", 1, 3, "2*n_jobs", "1.5*n_jobs", "n_jobs",
                          " 2 * n_jobs "))
def test_pre_dispatch_forms(backend, pre_dispatch, return_as):
    out = Parallel(n_jobs=2, backend=backend, pre_dispatch=pre_dispatch,
                   return_as=return_as)(delayed(square)(i) for i in range(57))
    check_same(collect(out, return_as), [i * i for i in range(57)],
               return_as)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_tiny_tasks(backend):
    # Enough tasks for the auto batch size to grow well past 1.
    n = 20_000
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(square)(i) for i in range(n))
    assert out == [i * i for i in range(n)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_are_the_returned_objects(backend):
    # No copy on the thread/sequential path: identity is kept.
    objects = [object() for _ in range(20)]
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(lambda o: o)(o) for o in objects)
    assert all(a is b for a, b in zip(out, objects))


@pytest.mark.parametrize("backend", BACKENDS)
def test_none_results(backend):
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(lambda: None)() for _ in range(10))
    assert out == [None] * 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_instance_called_twice(backend):
    p = Parallel(n_jobs=2, backend=backend)
    assert p(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]
    assert p(delayed(square)(i) for i in range(5)) == [i * i for i in range(5)]


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_context_manager_several_calls(backend, return_as):
    with Parallel(n_jobs=2, backend=backend, return_as=return_as) as p:
        for k in range(4):
            out = p(delayed(add)(i, k) for i in range(25))
            check_same(collect(out, return_as), [i + k for i in range(25)],
                       return_as)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_config_backend(backend):
    with parallel_config(backend=backend, n_jobs=2):
        out = Parallel()(delayed(square)(i) for i in range(20))
    assert out == [i * i for i in range(20)]


def test_callable_objects_and_builtins():
    class Mul:
        def __init__(self, k):
            self.k = k

        def __call__(self, x):
            return self.k * x

    out = Parallel(n_jobs=2, backend="threading")(
        [delayed(Mul(3))(2), delayed(abs)(-4), delayed(divmod)(7, 2),
         delayed(sorted)([3, 1, 2], reverse=True)])
    assert out == [6, 4, (3, 1), [3, 2, 1]]


@pytest.mark.parametrize("n_jobs, pre_dispatch", [
    (4, "n_jobs/2"),
    (4, "n_jobs - 2"),
    (8, "n_jobs // 4"),
    (3, "n_jobs - 1"),
])
def test_pre_dispatch_expression_uses_the_real_n_jobs(n_jobs, pre_dispatch):
    # Each expression is >= 1 for the n_jobs given, so it is valid.
    out = Parallel(n_jobs=n_jobs, backend="threading",
                   pre_dispatch=pre_dispatch)(
        delayed(square)(i) for i in range(30))
    assert out == [i * i for i in range(30)]


@pytest.mark.parametrize("return_as", RETURN_AS)
def test_many_batches_queued_at_once(return_as):
    # pre_dispatch="all" with batch_size=1 queues thousands of batches while
    # workers consume them: the pool's queue grows and wraps around.
    n = 5000
    out = Parallel(n_jobs=2, backend="threading", batch_size=1,
                   pre_dispatch="all", return_as=return_as)(
        delayed(square)(i) for i in range(n))
    check_same(collect(out, return_as), [i * i for i in range(n)], return_as)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_jobs", (-2, -100, 8))
def test_other_n_jobs_values(backend, n_jobs):
    # -2: all CPUs but one; -100: clipped to one worker; 8 > tasks.
    out = Parallel(n_jobs=n_jobs, backend=backend)(
        delayed(square)(i) for i in range(5))
    assert out == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("backend", BACKENDS)
def test_args_given_as_list_and_kwargs_none_are_accepted(backend):
    # Hand-made tasks in the shapes joblib itself accepts.
    tasks = [(add, [1, 2], {}), (add, (3,), None), (add, (), {"a": 4})]
    assert Parallel(n_jobs=2, backend=backend)(tasks) == [3, 3, 4]


def test_instance_usable_after_with_block():
    p = Parallel(n_jobs=2, backend="threading")
    with p:
        assert p(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    assert p(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    with p:
        assert p(delayed(square)(i) for i in range(3)) == [0, 1, 4]
