"""The resend policy under injected faults: each path of `Resend.call`, with real asyncio timing."""

import asyncio

import aiohttp
import pytest
from bentoml.exceptions import ServiceUnavailable
from spinecast.serving.resend import Resend

POLICY = Resend(pause_s=0.001)


class Model:
    """A model call that fails as scripted: "closed" (connection closed), "hang" (no answer),
    "error" (the run failed), or "ok" (answers); counts sends and cancelled attempts."""

    def __init__(self, *script: str):
        self.script, self.sends, self.cancelled = list(script), 0, 0

    async def __call__(self):
        self.sends += 1
        step = self.script.pop(0) if self.script else "ok"
        if step == "closed":
            raise aiohttp.ServerDisconnectedError()
        if step == "error":
            raise ValueError("SENTINEL patient value")
        if step == "hang":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return {"answer": self.sends}


def run(model: Model, idempotent: bool, deadline: float = 0.05):
    return asyncio.run(POLICY.call(model, deadline, idempotent))


def test_a_closed_connection_is_sent_again_until_it_answers():
    model = Model("closed", "closed")
    assert run(model, idempotent=False) == {"answer": 3} and model.sends == 3


def test_a_connection_that_keeps_closing_gives_up_after_the_attempts():
    model = Model(*["closed"] * 10)
    with pytest.raises(ServiceUnavailable, match="did not answer"):
        run(model, idempotent=False)
    assert model.sends == POLICY.attempts


def test_no_answer_is_not_resent_when_that_could_duplicate_work():
    model = Model("hang")
    with pytest.raises(ServiceUnavailable, match="TimeoutError"):
        run(model, idempotent=False)
    assert model.sends == 1 and model.cancelled == 1  # the waiting attempt is cancelled


def test_no_answer_is_resent_once_for_an_idempotent_call():
    model = Model("hang")
    assert run(model, idempotent=True) == {"answer": 2} and model.cancelled == 1
    twice = Model("hang", "hang", "ok")
    with pytest.raises(ServiceUnavailable):
        run(twice, idempotent=True)
    assert twice.sends == 2 and twice.cancelled == 2  # bounded: never a third attempt


def test_a_failed_run_is_not_resent_and_its_text_is_not_repeated():
    model = Model("error")
    with pytest.raises(ServiceUnavailable) as err:
        run(model, idempotent=True)
    assert model.sends == 1 and "ValueError" in str(err.value) and "SENTINEL" not in str(err.value)
