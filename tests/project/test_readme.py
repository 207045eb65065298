"""The README's examples of the features added to joblib's API run."""

import pytest
from helpers.common import readme_python_blocks


@pytest.mark.parametrize("index", range(3))
def test_progress_section_examples_run(index, capsys, no_tqdm_monitor):
    blocks = readme_python_blocks("Progress bar and callbacks")
    assert len(blocks) == 3
    code = compile(blocks[index], f"README block {index}", "exec")
    exec(code, {})  # noqa: S102 - the README's own examples
    captured = capsys.readouterr()
    assert captured.out or captured.err


def test_joblib_section_example_runs(capsys):
    import joblib
    from joblib._parallel_backends import (
        LokyBackend,
        MultiprocessingBackend,
        ThreadingBackend,
    )
    blocks = readme_python_blocks("Using joblib_fast from joblib and scikit-learn")
    assert len(blocks) == 1
    try:
        exec(compile(blocks[0], "README joblib block", "exec"), {})  # noqa: S102
    finally:  # joblib's own backends back under their names
        joblib.register_parallel_backend("loky", LokyBackend)
        joblib.register_parallel_backend("multiprocessing",
                                         MultiprocessingBackend)
        joblib.register_parallel_backend("threading", ThreadingBackend)
    assert capsys.readouterr().out.splitlines()[-1] == "[0, 1, 2, 3, 4]"


def test_dask_section_example_runs(capsys):
    pytest.importorskip("distributed")  # in the test extra: runs in CI
    blocks = readme_python_blocks("Running on a dask cluster")
    assert len(blocks) == 1
    code = compile(blocks[0], "README dask block", "exec")
    exec(code, {"__name__": "__main__"})  # noqa: S102 - the README's own
    assert "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" in capsys.readouterr().out
