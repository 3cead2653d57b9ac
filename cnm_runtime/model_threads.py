"""What the feed sees of every engine: batches submitted to a pool of model threads, ``runs`` at once."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # only named in hints: the sessions, which import this, bring Batch themselves
    from cnm_runtime.batch import Batch


class ModelThreads:
    """``submit(batch) -> Future[(center, width)]`` (or ``run(batch)``), ``close()`` when done; a context manager.

    An engine's session subclasses it: it sets ``runs``, defines ``_run(batch)`` (called in a model thread) and
    calls ``_start_threads`` at the end of its ``__init__``.
    """

    runs: int

    def _start_threads(self, initializer: Callable[[], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(self.runs, thread_name_prefix="cnm-model", initializer=initializer)

    def _run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def submit(self, batch: Batch) -> Future:
        """``(center, width)`` ``[queries]`` float32 of ``batch``, computed in one of the model threads."""
        return self._pool.submit(self._run, batch)

    def run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        return self.submit(batch).result()

    def close(self) -> None:
        """Wait for the batches in the model and end its threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ModelThreads:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
