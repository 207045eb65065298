"""The README's examples of the features added to joblib's API run."""

import pytest
from _jf_testutils import readme_python_blocks


@pytest.mark.parametrize("index", range(3))
def test_progress_section_examples_run(index, capsys, monkeypatch):
    try:
        import tqdm
    except ImportError:
        pass
    else:  # its monitor thread would outlive the test
        monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
    blocks = readme_python_blocks("Progress bar and callbacks")
    assert len(blocks) == 3
    code = compile(blocks[index], f"README block {index}", "exec")
    exec(code, {})  # noqa: S102 - the README's own examples
    captured = capsys.readouterr()
    assert captured.out or captured.err
