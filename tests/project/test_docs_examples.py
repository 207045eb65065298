"""The documentation's examples run: every python block of every page of
docs/ (a block that starts with ``# <file>.py`` is a file's content, not a
script: the test that builds it uses it), and the examples of the features
added to joblib's API with what they print."""
from __future__ import annotations

import pathlib
import re

import pytest
from helpers.common import TESTS_DIR, doc_blocks

DOCS = pathlib.Path(TESTS_DIR).resolve().parent / "docs"

# Pages whose blocks another test runs, with what they print checked.
RUN_ELSEWHERE = {
    "user_guide/numpy.md": "tests/numpy/test_array_inputs.py",
    "user_guide/parallel_for.md": "tests/c_api/test_parallel_for.py",
    "user_guide/progress.md": "below",
    "user_guide/joblib_sklearn.md": "below",
    "user_guide/dask.md": "below",
}
# (page, section) pairs run elsewhere.
SECTIONS_ELSEWHERE = {
    ("user_guide/processes.md", "Replacing leaky workers"):
        "tests/processes/test_worker_recycling.py",
}


def _sections(text):
    """(section title or None, text) of each ``## `` section of a page."""
    parts = re.split(r"^## (.*)$", text, flags=re.MULTILINE)
    yield None, parts[0]
    for title, body in zip(parts[1::2], parts[2::2]):
        yield title.strip(), body


def _examples():
    found = []
    for path in sorted(DOCS.rglob("*.md")):
        page = path.relative_to(DOCS).as_posix()
        if page in RUN_ELSEWHERE:
            continue
        for title, body in _sections(path.read_text()):
            if (page, title) in SECTIONS_ELSEWHERE:
                continue
            for k, block in enumerate(re.findall(r"```python\n(.*?)```", body,
                                                 re.DOTALL)):
                if re.match(r"# \S+\.py\n", block):
                    continue
                found.append(pytest.param(block, id=f"{page}:{title}:{k}"))
    return found


def test_the_pages_run_elsewhere_exist():
    for page, _ in [*RUN_ELSEWHERE.items(), *SECTIONS_ELSEWHERE]:
        name = page if isinstance(page, str) else page[0]
        assert (DOCS / name).is_file(), name


@pytest.mark.parametrize("block", _examples())
def test_docs_example_runs(block, capsys):
    exec(compile(block, "docs example", "exec"),  # noqa: S102 - our docs
         {"__name__": "__main__"})


@pytest.mark.parametrize("index", range(3))
def test_progress_examples_run(index, capsys, no_tqdm_monitor):
    blocks = doc_blocks("docs/user_guide/progress.md")
    assert len(blocks) == 3
    code = compile(blocks[index], f"progress guide block {index}", "exec")
    exec(code, {})  # noqa: S102 - the guide's own examples
    captured = capsys.readouterr()
    assert captured.out or captured.err


@pytest.mark.slow
def test_joblib_example_runs(capsys):
    import joblib
    from joblib._parallel_backends import (
        LokyBackend,
        MultiprocessingBackend,
        ThreadingBackend,
    )
    blocks = doc_blocks("docs/user_guide/joblib_sklearn.md")
    assert len(blocks) == 1
    try:
        exec(compile(blocks[0], "joblib guide block", "exec"), {})  # noqa: S102
    finally:  # joblib's own backends back under their names
        joblib.register_parallel_backend("loky", LokyBackend)
        joblib.register_parallel_backend("multiprocessing",
                                         MultiprocessingBackend)
        joblib.register_parallel_backend("threading", ThreadingBackend)
    assert capsys.readouterr().out.splitlines()[-1] == "[0, 1, 2, 3, 4]"


# The example's cluster serves its metrics on port 8787 (the user's
# default), which another cluster on a shared machine may hold: dask then
# warns and takes another port.
@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
@pytest.mark.slow
def test_dask_example_runs(capsys):
    pytest.importorskip("distributed")  # in the test extra: runs in CI
    blocks = doc_blocks("docs/user_guide/dask.md")
    assert len(blocks) == 1
    code = compile(blocks[0], "dask guide block", "exec")
    exec(code, {"__name__": "__main__"})  # noqa: S102 - the guide's own
    assert "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" in capsys.readouterr().out
