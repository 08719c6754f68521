"""The service's settings: read from SPINECAST_* once, typed, and refused by name when wrong."""

import pytest
from spinecast.serving.settings import load


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPINECAST_MAX_QUEUE_S", "7.5")
    monkeypatch.setenv("SPINECAST_BATCHING", "0")
    monkeypatch.setenv("SPINECAST_WORKERS", "2")
    settings = load()
    assert settings.max_queue_s == 7.5 and settings.batching is False
    assert settings.model == "spinecast:latest" and settings.max_body_bytes == 1 << 20
    assert settings.threads() >= 1


@pytest.mark.parametrize(
    "name, value, rule",
    [
        ("SPINECAST_MAX_QUEUE_S", "-1", "greater than 0"),
        ("SPINECAST_WORKERS", "two", "valid integer"),
        ("SPINECAST_BATCHING", "maybe", "valid boolean"),
    ],
)
def test_a_bad_value_is_refused_with_the_variable_and_the_rule(monkeypatch, name, value, rule):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}: .*{rule}"):
        load()
