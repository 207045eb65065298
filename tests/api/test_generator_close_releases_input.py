"""Closing a ``return_as`` generator early releases the user's input at
once, even while the workers are still busy with running tasks (before,
the call kept its iterator until the workers skipped its queued batches,
that is until the running tasks ended)."""
import gc
import threading
import weakref

import pytest

from joblib_fast import Parallel, delayed


def wait_for(event):
    event.wait(30)
    return 0


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_closing_the_generator_releases_the_input_at_once(return_as):
    release = threading.Event()
    started = threading.Barrier(3, timeout=30)

    def block():
        started.wait()
        return wait_for(release)

    def tasks():
        # Two tasks hold both workers; the rest wait in the input.
        yield delayed(block)()
        yield delayed(block)()
        for i in range(1000):
            yield delayed(abs)(i)

    source = tasks()
    ref = weakref.ref(source)
    try:
        out = Parallel(n_jobs=2, backend="threading", return_as=return_as,
                       batch_size=1, pre_dispatch=4)(source)
        del source
        started.wait()        # both workers are running a blocked task
        out.close()
        del out
        gc.collect()
        assert ref() is None, "the input outlived the closed generator"
    finally:
        release.set()
