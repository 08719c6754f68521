"""The torch-free predictor: a model bundle + contract records -> CONTRACT.md `Prediction`s.

    predictor = Predictor("artifacts/bundle")
    predictor.predict([{"patient_id": "A-1", "age": 54, "sex": "female", "clinical_note": "..."}])

Needs onnxruntime, tokenizers, numpy, pandas and Pillow only; it never imports torch. Records are
encoded by `spinecast.datasets.inputs`, the code the training data module uses, with the feature
encoding, tokenizer and windows stored in the bundle. A bundle whose files do not match its
SHA256SUMS is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
from spinecast.datasets import TREATMENTS, validate_frame
from spinecast.datasets.decision import DecisionRule, decide
from spinecast.datasets.features import FeatureEncoding
from spinecast.datasets.inputs import (
    INPUTS,
    MODALITIES,
    OUTPUTS,
    TEXTS,
    encode_inputs,
    model_inputs,
    presence,
    remove_modality,
)
from spinecast.datasets.records import Frame, Records, column
from spinecast.datasets.schema import PATIENT_COLUMNS, TABULAR_COLUMNS
from spinecast.datasets.sentences import SentenceWindow, load_tokenizer

from . import bundle as bundle_format
from .bundle import BundleError
from .embeddings import SentenceCache, SentenceEmbedder


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Graph optimisations on; `threads` intra-op threads (None: ONNX Runtime's default, all cores).
    Denormal floats are flushed to zero: the text encoder's masked softmax underflows into them and
    runs about 5x slower otherwise (measured on this x86 machine). ONNX Runtime also sets this on
    the thread that creates the first session of a process (threads it starts later inherit it)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    # A bundle runs two or three sessions in turn: threads of an idle one spinning for work took
    # the cores from the running one (cold /predict 1.5-2x slower, measured on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return options


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )


class Predictor:
    """A verified bundle loaded into ONNX Runtime: the patient graph, its sentence graphs behind a
    sentence-embedding cache (`embeddings.py`) and its image graph; or a format-1 bundle's one
    graph.

    `variant` picks a set of graphs the card lists (`fp32`, `int8`); by default the one the card
    serves. `cache_mib` caps the sentence-embedding cache (0: off); `cache` shares one between
    predictors. `threads` caps ONNX Runtime's intra-op threads (set it to cores / workers when
    several run). `keep_memory=False` hands the memory arena's free blocks back after every run: a
    long-running server's resident memory stays flat instead of at the high-water mark of its
    largest batch, while a run still reuses blocks between its own operators (as fast as keeping
    them, measured).
    """

    def __init__(
        self,
        bundle: str | Path,
        variant: str | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        keep_memory: bool = True,
        cache_mib: float = 256,
        cache: SentenceCache | None = None,
    ):
        self.card = bundle_format.read(bundle)
        self.bundle = Path(bundle)
        self.variant = variant or self.card.serve
        if self.variant not in self.card.variants:
            raise BundleError(
                f"model bundle {self.bundle}: variant {self.variant!r} not in card.json "
                f"(has {', '.join(self.card.variants)})"
            )
        self.version: str = self.card.version
        self.rule = DecisionRule.from_dict(self.card.decision)
        self.features = FeatureEncoding.from_dict(
            json.loads((self.bundle / bundle_format.FEATURES).read_text())
        )
        self.tokenizer = load_tokenizer(self.bundle / bundle_format.TOKENIZER)
        limits = self.card.inputs
        self.window = SentenceWindow(limits.max_sentences, limits.max_tokens)
        self.image_size: int = limits.image_size
        self.batch_size = batch_size
        self.cache = cache if cache is not None else SentenceCache(int(cache_mib * 2**20))
        self._load_graphs(self.card.variants[self.variant], threads)
        self.run_options = ort.RunOptions()
        if not keep_memory:
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _load_graphs(self, graphs: bundle_format.Variant, threads: int | None) -> None:
        """The variant's ONNX Runtime sessions and the sentence embedders over the cache."""
        sessions = {
            name: _session(self.bundle / name, threads)
            for name in dict.fromkeys(
                [graphs.file, *(graphs.sentences or {}).values(), *filter(None, [graphs.image])]
            )
        }
        self.session = sessions[graphs.file]
        self.patient_inputs = [i.name for i in self.session.get_inputs()]
        # the image graph, run only for the records that have an image (None: the patient graph
        # reads the image itself)
        self.image = sessions[graphs.image] if graphs.image else None
        self.image_width = self.image.get_outputs()[0].shape[1] if self.image else 0
        # One record's patient graph is mostly per-operator overhead: waking a second thread for
        # each operator costs more than it saves (at batch 1, 2.1 vs 2.6 ms; from batch 4 two
        # threads win; measured on 2 cores), so batches of one run on a one-thread copy (its
        # weights again in memory: about the graph file's size). Not a format-1 bundle's one
        # graph, whose text encoder needs every thread.
        self.single = (
            self.session
            if threads == 1 or not graphs.sentences
            else _session(self.bundle / graphs.file, 1)
        )
        embedders = {
            name: SentenceEmbedder(sessions[name], self.bundle / name, self.cache)
            for name in dict.fromkeys((graphs.sentences or {}).values())
        }
        # empty for a format-1 bundle
        self.embedders = {text: embedders[name] for text, name in (graphs.sentences or {}).items()}

    # --- arrays --------------------------------------------------------------------------------

    def encode(self, frame: Frame) -> dict[str, np.ndarray]:
        """Validated records -> encoded inputs (the training encoding)."""
        return encode_inputs(frame, self.features, self.tokenizer, self.window, self.image_size)

    def run(
        self, arrays: dict[str, np.ndarray], embeddings: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Encoded inputs -> OUTPUTS, in TREATMENTS order. `embeddings` (from `embed`, one record)
        stand in for every record's sentences (occlusions of that record change masks only)."""
        parts = []
        for start in range(0, len(arrays["numeric"]), self.batch_size):
            chunk = model_inputs({k: arrays[k][start : start + self.batch_size] for k in INPUTS})
            if self.embedders:
                chunk = self._patient_inputs(chunk, embeddings)
            session = self.single if len(chunk["numeric"]) == 1 else self.session
            parts.append(session.run(list(OUTPUTS), chunk, self.run_options))
        if not parts:
            return {k: np.zeros((0, len(TREATMENTS)), np.float32) for k in OUTPUTS} | {
                "p_satisfied_members": np.zeros((0, 1, len(TREATMENTS)), np.float32)
            }
        return {k: np.concatenate(v) for k, v in zip(OUTPUTS, zip(*parts))}

    def embed(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The first record's (1, S, H) sentence embeddings of each text, and its (1, D) image
        embedding."""
        inputs = model_inputs({k: arrays[k][:1] for k in INPUTS})
        return self._embeddings(inputs) | self._image_embeddings(inputs)

    def _embeddings(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each text's (B, S, H) embeddings; texts that share an encoder in one call."""
        out = {}
        for embedder in dict.fromkeys(self.embedders.values()):
            names = [name for name, e in self.embedders.items() if e is embedder]
            texts = [(inputs[f"{n}_ids"], inputs[f"{n}_mask"]) for n in names]
            for name, emb in zip(names, embedder.many(texts, self.run_options)):
                out[f"{name}_emb"] = emb
        return out

    def _image_embeddings(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`image_emb` (B, D): the image graph's, for the records that have an image; zeros for
        the others, which the patient graph does not read. Empty without an image graph."""
        if self.image is None:
            return {}
        present = inputs["image_present"]
        emb = np.zeros((len(present), self.image_width), np.float32)
        if present.any():
            [emb[present]] = self.image.run(
                None, {"image": inputs["image"][present]}, self.run_options
            )
        return {"image_emb": emb}

    def _patient_inputs(self, inputs: dict, given: dict | None) -> dict[str, np.ndarray]:
        out = dict(inputs)
        if given is None:
            out |= self._embeddings(inputs) | self._image_embeddings(inputs)
        else:  # the record's embeddings, cut to this batch's sentence axis
            rows = len(inputs["numeric"])
            for name, _ in TEXTS:
                emb = given[f"{name}_emb"][:, : inputs[f"{name}_ids"].shape[1]]
                out[f"{name}_emb"] = np.ascontiguousarray(
                    np.broadcast_to(emb, (rows, *emb.shape[1:]))
                )
            if "image_emb" in given:
                out["image_emb"] = np.repeat(given["image_emb"], rows, axis=0)
        return {k: out[k] for k in self.patient_inputs}

    # --- records -------------------------------------------------------------------------------

    def validate(self, records: Iterable[dict], source: str = "request") -> pd.DataFrame:
        """Contract records (API `Patient`s or cohort rows) -> a typed frame, or CohortError naming
        each bad field. `mri_image` may hold the image bytes (the API decodes base64 to bytes)."""
        frame = pd.DataFrame.from_records(list(records))
        images = frame.pop("mri_image") if "mri_image" in frame else None
        inline = images.map(lambda v: isinstance(v, bytes)) if images is not None else None
        if images is not None and not inline.all():
            frame["mri_image"] = images.where(~inline, None)
        typed = validate_frame(frame, source=source)
        if images is not None and inline.any():
            typed["mri_image"] = (
                typed["mri_image"].astype(object).where(~inline.to_numpy(), images.to_numpy())
            )
        return typed

    def predict(self, records: Iterable[dict], validated: bool = False) -> list[dict]:
        """Contract records -> one CONTRACT.md `Prediction` per record, in order. `validated=True`
        skips the contract checks for records that already passed them (the service's schema)."""
        return self.predict_frame(self._frame(records, validated))

    def _frame(self, records: Iterable[dict], validated: bool) -> Frame:
        if validated:
            return Records(list(records), PATIENT_COLUMNS)
        return self.validate(records)

    def predict_frame(self, frame: Frame) -> list[dict]:
        arrays = self.encode(frame)
        return predictions(frame, arrays, self.run(arrays), self.version, self.rule)

    def explain(
        self, record: dict, max_sentences: int = 64, top: int = 5, validated: bool = False
    ) -> dict:
        """A `Prediction` plus its `explanation`, by occlusion in one batched model run: the change
        in p_satisfied of the planned (else recommended) treatment when each present modality, each
        recorded structured field and each sentence (at most `max_sentences`) is left out."""
        frame = self._frame([record], validated)
        arrays = self.encode(frame)
        variants: list[tuple[str, object, dict[str, np.ndarray]]] = [("base", None, arrays)]
        present = presence(arrays)[0]
        variants += [
            ("modality", m, remove_modality(arrays, m))
            for m, used in zip(MODALITIES, present)
            if used
        ]
        variants += [
            ("field", name, arrays_without)
            for name, arrays_without in self._field_occlusions(arrays)
        ]
        occluded, sentences = self._sentence_occlusions(frame, arrays, max_sentences)
        variants += occluded
        stacked = {k: np.concatenate([v[k] for _, _, v in variants]) for k in INPUTS}
        outcomes = self.run(stacked, self.embed(arrays) if self.embedders else None)
        [prediction] = predictions(
            frame, arrays, {k: v[:1] for k, v in outcomes.items()}, self.version, self.rule
        )
        treatment = prediction["planned_treatment"] or prediction["recommended_treatment"]
        p = outcomes["p_satisfied"][:, TREATMENTS.index(treatment)]
        effects = _effects(variants[1:], p[1:] - p[0], sentences)
        by_size = lambda e: -abs(e["effect"])
        prediction["explanation"] = {
            "treatment": treatment,
            "modalities": effects["modality"],
            "fields": sorted(effects["field"], key=by_size)[:top],
            "sentences": sorted(effects["sentence"], key=by_size)[:top],
            "sentences_scored": len(sentences),
        }
        return prediction

    def _sentence_occlusions(self, frame: Frame, arrays: dict, max_sentences: int):
        """One variant per kept sentence of the note, then the report (at most `max_sentences`),
        with that sentence masked; and (column, slot, text) of each."""
        variants, sentences = [], []
        for name, source in TEXTS:
            text = column(frame, source)[0]
            kept = self.window.sentences(text)[0] if isinstance(text, str) else []
            for slot, sentence in enumerate(kept[: max(0, max_sentences - len(sentences))]):
                mask = arrays[f"{name}_mask"].copy()
                mask[0, slot] = 0
                variants.append(("sentence", len(sentences), {**arrays, f"{name}_mask": mask}))
                sentences.append((source, slot, sentence))
        return variants, sentences

    def _field_occlusions(self, arrays: dict[str, np.ndarray]):
        """(field, arrays with that recorded structured field set to not recorded)."""
        for j, name in enumerate(self.features.numeric):
            if not arrays["numeric_missing"][0, j]:
                numeric, missing = arrays["numeric"].copy(), arrays["numeric_missing"].copy()
                numeric[0, j], missing[0, j] = 0.0, 1.0
                yield name, {**arrays, "numeric": numeric, "numeric_missing": missing}
        for j, name in enumerate(self.features.categorical):
            if arrays["categorical"][0, j] != 0:
                categorical = arrays["categorical"].copy()
                categorical[0, j] = 0
                yield name, {**arrays, "categorical": categorical}


def _effects(variants: list, deltas: np.ndarray, sentences: list) -> dict:
    """Each occlusion's change in p_satisfied, by kind."""
    effects = {"modality": {}, "field": [], "sentence": []}
    for (kind, key, _), value in zip(variants, deltas):
        if kind == "modality":
            effects["modality"][key] = float(value)
        elif kind == "field":
            effects["field"].append({"field": key, "effect": float(value)})
        else:
            source, slot, text = sentences[key]
            effects["sentence"].append(
                {"source": source, "index": slot, "text": text, "effect": float(value)}
            )
    return effects


def predictions(
    frame: Frame,
    arrays: dict[str, np.ndarray],
    outcomes: dict[str, np.ndarray],
    version: str,
    rule: DecisionRule,
) -> list[dict]:
    """Model outputs -> `Prediction` dicts: outcomes sorted by p_satisfied, the rule's
    recommendation and its reason, modalities, warnings."""
    present = presence(arrays)
    missing_fields = np.stack([pd.isna(column(frame, c)) for c in TABULAR_COLUMNS], axis=1)
    planned = column(frame, "treatment")
    d = decide(outcomes["p_satisfied_members"], outcomes["propensity"], rule)
    out = []
    for i, patient_id in enumerate(frame["patient_id"].tolist()):
        rows = [
            {
                "treatment": t,
                "p_satisfied": float(outcomes["p_satisfied"][i, k]),
                "p_mcid": float(outcomes["p_mcid"][i, k]),
                "odi_12m": float(outcomes["odi_12m"][i, k]),
                "p_satisfied_low": float(d.low[i, k]),
                "p_satisfied_high": float(d.high[i, k]),
                "benefit": float(d.benefit[i, k]),
                "benefit_low": float(d.benefit_low[i, k]),
                "support": float(outcomes["propensity"][i, k]),
                "supported": bool(d.supported[i, k]),
            }
            for k, t in enumerate(TREATMENTS)
        ]
        rows.sort(key=lambda r: r["p_satisfied"], reverse=True)
        out.append(
            {
                "patient_id": patient_id,
                "model_version": version,
                "outcomes": rows,
                "recommended_treatment": TREATMENTS[d.recommended[i]],
                "recommendation_reason": d.reasons[i],
                "planned_treatment": planned[i] if isinstance(planned[i], str) else None,
                "modalities_used": [m for m, used in zip(MODALITIES, present[i]) if used],
                "warnings": _warnings(
                    present[i],
                    arrays,
                    i,
                    [c for c, m in zip(TABULAR_COLUMNS, missing_fields[i]) if m],
                )
                + d.warnings[i],
            }
        )
    return out


def _warnings(
    present: np.ndarray, arrays: dict[str, np.ndarray], i: int, missing_fields: list[str]
) -> list[str]:
    """What was missing or cut. Names fields only, never their values."""
    warnings = [
        f"{m} missing: predicted without it" for m, used in zip(MODALITIES, present) if not used
    ]
    for name, source in TEXTS:
        if arrays[f"{name}_truncated"][i]:
            s, t = arrays[f"{name}_ids"].shape[1:]
            warnings.append(
                f"{source} truncated to the encoder's window ({s} sentences of at most {t} tokens; "
                "the middle sentences or the ends of long sentences were left out)"
            )
    if missing_fields:
        warnings.append(f"structured fields not recorded: {', '.join(missing_fields)}")
    return warnings
