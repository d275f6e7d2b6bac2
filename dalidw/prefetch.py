"""Prefetch: values of consecutive steps made on a thread of their own, a few ahead of the caller.

Keras runs a ``PyDataset`` of one worker in its training loop: without this, the host's share of
each batch (cutting the frames, feeding DALI, waiting for its outputs) would sit between two
training steps, with the accelerator idle. Here it runs while the step runs.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

#: Live prefetchers, stopped at interpreter exit (a thread left inside DALI can stall the exit).
_LIVE: weakref.WeakSet[Prefetch] = weakref.WeakSet()


class Prefetch:
    """``make(step)`` for consecutive steps, up to ``ahead`` of them made before they are asked for.

    Asked for step k right after step k - 1, the value is usually ready; any other k starts the
    thread over from k. An exception raised by ``make(k)`` is raised, as it is, to the caller that
    asks for step k (and step k is tried again when asked again). One caller at a time.

    Args:
        make: the value of a step; called on the prefetch thread only.
        ahead: values made ahead and held (each holds its batch's memory).
    """

    def __init__(self, make: Callable[[int], Any], ahead: int = 2):
        self.make, self.ahead = make, int(ahead)
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._next: int | None = None

    def __call__(self, step: int) -> Any:
        step = int(step)
        if self._thread is None or step != self._next:
            self._start(step)
        failed, value = self._queue.get()
        self._next = step + 1
        if failed:
            self.close()  # the thread has ended
            raise value
        return value

    @property
    def running(self) -> bool:
        """Whether the prefetch thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the thread and drop what it made ahead."""
        thread, made, stop = self._thread, self._queue, self._stop
        self._thread = self._queue = self._stop = self._next = None
        if thread is None:
            return
        stop.set()
        if threading.current_thread() is thread:  # collected on its own thread: it ends by itself
            return
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):  # free a thread waiting to put a value
                made.get(timeout=0.05)

    def __del__(self) -> None:
        self.close()

    def _start(self, step: int) -> None:
        self.close()
        self._queue, self._stop = queue.Queue(maxsize=self.ahead), threading.Event()
        self._thread = threading.Thread(target=_work, args=(self.make, step, self._queue, self._stop),
                                        name="dalidw-prefetch", daemon=True)
        _LIVE.add(self)
        self._thread.start()


def _work(make: Callable[[int], Any], step: int, out: queue.Queue, stop: threading.Event) -> None:
    """The thread: (False, make(step)) for step, step + 1, ... into ``out`` until ``stop`` is set,
    or (True, the exception) once, then return. (A function, not a method: the thread holds no
    reference to its Prefetch, which can then be collected and close it.)"""
    while not stop.is_set():
        try:
            item = (False, make(step))
        except BaseException as err:  # noqa: BLE001 - handed to the caller, who raises it
            item = (True, err)
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                break
            except queue.Full:
                continue
        if item[0]:
            return
        step += 1


@atexit.register
def _close_all() -> None:
    for prefetch in list(_LIVE):
        prefetch.close()
