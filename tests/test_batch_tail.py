"""The batch sizer shrinks batches near the end of inputs of known length."""
from joblib_fast import delayed
from joblib_fast._core import Call


def noop(x):
    return x


class RecordingPool:
    """Runs each batch as it is submitted and records its start and size."""

    def __init__(self):
        self.batches = []

    def submit(self, batch):
        self.batches.append((batch.start, len(batch.tasks)))
        batch.run_here()

    def wait(self, call, seconds):
        pass


def run(total, known):
    pool = RecordingPool()
    tasks = [delayed(noop)(i) for i in range(total)]
    call = Call(pool, tasks if known else iter(tasks), pre_dispatch=4,
                n_workers=2, total=total if known else -1)
    assert call.run_list() == list(range(total))
    return pool.batches


def test_known_length_shrinks_the_last_batches():
    total, workers = 5000, 2
    batches = run(total, known=True)
    for start, size in batches:
        assert size <= max(1, (total - start) // (2 * workers))
    # The end is reached through small batches, not one large one.
    assert batches[-1][1] == 1


def test_unknown_length_grows_to_the_end():
    batches = run(5000, known=False)
    sizes = [size for _, size in batches]
    # Without a length, no shrinking: sizes never decrease but at the end.
    assert sizes[:-1] == sorted(sizes[:-1])
    assert max(sizes) > 5000 // 4
