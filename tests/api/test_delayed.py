"""delayed(f)(*args, **kwargs) captures a task as (f, args, kwargs)."""
from __future__ import annotations

import functools
import inspect
import pickle
import time

import pytest
from helpers.common import BACKENDS, add

import joblib_fast
from joblib_fast import Parallel, delayed


def documented(x, y=2, *, z=3):
    """Multiply three numbers."""
    return x * y * z


class Scaler:
    def __init__(self, k):
        self.k = k

    def scale(self, x):
        return self.k * x

    def __call__(self, x):
        return self.k + x


def test_returns_func_args_kwargs_triple():
    task = delayed(documented)(1, 2, z=4)
    assert type(task) is tuple
    assert task == (documented, (1, 2), {"z": 4})
    func, args, kwargs = task
    assert func(*args, **kwargs) == 8


def test_no_arguments():
    assert delayed(documented)() == (documented, (), {})


def test_each_call_is_a_new_triple():
    d = delayed(add)
    first, second = d(1), d(2, b=3)
    assert first == (add, (1,), {})
    assert second == (add, (2,), {"b": 3})
    second[2]["c"] = 10
    assert d(2, b=3)[2] == {"b": 3}


def test_same_structure_as_joblib():
    joblib = pytest.importorskip("joblib")
    for args, kwargs in [((), {}), ((1,), {}), ((1, 2), {"z": 5}),
                         ((), {"x": 1})]:
        assert delayed(documented)(*args, **kwargs) == \
            joblib.delayed(documented)(*args, **kwargs)


def test_joblib_can_run_our_tasks_and_we_can_run_joblibs():
    joblib = pytest.importorskip("joblib")
    ours = [delayed(add)(i, b=1) for i in range(5)]
    theirs = [joblib.delayed(add)(i, b=1) for i in range(5)]
    assert joblib.Parallel(n_jobs=2, backend="threading")(ours) == \
        [1, 2, 3, 4, 5]
    assert Parallel(n_jobs=2, backend="threading")(theirs) == [1, 2, 3, 4, 5]


def test_preserves_name_qualname_module_wrapped():
    d = delayed(documented)
    assert d.__name__ == "documented"
    assert d.__qualname__ == "documented"
    assert d.__module__ == documented.__module__
    assert d.__wrapped__ is documented
    method = delayed(Scaler(2).scale)
    assert method.__qualname__ == "Scaler.scale"


def test_preserves_doc():
    assert delayed(documented).__doc__ == "Multiply three numbers."


def test_doc_of_undocumented_function_is_none():
    def undocumented():
        pass

    assert delayed(undocumented).__doc__ is None


def test_signature_follows_wrapped():
    assert inspect.signature(delayed(documented)) == \
        inspect.signature(documented)
    assert inspect.unwrap(delayed(documented)) is documented


def test_missing_attributes_raise_attribute_error():
    d = delayed(documented)
    with pytest.raises(AttributeError):
        _ = d.no_such_attribute
    assert not hasattr(d, "__no_such_dunder__")


def test_pickle_roundtrip():
    d = delayed(documented)
    d2 = pickle.loads(pickle.dumps(d))
    assert d2(2, z=1) == (documented, (2,), {"z": 1})
    assert d2.__name__ == "documented"
    task = pickle.loads(pickle.dumps(d(1, y=5)))
    assert task == (documented, (1,), {"y": 5})


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_all_protocols(protocol):
    d = pickle.loads(pickle.dumps(delayed(add), protocol=protocol))
    assert d(1, 2) == (add, (1, 2), {})


def test_cloudpickle_roundtrip_of_interactive_function():
    cloudpickle = pytest.importorskip("cloudpickle")
    d = delayed(lambda x: x + 100)
    d2 = cloudpickle.loads(cloudpickle.dumps(d))
    func, args, kwargs = d2(1)
    assert func(*args, **kwargs) == 101


@delayed
def decorated(x, y=1):
    """A task factory made with @delayed."""
    return x - y


def test_usable_as_decorator():
    assert decorated.__name__ == "decorated"
    func, args, kwargs = decorated(5, y=2)
    assert (args, kwargs) == ((5,), {"y": 2})
    assert func(*args, **kwargs) == 3
    assert func is decorated.__wrapped__


def test_decorator_keeps_doc():
    assert decorated.__doc__ == "A task factory made with @delayed."


@pytest.mark.parametrize("backend", BACKENDS)
def test_decorated_tasks_run_in_parallel(backend):
    out = Parallel(n_jobs=2, backend=backend)(decorated(i) for i in range(6))
    assert out == [i - 1 for i in range(6)]


@pytest.mark.parametrize("func, args, expected", [
    (Scaler(3).scale, (4,), 12),
    (Scaler(3), (4,), 7),
    (functools.partial(add, 10), (5,), 15),
    (abs, (-3,), 3),
    (str.upper, ("ab",), "AB"),
    (Scaler, (2,), None),
], ids=["bound-method", "callable-object", "partial", "builtin",
        "method-descriptor", "class"])
def test_any_callable(func, args, expected):
    task = delayed(func)(*args)
    assert task[0] is func or task[0] == func
    out = Parallel(n_jobs=2, backend="threading")([task, task])
    if expected is None:
        assert all(isinstance(o, Scaler) for o in out)
    else:
        assert out == [expected, expected]


def test_partial_has_no_name_like_the_partial_itself():
    p = functools.partial(add, 1)
    d = delayed(p)
    assert d.__wrapped__ is p
    assert hasattr(d, "__name__") == hasattr(p, "__name__")


def test_repr_mentions_the_function():
    assert "documented" in repr(delayed(documented))


def test_delayed_is_the_same_everywhere():
    from joblib_fast import parallel
    assert parallel.delayed is joblib_fast.delayed


def test_the_wrapper_of_a_module_function_is_reused():
    # One wrapper for a generator of delayed(f)(x) over a module-level f,
    # and never one function's wrapper for another.
    assert delayed(add) is delayed(add)
    tasks = []
    for i in range(3):
        tasks.append(delayed(add)(i, 1))
        tasks.append(delayed(documented)(i))
        tasks.append(delayed(add)(i, 2))
    assert [t[0] for t in tasks] == [add, documented, add] * 3
    assert Parallel(n_jobs=2, backend="threading")(tasks) == [
        v for i in range(3) for v in (i + 1, i * 6, i + 2)]


class _Holder:
    def __init__(self, value):
        self.value = value

    def __call__(self, x):
        return x


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["closure", "lambda", "partial", "method",
                                  "wraps", "callable object"])
def test_delayed_keeps_nothing_alive(kind):
    # Functions the user may drop (with what they hold) are not kept by
    # delayed(), even with no Parallel call after it.
    import gc
    import weakref

    class Big:
        def method(self, x):
            return x

    held = Big()
    ref = weakref.ref(held)
    if kind == "closure":
        def func(x, held=held):
            return held, x
    elif kind == "lambda":
        func = lambda x, held=held: (held, x)  # noqa: E731
    elif kind == "partial":
        func = functools.partial(add, held)
    elif kind == "wraps":
        # Named as add, in add's module: only add itself is held there.
        @functools.wraps(add)
        def func(x, held=held):
            return held, x
    elif kind == "callable object":
        func = _Holder(held)
    else:
        func = held.method
    delayed(func)(1)
    del func, held
    gc.collect()
    assert ref() is None


@pytest.mark.slow
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_function_its_module_dropped_is_not_kept_past_a_call(n_jobs):
    # delayed() reuses the wrapper of a function its module holds; when the
    # module goes away meanwhile, the next call's end drops the wrapper.
    import gc
    import sys
    import types
    import weakref

    class Big:
        pass

    held = Big()
    ref = weakref.ref(held)
    mod = types.ModuleType("jf_test_dropped_module")
    mod.held = held
    exec("def f(x):\n    return held, x\n", mod.__dict__)
    sys.modules[mod.__name__] = mod
    try:
        wrapper = delayed(mod.f)
        assert delayed(mod.f) is wrapper
    finally:
        del sys.modules[mod.__name__]
    del mod, wrapper, held
    # A call whose tasks are not made by delayed(): only its end can drop
    # the wrapper kept above.
    assert Parallel(n_jobs=n_jobs, backend="threading")(
        [(add, (1, 2), {})]) == [3]
    gc.collect()
    assert ref() is None


@pytest.mark.slow
@pytest.mark.parametrize("n_jobs, return_as", [
    (1, "list"), (1, "generator"), (2, "list"), (2, "generator"),
    (2, "generator_unordered")])
def test_a_call_keeps_no_task_alive(n_jobs, return_as):
    # Once a call has ended, nothing of it holds the user's function (and
    # what its closure holds).
    import gc
    import weakref

    class Big:
        pass

    held = Big()

    def work(x, held=held):
        return x

    ref = weakref.ref(held)
    out = Parallel(n_jobs=n_jobs, backend="threading", return_as=return_as)(
        delayed(work)(i) for i in range(5))
    assert sorted(out) == list(range(5))
    del work, held, out
    gc.collect()
    assert ref() is None


def _keep(x, held=None):
    return x


def _fail_on_two(x, held=None):
    if x == 2:
        raise ValueError("two")
    return x


@pytest.mark.slow
@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("how", [
    "task fails", "generator closed early", "generator dropped unstarted"])
def test_a_call_ended_early_keeps_no_task_alive(n_jobs, how):
    # Also when the input was not pulled to its end: the tasks pulled
    # ahead and the batches queued when the call ended are dropped (the
    # pool threads skip the batches of an ended call: soon, not at once).
    import functools
    import gc
    import weakref

    class Big:
        pass

    held = Big()
    ref = weakref.ref(held)
    work = functools.partial(
        _fail_on_two if how == "task fails" else _keep, held=held)
    tasks = (delayed(work)(i) for i in range(10_000))
    if how == "task fails":
        with pytest.raises(ValueError, match="two"):
            Parallel(n_jobs=n_jobs, backend="threading", batch_size=1)(tasks)
    else:
        gen = Parallel(n_jobs=n_jobs, backend="threading",
                       return_as="generator")(tasks)
        if how == "generator closed early":
            assert next(gen) == 0
            gen.close()
        del gen
    del work, held, tasks
    deadline = time.monotonic() + 10
    while gc.collect() is not None and ref() is not None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ref() is None
