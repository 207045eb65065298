"""``backend="dask"``: the core's batches run as ``dask.distributed``
futures.  Imported on first use of the name (``config._LAZY_BACKENDS``);
dask itself is imported by the functions that need it.

::

    backend.py   DaskDistributedBackend (joblib's name, arguments, messages)
    pool.py      DaskPool: one future per batch, each watched on the
                 client's event loop, every way a future can end handled,
                 cancel on end
    data.py      large arguments: scattered once, replicated, re-scattered
    pickling.py  batches and results as joblib_fast's own pickles
    worker.py    what runs on a dask worker (imports nothing caller-side)
"""
from .backend import DaskBackend, DaskDistributedBackend

__all__ = ["DaskBackend", "DaskDistributedBackend"]
