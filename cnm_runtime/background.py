"""Run a generator in a thread, a bounded number of items ahead of its consumer.

Tokenizing and stacking batches is Python work that holds the GIL; ONNX Runtime releases it while
a batch runs, so a producer thread prepares the next batches meanwhile.
"""
from __future__ import annotations

import queue
import threading
from typing import Generator, Iterator, TypeVar

T = TypeVar("T")
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


class _Finished:
    def __init__(self, error: BaseException | None = None):
        self.error = error


def in_background(items: Generator[T, None, None], depth: int) -> Iterator[T]:
    """Yield what ``items`` yields, computed in a thread at most ``depth`` items ahead.

    An exception in the thread is raised here; when the consumer stops early, ``items`` is closed in
    its own thread, so its ``with`` blocks and ``finally`` clauses run.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_Finished())
        except BaseException as error:  # handed to the consumer, which raises it
            put(_Finished(error))
        finally:
            items.close()

    thread = threading.Thread(target=produce, name="cnm-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if isinstance(item, _Finished):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        thread.join()
