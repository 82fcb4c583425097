"""How the analysis keeps the BLAS and OpenMP thread pools out of its way.

The analysis runs side by side in threads of its own (a wave's workflows, each search's
evaluation threads, row chunks of GIL-free kernels) on ~1000 x 16 matrices, so the
libraries' pools only add start-up, spinning and contention. Measured on two cores,
``workflow = "all"`` at 384²: 0.60 s per frame and 1.2 s of CPU with BLAS pools of two
threads busy in every evaluation thread, 0.25 s and 0.35 s with BLAS on one thread.

* BLAS is pinned to one thread for the whole process (:func:`pin_blas`; the command line
  also sets ``OPENBLAS_NUM_THREADS=1`` before numpy loads). A per-thread limit is not
  enough: OpenBLAS's thread count is process-wide, and builds differ on which thread's
  setting wins (with scipy's OpenBLAS 0.3.30, once the main thread has set it, a limit set
  in another thread is not seen), so limits taken and restored by several threads leave it
  unpredictable.
* OpenMP's limit belongs to the calling thread, so a workflow sets and restores its own
  while it fits (:func:`single_thread`): scikit-learn's OpenMP k-means inside two
  evaluation threads otherwise ran 2 x 2 threads on 2 cores.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

__all__ = ["pin_blas", "single_thread"]

_LOCK = threading.Lock()
_STATE: dict = {"modules": -1, "openmp": None}


def pin_blas() -> None:
    """BLAS on one thread from now on, process-wide (~4 ms per scan of the loaded libraries).

    Called by every engine and optimizer: rewardscope's parallelism is its own. The loaded
    libraries are scanned again whenever modules were imported since the last scan (a
    library loaded later, e.g. torch's OpenMP runtime, is pinned and limited too); on a
    warm service nothing is imported and the call is one comparison. A process that wants
    threaded BLAS back for other work can raise it again with threadpoolctl (an import
    after that pins it again).
    """
    n = len(sys.modules)
    if _STATE["modules"] == n:
        return
    with _LOCK:
        if _STATE["modules"] == n:
            return
        ctl = ThreadpoolController()
        ctl.select(user_api="blas").limit(limits=1)  # never restored: a pin, not a limit
        _STATE["openmp"] = ctl.select(user_api="openmp")
        _STATE["modules"] = n


@contextmanager
def single_thread() -> Iterator[None]:
    """OpenMP limited to one thread in the calling thread while a workflow fits small
    matrices, with BLAS pinned (:func:`pin_blas`).

    Yields
    ------
    None
        Inside the ``with`` block, the limits hold.
    """
    pin_blas()
    omp = _STATE["openmp"].limit(limits=1)
    try:
        yield
    finally:
        omp.restore_original_limits()
