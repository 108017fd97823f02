"""Prefetch: make the next training batches in a background thread while the model trains.

Assembling a batch (indexing, random crop and flip, normalisation) is NumPy work
that releases the GIL for most of its time, so one background thread can prepare
the next batches on a spare core while the main thread runs the step. One thread
and a bounded queue of `depth` batches: memory stays at a few batches, and the
batches come out in order. Each batch is a function of its index alone (the
trainer seeds its augmentation by (seed, epoch, batch)), so a run with prefetching
takes exactly the same steps as one without.

    with Prefetch(make, range(first, last), depth=2) as batches:
        for b in range(first, last):
            images, labels = next(batches)

depth 0 makes each batch on the calling thread when it is asked for (no thread).
An exception in `make` reaches the caller at the batch that raised it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable

_DONE = object()  # the end of the items


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetch:
    """An iterator over make(i) for i in items, computed up to `depth` ahead in one thread."""

    POLL_S = 0.1  # how often a producer blocked on a full queue looks whether it should stop

    def __init__(self, make: Callable, items: Iterable, depth: int = 2):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"prefetch depth must be an integer >= 0, got {depth!r}")
        self.make, self.items, self.depth = make, iter(items), depth
        self._stop = threading.Event()
        self._thread = None
        if depth:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._produce, name="tinyvit-prefetch", daemon=True)
            self._thread.start()

    def _put(self, value) -> bool:
        """Queue value unless told to stop first; False when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=self.POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self.items:
                if not self._put(self.make(item)):
                    return
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it where the batch was wanted
            self._put(_Failed(e))
            return
        self._put(_DONE)

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is None:
            return self.make(next(self.items))
        value = self._queue.get()
        if value is _DONE:
            self._queue.put(_DONE)  # stays exhausted
            raise StopIteration
        if isinstance(value, _Failed):
            raise value.error
        return value

    def close(self) -> None:
        """Stop the thread (a batch being made is finished and dropped) and wait for it."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
