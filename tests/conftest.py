"""Shared fixtures: every test leaves no worker thread and no configuration
behind."""
import sys
import threading
import time

import pytest

from joblib_fast import config as _config

# Threads a test may legitimately leave: pytest-timeout's watchdog, ...
_IGNORED_PREFIXES = ("pytest_timeout",)


def _extra_threads(before):
    return [t for t in threading.enumerate()
            if t not in before and t.is_alive()
            and not t.name.startswith(_IGNORED_PREFIXES)]


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaks a thread, a registered backend or an active
    configuration."""
    before = set(threading.enumerate())
    backends = dict(_config.BACKENDS)
    default = _config.DEFAULT_BACKEND
    config = _config._current_config()
    yield
    leaked_config = _config._current_config() is not config
    _config.BACKENDS.clear()
    _config.BACKENDS.update(backends)
    _config.DEFAULT_BACKEND = default
    _config._set_config(config)
    processes = sys.modules.get("joblib_fast.backends.processes")
    if processes is not None:
        # The reusable process pool outlives calls by design.
        processes.shutdown_reusable_pools()
    deadline = time.monotonic() + 5.0
    extra = _extra_threads(before)
    while extra and time.monotonic() < deadline:
        time.sleep(0.01)
        extra = _extra_threads(before)
    assert not extra, f"threads leaked by the test: {extra}"
    assert not leaked_config, "the test left a parallel_config active"
