"""The service's settings, read once from `SPINECAST_*` environment variables (pydantic-settings).

    SPINECAST_API_KEY=... SPINECAST_MAX_QUEUE_S=10 bentoml serve spinecast.serving.service:SpineCast

Every variable, its default and its rule is a field below (README "Serve over HTTP" and SECURITY.md
say what each one is for). A value that breaks its rule stops the service at start-up with the
variable's name and the rule, never silently falls back to the default.
"""

from __future__ import annotations

import functools
import os
import re

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "SPINECAST_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, protected_namespaces=())

    model: str = "spinecast:latest"  # the BentoML store tag of the bundle
    variant: str | None = None  # a variant the card lists (fp32, int8...); default: the served one
    api_key: str | None = None  # when set, every route but the probes needs `Bearer <key>`
    public_url: str | None = None  # the address clinicians reach (CDS cards' links); else the Host
    # CDS Hooks: the FHIR base URLs a request's fhirServer may name (comma-separated; none: never)
    cds_fhir_servers: str = ""
    cds_fhir_timeout_s: float = Field(10, gt=0)  # reading one hook's chart from its fhirServer
    # the request edge
    max_body_bytes: int = Field(1 << 20, gt=0)  # /predict, /explain
    max_batch_body_bytes: int = Field(16 << 20, gt=0)  # /predict_batch
    max_request_pixels: int = Field(64 << 20, gt=0)  # decoded image pixels per request
    header_timeout_s: float = Field(10, gt=0)  # headers complete within, else 408
    body_timeout_s: float = Field(30, gt=0)  # body complete within, else 408
    max_connections: int = Field(512, gt=0)  # beyond: a canned 503
    # capacity
    max_queue_s: float = Field(20, gt=0)  # admitted model work in seconds; beyond: 503
    seconds_per_patient: float = Field(0.25, gt=0)  # the prior, before the model is measured
    chunk_patients: int = Field(32, gt=0)  # /predict_batch: patients per model call
    explain_max_sentences: int = Field(64, gt=0)
    # sentence embeddings kept per model worker, in MiB (0: none kept; see SECURITY.md)
    sentence_cache_mib: float = Field(256, ge=0)
    # the model worker
    workers: int = Field(1, gt=0)
    ort_threads: int = Field(0, ge=0)  # ONNX Runtime threads per worker; 0: cores / workers
    ort_arena: bool = False  # keep ONNX Runtime's memory arena between runs
    batching: bool = True  # BentoML adaptive batching of /predict
    max_batch_size: int = Field(32, gt=0)
    max_latency_ms: int = Field(20000, gt=0)
    # the model in the public service's own process: one HTTP hop instead of two, no adaptive
    # batching (for low concurrency, where a request's latency matters more than throughput)
    inline_model: bool = False

    @field_validator("inline_model")
    @classmethod
    def _one_inline_worker(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("workers", 1) != 1:
            raise ValueError("runs one model worker, in this process: needs SPINECAST_WORKERS=1")
        return value

    @field_validator("cds_fhir_servers")
    @classmethod
    def _urls(cls, value: str) -> str:
        for url in filter(None, (u.strip() for u in value.split(","))):
            if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", url):
                raise ValueError("must be comma-separated http(s) base URLs, no query or fragment")
        return value

    @functools.cached_property
    def fhir_servers(self) -> frozenset[str]:
        """The allowed fhirServer base URLs, parsed once."""
        return frozenset(
            u.strip().rstrip("/") for u in self.cds_fhir_servers.split(",") if u.strip()
        )

    def threads(self) -> int:
        return self.ort_threads or max(1, (os.cpu_count() or 1) // self.workers)


def load() -> Settings:
    """The settings from the environment; a bad value raises ValueError naming the variable."""
    try:
        return Settings()
    except ValidationError as err:
        problems = "; ".join(
            f"{PREFIX}{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"invalid service settings: {problems}") from None
