"""Admission control, deadlines and the resend guard, without a server (the server tests are in
test_hardening.py)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from spinecast.serving.capacity import BASE_S, Capacity, Once, Saturated


def test_an_idle_model_admits_any_size_and_a_busy_one_refuses_what_would_not_fit():
    cap = Capacity(max_wait_s=10, seconds_per_patient=0.1, explain_units=20)
    with cap.admit(
        "patient", 256
    ) as cost:  # 25.6 s of work, more than the bound: admitted when idle
        assert cost == pytest.approx(25.6)
        with pytest.raises(Saturated) as err, cap.admit("patient", 1):
            pass
        assert err.value.retry_after == 26
        assert cap.deadline("patient", 32) == pytest.approx(BASE_S + 4 * (25.6 + 3.2))
    assert cap.queued_s == 0
    with (
        cap.admit("patient", 50),
        cap.admit("patient", 40),
        pytest.raises(Saturated),
    ):  # 5 s + 4 s fit in 10 s
        cap.admit("explain", 1)  # 2 s more does not
    assert cap.queued_s == 0


def test_the_speed_follows_measurements():
    cap = Capacity(max_wait_s=10, seconds_per_patient=1.0, explain_units=10, workers=2)
    assert cap.cost("patient", 4) == 2.0  # two workers share the queue
    for _ in range(40):
        cap.measured("patient", 10, 0.1)
    assert cap.seconds["patient"] == pytest.approx(0.01, rel=0.05)
    cap.calibrate(0.05, explain_units=10)
    assert cap.seconds == {"patient": 0.05, "explain": 0.5}


def test_a_resend_gets_the_first_attempts_result_and_the_work_runs_once():
    once, runs, started = Once(), [], threading.Event()

    def work():
        runs.append(1)
        started.set()
        time.sleep(0.3)
        return {"answer": len(runs)}

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(once, "call-1", work)
        started.wait()
        again = pool.submit(once, "call-1", work)  # while the first runs
        assert first.result() == again.result() == {"answer": 1}
    assert once("call-1", work) == {"answer": 1} and len(runs) == 1  # and after it finished
    assert once("call-2", work) == {"answer": 2}


def test_a_failed_call_fails_its_resend_too():
    """The resend gets the first attempt's failure itself: the broken work is not run again."""
    once, runs = Once(), []

    def broken():
        runs.append(1)
        raise RuntimeError(f"model run {len(runs)} failed")

    for _ in range(2):
        with pytest.raises(RuntimeError, match="model run 1 failed"):
            once("call-x", broken)
    assert len(runs) == 1
