"""joblib tests that may fail on joblib_fast, each with its reason.

Keys are pytest node ids of the copied modules, where ``*`` stands for any
text (so that one entry covers the parametrizations of one test; brackets
are literal); values say why a
drop-in cannot, or should not, pass it.  "README" points at a documented
difference (README.md, "Differences from joblib").
"""

_PRIVATE = "stops at a joblib private attribute: "

EXPECTED_FAILURES: dict[str, str] = {
    # --- joblib private attributes, not part of the API a drop-in keeps
    "test_parallel.py::test_backend_batch_statistics_reset[*]":
        _PRIVATE + "backend._effective_batch_size / "
        "_smoothed_batch_duration (joblib's batch sizer state; ours lives in "
        "the compiled core, per call)",
    "test_parallel.py::test_default_mp_context":
        _PRIVATE + "Parallel._backend_kwargs['context'] (joblib stores the "
        "default multiprocessing context there)",
    "test_parallel.py::test_error_capture[*]":
        _PRIVATE + "backend._pool / backend._workers (the executor object "
        "joblib's backends hold; the errors themselves are checked first "
        "and pass)",
    "test_parallel.py::test_multiple_generator_call_separated_gc[*-threading-False]":
        _PRIVATE + "Parallel._aborting (checked last; the behaviour before "
        "it, a second generator not delayed by the dropped one, passes)",
    "test_parallel.py::test_parallel_with_interactively_defined_bound_method_loky":
        "expects loky's worker class name 'LokyProcess' in multiprocessing's "
        "debug log; joblib_fast's workers are plain multiprocessing processes",
    # --- differences the README documents
    "test_parallel.py::test_multiple_generator_call_separated_gc[*-loky-True]":
        "README: a second call while a dropped generator's process pool is "
        "busy gets a pool of its own and succeeds; joblib's shared loky "
        "executor makes it fail ('The executor underlying Parallel ...')",
    "test_parallel.py::test_nested_backend_context_manager[*-threading]":
        "README: calls nested in a threading worker run sequentially (joblib "
        "gives them a thread backend at the first level)",
    "test_parallel.py::test_nested_parallelism_limit[*-threading]":
        "README: calls nested in a threading worker run sequentially (joblib "
        "gives them a thread backend at the first level)",
    "test_parallel.py::test_nested_parallel_warnings[loky-loky-False]":
        "README: 'loky' and 'multiprocessing' are one process backend; a "
        "process call nested in a process worker runs in place with joblib's "
        "'cannot be nested' warning, which joblib gives for multiprocessing "
        "but not for loky (whose workers start their own processes)",
    "test_config.py::test_threadpool_limitation_in_child_context_error[*-multiprocessing]":
        "README: 'multiprocessing' is joblib_fast's process backend, which "
        "supports inner_max_num_threads (joblib's MultiprocessingBackend "
        "refuses it)",
    "test_config.py::test_threadpool_limitation_in_child_context_error[*-backend2]":
        "README: MultiprocessingBackend() is joblib_fast's process backend, "
        "which supports inner_max_num_threads",
    "test_config.py::test_threadpool_limitation_in_child_context_error[*-threading]":
        "README: inner_max_num_threads on a backend without support is a "
        "ValueError (joblib: AssertionError), with joblib's message",
    "test_config.py::test_threadpool_limitation_in_child_context_error[*-backend3]":
        "README: inner_max_num_threads on a backend without support is a "
        "ValueError (joblib: AssertionError), with joblib's message",
    "test_parallel.py::test_backend_hinting_and_constraints[*]":
        "README: prefer='threads' / require='sharedmem' keep the n_jobs set "
        "by parallel_config (joblib resets it to 1 when it swaps backends)",
}
