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
    assert settings.fhir_servers == frozenset()  # no fhirServer is read unless ops list it
    monkeypatch.setenv("SPINECAST_CDS_FHIR_SERVERS", "https://ehr.example/fhir/, http://10.0.0.2")
    assert load().fhir_servers == {"https://ehr.example/fhir", "http://10.0.0.2"}


@pytest.mark.parametrize(
    "name, value, rule",
    [
        ("SPINECAST_MAX_QUEUE_S", "-1", "greater than 0"),
        ("SPINECAST_WORKERS", "two", "valid integer"),
        ("SPINECAST_BATCHING", "maybe", "valid boolean"),
        ("SPINECAST_CDS_FHIR_SERVERS", "ehr.example/fhir", "http\\(s\\) base URLs"),
        ("SPINECAST_CDS_FHIR_SERVERS", "https://ehr.example/fhir?x=1", "no query"),
    ],
)
def test_a_bad_value_is_refused_with_the_variable_and_the_rule(monkeypatch, name, value, rule):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}: .*{rule}"):
        load()


@pytest.mark.parametrize("given, expected", [(None, "false"), ("true", "true")])
def test_the_service_tokenizes_on_its_own_thread_unless_told_otherwise(
    bentoml_home, given, expected
):
    """Importing the service turns the tokenizer's thread pool off (a request's few sentences
    tokenize faster without it), unless the environment already chose."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    env |= {
        "BENTOML_HOME": str(bentoml_home),
        **({"TOKENIZERS_PARALLELISM": given} if given else {}),
    }
    code = "import os, spinecast.serving.service; print(os.environ['TOKENIZERS_PARALLELISM'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == expected
