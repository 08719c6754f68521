"""When the public service sends a model call again: a small, named policy (`Resend`).

Two faults are known, each with its own rule:
- **closed connection** (`aiohttp.ClientConnectionError`): BentoML's client keeps idle connections
  for 15 s and the model server closes them after 5 s (bentoml/BentoML#4971), so a call can meet a
  connection that is going away. Nothing ran: it is sent again after a short pause.
- **no answer within the deadline** (`TimeoutError`): the call may still be running. It is sent
  again once, and only when that cannot duplicate work: `idempotent` calls, those that carry a
  `call_id` (the model answers a repeat from the first attempt, `capacity.Once`), or whose first
  attempt BentoML 1.4.40's batch dispatcher can lose (about 1 in 1,000 at concurrency 32).
Any other error is a failed model run: no resend. Every give-up is `ServiceUnavailable` (503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from bentoml.exceptions import ServiceUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class Resend:
    attempts: int = 6  # sends in all, closed connections included
    timeouts: int = 2  # sends that may time out, for an idempotent call (else 1)
    pause_s: float = 0.05  # before resend n: n x pause_s

    async def call(
        self, send: Callable[[], Awaitable[T]], deadline_s: float, idempotent: bool
    ) -> T:
        timed_out = 0
        for attempt in range(1, self.attempts + 1):
            try:
                return await asyncio.wait_for(send(), deadline_s)
            except (aiohttp.ClientConnectionError, TimeoutError) as err:
                timed_out += isinstance(err, TimeoutError)
                allowed = self.timeouts if idempotent else 1
                if attempt == self.attempts or timed_out >= allowed:
                    raise ServiceUnavailable(
                        f"the model service did not answer ({type(err).__name__})"
                    ) from None
                await asyncio.sleep(self.pause_s * attempt)
            except Exception as err:  # noqa: BLE001 - a failed run: 503 here, the next calls go on
                raise ServiceUnavailable(
                    f"the model could not answer this request ({type(err).__name__})"
                ) from None
        raise AssertionError("unreachable")  # the loop returns or raises
