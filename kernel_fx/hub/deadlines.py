"""Bounding Hub calls that huggingface_hub cannot bound itself: a worker thread and a deadline.

huggingface_hub 1.x and 2.x send `list_repo_refs`, `list_repo_tree` and the `repo_info` inside
`snapshot_download` without a timeout (their shared HTTP client has `timeout=None`), and retry a
timed-out file request for minutes. Where a call takes `timeout=` it is passed as well (see
`remote`); this module is the bound that holds in every case. The call runs in a daemon thread:
on expiry the caller gets `DeadlineExceeded` at once, and the abandoned call ends whenever its
connection does (a daemon thread never delays the interpreter's exit).

`within` gives a call a fixed time. `until_stalled` gives it as long as it keeps making progress,
as `watch` sees it (a download: new or grown files in the cache), and `busy` tells when a file
body is in flight, which huggingface_hub's own read timeout bounds.

>>> import time
>>> within(lambda: 6 * 7, 1.0)
42
>>> within(lambda: time.sleep(5), 0.05)
Traceback (most recent call last):
...
kernel_fx.hub.deadlines.DeadlineExceeded: no answer within 0.05 s
>>> ticks = iter(range(1000))
>>> until_stalled(lambda: time.sleep(0.3) or "done", 0.1, watch=lambda: next(ticks))  # progress all along
'done'
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TypeVar

T = TypeVar("T")

_POLL_S = 0.2  # how often `until_stalled` looks for progress, at most


class DeadlineExceeded(Exception):
    """The call did not finish (or made no progress) within `seconds`; it goes on in its thread."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds = seconds


def within(call: Callable[[], T], seconds: float) -> T:
    """`call()`'s result or exception, or `DeadlineExceeded` once `seconds` have passed."""
    future = _start(call)
    if not wait([future], timeout=seconds).done:
        raise DeadlineExceeded(seconds)
    return future.result()


def until_stalled(call: Callable[[], T], seconds: float, *, watch: Callable[[], object],
                  busy: Callable[[], bool] = lambda: False) -> T:
    """`call()`'s result, or `DeadlineExceeded` once `watch()` returned the same value for `seconds`
    while `busy()` was False."""
    future = _start(call)
    seen, last_change = watch(), time.monotonic()
    step = min(_POLL_S, seconds / 4)
    while not wait([future], timeout=step).done:
        now, state = time.monotonic(), watch()
        if state != seen or busy():
            seen, last_change = state, now
        elif now - last_change >= seconds:
            raise DeadlineExceeded(seconds)
    return future.result()


def _start(call: Callable[[], T]) -> Future[T]:
    # A bare thread, not a ThreadPoolExecutor: the executor's threads are joined at exit, and an
    # abandoned call on a silent connection would then block the interpreter from exiting.
    future: Future[T] = Future()
    context = contextvars.copy_context()

    def run() -> None:
        try:
            future.set_result(context.run(call))
        except BaseException as exc:  # handed to the caller, who re-raises it
            future.set_exception(exc)

    threading.Thread(target=run, name="kernel_fx-hub-call", daemon=True).start()
    return future
