"""User-facing errors say what failed, for which input, and what is
accepted (or what to do instead)."""
import pickle
import re
import threading

import pytest

from joblib_fast import Parallel, delayed, parallel_config


def takes(*args, **kwargs):
    return len(args) + len(kwargs)


@pytest.mark.parametrize("make", [
    lambda: Parallel(n_jobs=0),
    lambda: parallel_config(n_jobs=0),
    lambda: Parallel(n_jobs=0, backend="threading"),
])
def test_n_jobs_zero_keeps_joblibs_words_and_says_what_is_accepted(make):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert message.startswith("n_jobs == 0 in Parallel has no meaning")
    assert "-1: every CPU" in message and "-2: all but one" in message
    assert "k > 0" in message


@pytest.mark.parametrize("call,where", [
    (lambda lock: delayed(takes)(1, lock), "positional argument 1"),
    (lambda lock: delayed(takes)(1, 2, key=lock), "keyword argument key="),
    (lambda lock: delayed(lambda: lock)(), "the function itself"),
])
def test_an_unpicklable_argument_is_named_once_with_its_type(call, where):
    lock = threading.Lock()
    with pytest.raises(pickle.PicklingError) as info:
        Parallel(n_jobs=2)([delayed(takes)(0), call(lock)])
    message = str(info.value)
    # joblib's words first (code matches on them) ...
    assert message.startswith(
        "Could not pickle the task to send it to the workers. Task 1, ")
    # ... then which part failed, its type, and what to do; said once.
    assert where in message, message
    assert "_thread.lock" in message
    assert "backend='threading'" in message
    assert message.count("cannot pickle") == 1, message
    assert info.value.__cause__ is None  # no second copy in the traceback


@pytest.mark.parametrize("kwargs,names", [
    ({"return_as": "lists"}, ["return_as", "'lists'", "generator_unordered"]),
    ({"batch_size": 0}, ["batch_size", "0", "'auto' or a positive integer"]),
    ({"batch_size": "big"}, ["batch_size", "'big'", "'auto'"]),
    ({"pre_dispatch": "3*jobs"}, ["pre_dispatch", "'3*jobs'", "'all'"]),
    ({"pre_dispatch": 0}, ["pre_dispatch", "at least 1"]),
    ({"max_nbytes": "1X"}, ["max_nbytes", "'1X'", "'1M'"]),
    ({"mmap_mode": "rw"}, ["mmap_mode", "'rw'", "'r+'"]),
    ({"timeout": -1}, ["timeout", "-1", "positive number of seconds"]),
    ({"backend": "lokky"}, ["backend", "'lokky'", "'threading'"]),
    ({"prefer": "gpu"}, ["prefer", "'gpu'", "'threads'"]),
])
def test_bad_arguments_name_the_input_and_what_is_accepted(kwargs, names):
    with pytest.raises(ValueError) as info:
        Parallel(n_jobs=2, **kwargs)
    message = str(info.value)
    for name in names:
        assert name in message, message
    # Said once: the value's repr is not repeated in a second sentence.
    value = repr(next(iter(kwargs.values())))
    assert len(re.findall(re.escape(value), message)) == 1, message
    assert message.count("one of") <= 1, message  # choices listed once
