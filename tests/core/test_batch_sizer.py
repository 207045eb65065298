"""The batch sizer shrinks batches near the end of an input."""
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


def test_unknown_length_shrinks_once_the_end_is_seen():
    # Auto batches pull the next batch's tasks ahead: the end of an input
    # of unknown length is seen a batch early, and from there the batches
    # shrink as for a known length.
    total, workers = 5000, 2
    batches = run(total, known=False)
    sizes = [size for _, size in batches]
    peak = sizes.index(max(sizes))
    assert sizes[:peak + 1] == sorted(sizes[:peak + 1])
    assert max(sizes) > total // 8
    for start, size in batches[peak + 1:]:
        assert size <= max(1, (total - start) // (2 * workers))
    assert sizes[-1] == 1


def test_fixed_batch_size_pulls_no_batch_ahead():
    pulled = []

    def source():
        for i in range(10):
            pulled.append(i)
            yield delayed(noop)(i)

    class Checking(RecordingPool):
        def submit(self, batch):
            # Exactly the tasks of the batches submitted so far are pulled.
            assert len(pulled) == batch.start + len(batch.tasks)
            super().submit(batch)

    pool = Checking()
    call = Call(pool, source(), pre_dispatch=2, batch_size=3, n_workers=2)
    assert call.run_list() == list(range(10))
    assert [size for _, size in pool.batches] == [3, 3, 3, 1]
