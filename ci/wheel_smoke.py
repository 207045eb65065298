"""What cibuildwheel runs on each wheel it builds, on that wheel's system:
the compiled core imports and the threading backend runs tasks on the
shared pool, in order and out of order.  The process backend is left out
until its mechanisms have portable paths."""
from __future__ import annotations

import math
import sys

from joblib_fast import Parallel, delayed


def main() -> int:
    expected = [math.sqrt(i) for i in range(500)]
    got = Parallel(n_jobs=2, backend="threading")(
        delayed(math.sqrt)(i) for i in range(500))
    assert got == expected, got
    got = Parallel(n_jobs=2, backend="threading",
                   return_as="generator_unordered")(
        delayed(math.sqrt)(i) for i in range(500))
    assert sorted(got) == expected
    print(f"wheel smoke test on {sys.platform}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
