"""Every python code block of the README runs (a block that starts with
``# <file>.py`` is a file's content, not a script)."""
import re

import pytest
from helpers.common import doc_blocks

BLOCKS = [b for b in doc_blocks("README.md") if not re.match(r"# \S+\.py\n", b)]


# A cluster of the README's serves its metrics on port 8787 (the user's
# default), which another cluster on a shared machine may hold: dask then
# warns and takes another port.
@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys, no_tqdm_monitor):
    code = compile(BLOCKS[index], f"README block {index}", "exec")
    exec(code, {"__name__": "__main__"})  # noqa: S102 - the README's own
