"""Helpers of the test suite, importable by name (conftest.py puts tests/
first on ``sys.path``): ``common`` (shared tasks, backends, process and
thread probes) and the ``*_tasks`` modules, whose functions process workers
(spawn, forkserver) and dask workers unpickle by reference; ``fault_run``
is a script (``python tests/helpers/fault_run.py SEED CALLS``)."""
