"""joblib tests that may fail on joblib_fast, each with its reason.

Keys are pytest node ids of the copied modules, where ``*`` stands for any
text (so that one entry covers the parametrizations of one test; brackets
are literal); values say why a
drop-in cannot, or should not, pass it.  "README" points at a documented
difference (README.md, "Differences from joblib", and for test_dask.py
"Running on a dask cluster"; docs/differences.md and the user guide say
the same).
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
    # --- test_dask.py (the "dask" suite): joblib internals
    "test_dask.py::test_dask_backend_uses_autobatching":
        "joblib internal: asserts that DaskDistributedBackend.compute_batch_"
        "size is joblib's AutoBatchingMixin's and reads backend._effective_"
        "batch_size (joblib's batch sizer; joblib_fast's sizes dask batches "
        "in the compiled core, checked in tests/dask)",
    "test_dask.py::test_dask_funcname[*]":
        "joblib internal: imports joblib._dask.Batch and matches joblib's "
        "dask key names (batch_of_inc_2_calls); README: joblib_fast's keys "
        "are joblib_fast-<function>-<call id>-<batch>-<attempt>",
    # --- test_dask.py: differences the README documents
    "test_dask.py::test_correct_nested_backend":
        "README: calls nested in a threading worker run sequentially (the "
        "innermost backend is SequentialBackend where joblib has "
        "ThreadingBackend); the dask levels above it pass",
    "test_dask.py::test_auto_scatter":
        "README: an argument used by at least as many tasks as there are "
        "workers is replicated to every worker, which the workers record as "
        "more 'receive-from-scatter' events than the 2 scatters joblib "
        "expects; the small-argument half is not reached",
    "test_dask.py::test_manual_scatter":
        "README: scatter= objects go straight to the workers, unhashed, and "
        "are pickled fewer times than by dask's own client.scatter("
        "broadcast=True), whose count the test requires to be equal (more "
        "would be the bug it guards against); the arguments that are not "
        "scattered are pickled as many times as by native client.submit",
    "test_dask.py::test_no_undesired_distributed_cache_hit":
        "README: automatically scattered arguments are released when the "
        "call ends; after the call the test counts 'receive-from-scatter' "
        "events in the stories of the tasks its worker still holds, a dask "
        "internal that depends on when the release reaches the worker "
        "(joblib 1.6.0 itself failed this assertion, 0 > 0, in 1 of 1 runs "
        "of its unmodified test_dask.py on the loaded 2-core machine). The "
        "array is scattered (the event is in the worker's log), and what "
        "the test guards passes before that assertion: the arguments are "
        "not mutated, no result comes from a stale dask cache hit",
}
