"""pytest plugin (``-p jf_joblib_plugin``): joblib_fast's backends registered
under joblib's own names ("loky", "multiprocessing", "threading") before
joblib's tests are collected, so that joblib's Parallel runs on them."""
import joblib_fast


def pytest_configure(config):
    joblib_fast.register_joblib_backend(replace_builtin=True)


def pytest_terminal_summary(terminalreporter):
    from joblib.parallel import BACKENDS
    names = {name: cls.__name__ for name, cls in sorted(BACKENDS.items())}
    terminalreporter.write_line(f"joblib_fast backends registered: {names}")
