"""Admission control and deadlines for the model's work, from its measured speed (torch-free).

The public service admits a request only if the model can finish it in time: the work already
admitted and not finished (`queued_s`, in the model's own seconds) plus the new request's must fit
in `max_wait_s`; otherwise `Saturated` (HTTP 503 with `Retry-After`) before any work starts. A
request that arrives at an idle model is always admitted, however large: its deadline scales with
its size. Each model call's deadline is derived from the work ahead of it and its own size, with
a wide safety factor, so that only a model that has stopped answering runs out of time.

Speeds are measured by the model worker (seconds of compute per call, excluding its queue) and fed
back through `measured`; an exponential moving average per kind of work ("patient": one patient
scored; "explain": one /explain) starts from the model's start-up measurement and follows the
bundle, the notes' lengths and the machine.

`Once` makes a resent model call safe: the model answers a call id it has seen from the first
attempt, whether still running or done, so a resend never duplicates work.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future

SAFETY = 4.0  # a call's deadline: SAFETY x (expected queue + own work) + BASE_S
BASE_S = 10.0
EWMA = 0.2


class Saturated(Exception):
    """The model cannot take this work now; `retry_after` (whole seconds) says when to try again."""

    def __init__(self, retry_after: int):
        super().__init__(f"the model is saturated; retry after {retry_after} s")
        self.retry_after = retry_after


class Capacity:
    def __init__(
        self, max_wait_s: float, seconds_per_patient: float, explain_units: float, workers: int = 1
    ):
        self.max_wait_s, self.workers = max_wait_s, max(1, workers)
        self.seconds: dict[str, float] = {}  # kind -> model seconds per unit
        self.calibrate(seconds_per_patient, explain_units)
        self.queued_s = 0.0
        self._lock = threading.Lock()

    def calibrate(self, seconds_per_patient: float, explain_units: float) -> None:
        """Start (again) from one measured (or assumed) speed: an /explain costs `explain_units`
        patients."""
        self.seconds.update(
            patient=seconds_per_patient, explain=seconds_per_patient * explain_units
        )

    def cost(self, kind: str, units: int) -> float:
        return self.seconds[kind] * units / self.workers

    def retry_after(self) -> int:
        return max(1, math.ceil(self.queued_s))

    def admit(self, kind: str, units: int) -> contextlib.AbstractContextManager[float]:
        """Reserve `units` of `kind` work in the queue; the returned context releases it on exit and
        gives its cost in seconds. Raises `Saturated` at once when the model is busy and this work
        would not fit in `max_wait_s`."""
        cost = self.cost(kind, units)
        with self._lock:
            if self.queued_s > 0 and self.queued_s + cost > self.max_wait_s:
                raise Saturated(self.retry_after())
            self.queued_s += cost
        return self._held(cost)

    @contextlib.contextmanager
    def _held(self, cost: float) -> Iterator[float]:
        try:
            yield cost
        finally:
            with self._lock:
                self.queued_s = max(0.0, self.queued_s - cost)

    def deadline(self, kind: str, units: int) -> float:
        """Seconds a call of `units` may take before it counts as lost."""
        return BASE_S + SAFETY * (self.queued_s + self.cost(kind, units))

    def measured(self, kind: str, units: int, seconds: float) -> None:
        """The model took `seconds` of compute for `units` of `kind`."""
        if units > 0 and seconds > 0:
            with self._lock:
                self.seconds[kind] += EWMA * (seconds / units - self.seconds[kind])


class Once:
    """A model call sent again under the same `call_id` (its first attempt timed out on the caller's
    side) gets the first attempt's result: it waits for it while it runs, and finds it for a while
    after; the work is never done twice."""

    def __init__(self, keep: int = 64):
        self.keep, self.lock = keep, threading.Lock()
        self.calls: OrderedDict[str, Future] = OrderedDict()

    def __call__(self, call_id: str, work: Callable[[], object]) -> object:
        if not call_id:
            return work()
        with self.lock:
            future, mine = self.calls.get(call_id), False
            if future is None:
                future, mine = Future(), True
                self.calls[call_id] = future
                while len(self.calls) > self.keep:
                    self.calls.popitem(last=False)
        if not mine:
            return future.result()
        try:
            future.set_result(work())
        except Exception as err:  # noqa: BLE001 - the waiting resend gets the same failure
            future.set_exception(err)
        return future.result()
