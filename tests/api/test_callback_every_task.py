"""Every finished task is reported to ``callback`` exactly once, whatever
the backend and the ``return_as`` mode (the ordered generator on threads
once released batches before reporting them)."""
import pytest
from helpers.common import RETURN_AS

from joblib_fast import Parallel, delayed


@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_callback_sees_every_task_once(backend, return_as):
    n = 100_000 if backend == "threading" else 20_000
    seen = []
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as,
                   callback=lambda i, r: seen.append(i))(
        delayed(abs)(-i) for i in range(n))
    out = list(out)
    assert sorted(out) == list(range(n))
    assert len(seen) == n
    assert sorted(seen) == list(range(n))
