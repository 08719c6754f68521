"""Export to ONNX, the torch-free predictor and batch scoring, on a tiny trained model."""

import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from spinecast.datasets import CohortError, load_cohort
from spinecast.datasets.inputs import INPUTS, OUTPUTS, PATIENT_INPUTS
from spinecast.serving.bundle import BundleError
from spinecast.serving.predictor import Predictor
from spinecast.training.export import ExportError, export
from spinecast.training.inference import encode_for, load_module, predict

from spinecast.cli import main


@pytest.fixture(scope="module")
def records(small_cohort) -> pd.DataFrame:
    return load_cohort(small_cohort / "cohort.parquet", training=True).iloc[-40:]


def test_bundle_holds_checked_graphs_with_named_dynamic_axes_and_a_card(bundle):
    assert {p.name for p in bundle.iterdir()} == {
        "model.onnx",
        "sentences.onnx",
        "image.onnx",
        "tokenizer.json",
        "features.json",
        "card.json",
        "SHA256SUMS",
    }

    def axes(graph):
        return {
            i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in graph.input
        }

    patient, sentences, image = (
        onnx.load(str(bundle / f)) for f in ("model.onnx", "sentences.onnx", "image.onnx")
    )
    for graph in (patient, sentences, image):
        onnx.checker.check_model(graph)
    inputs = axes(patient.graph)
    assert list(inputs) == list(PATIENT_INPUTS)
    assert inputs["note_ids"] == ["batch", "note_sentences", "note_tokens"]
    assert inputs["note_emb"][:2] == ["batch", "note_sentences"]
    assert inputs["image_emb"][0] == "batch"
    assert [o.name for o in patient.graph.output] == list(OUTPUTS)
    size = json.loads((bundle / "card.json").read_text())["inputs"]["image_size"]
    assert axes(image.graph) == {"image": ["batch", 1, size, size]}
    assert [o.name for o in image.graph.output] == ["image_emb"]
    assert axes(sentences.graph) == {
        "ids": ["sentences", "tokens"],
        "mask": ["sentences", "tokens"],
    }
    assert [o.name for o in sentences.graph.output] == ["embedding"]
    card = json.loads((bundle / "card.json").read_text())
    assert card["version"].startswith("spinecast-") and card["git_commit"]
    assert card["parity"]["passed"] and card["parity"]["max_abs_diff_probabilities"] <= 1e-4
    assert card["training_data"]["patients"] > 0 and 0 < card["variants"]["fp32"]["val_auroc"] <= 1
    assert card["inputs"]["max_sentences"] == 48
    # one sentence graph for both texts: the note and the report share their encoder
    assert card["variants"]["fp32"]["sentences"] == {
        "note": "sentences.onnx",
        "report": "sentences.onnx",
    }
    assert card["variants"]["fp32"]["image"] == "image.onnx"
    assert card["decision"] == {
        "margin": 0.02,
        "surgical_margin": 0.08,
        "quantile": 0.2,
        "support_floor": 0.05,
        "interval": 0.8,
    }


@pytest.mark.parametrize("batch_size", [1, 5, 33])
@pytest.mark.parametrize("texts", ["as charted", "none"])
def test_onnx_matches_pytorch_at_other_batch_sizes_and_lengths(
    bundle, checkpoint, records, batch_size, texts
):
    module = load_module(checkpoint)
    if texts == "none":  # no sentence in the whole batch: the graph's text encoder runs on 0 tokens
        records = records.assign(clinical_note=None, imaging_report=None)
    arrays = encode_for(module, records)
    torch_out = predict(module, arrays)  # full-width windows; the predictor trims them per batch
    onnx_out = Predictor(bundle, batch_size=batch_size).run(arrays)
    for key in ("p_satisfied", "p_mcid", "p_satisfied_members", "propensity"):
        assert np.abs(onnx_out[key] - torch_out[key]).max() <= 1e-4
    assert np.abs(onnx_out["odi_12m"] - torch_out["odi_12m"]).max() <= 1e-2


def test_predictor_encodes_records_exactly_as_training_did(bundle, checkpoint, records):
    module = load_module(checkpoint)
    predictor = Predictor(bundle)
    served = predictor.encode(records)
    trained = encode_for(module, records)
    for key in (*INPUTS, "note_truncated", "report_truncated"):
        np.testing.assert_array_equal(served[key], trained[key], err_msg=key)


def test_predictions_from_records_follow_the_contract_and_match_pytorch(
    bundle, checkpoint, records, small_cohort
):
    module = load_module(checkpoint)
    expected = predict(module, encode_for(module, records))["p_satisfied"]
    rows = records.drop(columns=["satisfied", "odi_12m"]).to_dict("records")
    for row in rows:  # the API carries the image itself; the predictor takes its bytes
        row["mri_image"] = (
            Path(row["mri_image"]).read_bytes() if isinstance(row["mri_image"], str) else None
        )
    out = Predictor(bundle).predict(rows)
    assert [p["patient_id"] for p in out] == records["patient_id"].tolist()
    for i, p in enumerate(out):
        assert [o["p_satisfied"] for o in p["outcomes"]] == sorted(
            (o["p_satisfied"] for o in p["outcomes"]), reverse=True
        )
        recommended = next(o for o in p["outcomes"] if o["treatment"] == p["recommended_treatment"])
        assert recommended["supported"] and p["recommendation_reason"].split(":")[0] in (
            p["recommended_treatment"],
            "physical_therapy",
        )
        for o in p["outcomes"]:
            assert o["p_satisfied_low"] <= o["p_satisfied_high"] and 0 <= o["support"] <= 1
        assert p["planned_treatment"] == records["treatment"].iloc[i]
        by_treatment = {o["treatment"]: o["p_satisfied"] for o in p["outcomes"]}
        got = np.array(
            [
                by_treatment[t]
                for t in (
                    "physical_therapy",
                    "epidural_steroid_injection",
                    "decompression",
                    "fusion",
                )
            ]
        )
        assert np.abs(got - expected[i]).max() <= 1e-4
        assert all(0 <= o["odi_12m"] <= 100 and 0 <= o["p_mcid"] <= 1 for o in p["outcomes"])


def test_a_record_with_every_optional_field_missing_predicts_with_warnings(bundle):
    [p] = Predictor(bundle).predict([{"patient_id": "X-1", "age": 61, "sex": "male"}])
    assert p["modalities_used"] == ["tabular"]
    assert p["planned_treatment"] is None
    warnings = " | ".join(p["warnings"])
    for modality in ("clinical_note missing", "imaging_report missing", "mri_image missing"):
        assert modality in warnings
    assert "structured fields not recorded: bmi, smoking" in warnings
    assert len(p["outcomes"]) == 4


def test_truncated_note_is_reported(bundle):
    note = " ".join(f"Sentence number {i} of a long history." for i in range(80))
    [p] = Predictor(bundle).predict(
        [{"patient_id": "X-2", "age": 50, "sex": "female", "clinical_note": note}]
    )
    assert any(w.startswith("clinical_note truncated") for w in p["warnings"])
    assert "clinical_note" in p["modalities_used"]


def test_bad_record_names_the_field_and_hides_the_text(bundle):
    with pytest.raises(CohortError) as err:
        Predictor(bundle).predict(
            [{"patient_id": "X-3", "age": 7, "sex": "female", "clinical_note": "SENTINEL-PHI"}]
        )
    assert "age" in str(err.value) and "SENTINEL-PHI" not in str(err.value)


def test_predictor_never_imports_torch(bundle):
    code = (
        "import sys; from spinecast.serving.predictor import Predictor; "
        f"p = Predictor({str(bundle)!r}).predict("
        "[{'patient_id': 'a', 'age': 40, 'sex': 'male'}]); "
        "assert p[0]['outcomes']; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'lightning', 'transformers')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_card_is_typed_keeps_keys_it_does_not_know_and_refuses_a_wrong_one(bundle, tmp_path):
    from spinecast.serving import bundle as bundle_format

    copy = shutil.copytree(bundle, tmp_path / "card")
    card = bundle_format.read(copy)
    card.serve_note = "added by a later release"  # an unknown key round-trips
    bundle_format.write(copy, card)
    assert bundle_format.read(copy).serve_note == "added by a later release"
    assert Predictor(copy).version == card.version
    raw = json.loads((copy / "card.json").read_text())
    raw["serve"] = "fp16"  # a variant the card does not list
    (copy / "card.json").write_text(json.dumps(raw))
    bundle_format.write(copy, bundle_format.Card.model_construct(**raw))  # checksums match again
    with pytest.raises(BundleError, match="card.json is not a valid card.*fp16"):
        bundle_format.read(copy)


@pytest.mark.parametrize("damage", ["tamper", "truncate", "delete", "no_sums"])
def test_damaged_bundle_is_refused(bundle, tmp_path, damage):
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    model = copy / "model.onnx"
    if damage == "tamper":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:1000])
    elif damage == "delete":
        (copy / "features.json").unlink()
    else:
        (copy / "SHA256SUMS").unlink()
    with pytest.raises(BundleError, match="model.onnx|features.json|SHA256SUMS"):
        Predictor(copy)


def test_optimized_and_quantized_variants_run_and_are_gated(checkpoint, tmp_path, records, caplog):
    out = tmp_path / "int8"
    card = export(
        checkpoint, out, optimize_graph=True, quantize_int8=True, eval_rows=120, max_auroc_drop=1.0
    )
    assert not [
        r for r in caplog.records if r.name == "root"
    ]  # the quantizer's expected warnings are hushed
    # every INT8 variant was scored and timed; the fastest is served, the others' files deleted
    tried = card.int8_candidates
    assert set(tried) == {"int8", "int8_static", "int8_text"}
    faster = min(tried, key=lambda k: tried[k]["cold_p50_ms"])
    assert card.serve == faster and [k for k in tried if tried[k]["kept"]] == [faster]
    assert set(card.variants) == {"fp32", faster} and card.variants["fp32"].cold_p50_ms > 0
    assert card.onnx["graph_fusion"]
    assert card.parity["passed"]  # the fused fp32 graph still matches PyTorch
    # One copy of the text encoder, in the sentence graph only: no weight is stored twice
    # (small constants may be).
    tensors = collections.Counter(
        onnx.numpy_helper.to_array(t).tobytes()
        for name in ("model.onnx", "sentences.onnx")
        for t in onnx.load(out / name).graph.initializer
    )
    assert not [t for t, copies in tensors.items() if copies > 1 and len(t) > 1024]
    kept = {
        "int8": {"model.int8.onnx", "sentences.int8.onnx"},
        "int8_static": {"model.int8.static.onnx", "sentences.int8.static.onnx"},
        "int8_text": {"sentences.int8.onnx"},  # before the fp32 patient graph, model.onnx
    }
    assert {f.name for f in out.glob("*.int8*.onnx")} == kept[faster]
    assert (out / "model.onnx").is_file() and (out / "sentences.onnx").is_file()
    served = Predictor(out).predict(
        records.drop(columns=["satisfied", "odi_12m"]).to_dict("records")
    )
    assert Predictor(out).variant == faster and all(
        0 <= o["p_satisfied"] <= 1 for p in served for o in p["outcomes"]
    )
    assert all(abs(t["auroc_drop"]) < 0.1 for t in tried.values())

    strict = tmp_path / "strict"
    with pytest.raises(ExportError, match="refused the INT8 models.*int8_static: validation AUROC"):
        export(checkpoint, strict, quantize_int8=True, eval_rows=120, max_auroc_drop=-1.0)
    assert Predictor(strict).variant == "fp32" and not list(strict.glob("*.int8*.onnx"))


@pytest.mark.parametrize("suffix", ["parquet", "csv", "jsonl"])
def test_batch_scoring_streams_a_cohort_in_chunks_and_keeps_order(
    bundle, small_cohort, tmp_path, suffix
):
    frame = pd.read_parquet(small_cohort / "cohort.parquet").iloc[:45]
    frame["mri_image"] = frame["mri_image"].map(
        lambda p: str(small_cohort / p) if isinstance(p, str) else None
    )
    src = tmp_path / f"cohort.{suffix}"
    {
        "parquet": lambda: frame.to_parquet(src),
        "csv": lambda: frame.to_csv(src, index=False),
        "jsonl": lambda: frame.to_json(src, orient="records", lines=True),
    }[suffix]()
    dst = tmp_path / "out" / "predictions.parquet"
    assert (
        main(
            [
                "predict",
                "--model",
                str(bundle),
                "--in",
                str(src),
                "--out",
                str(dst),
                "--chunk-rows",
                "10",
            ]
        )
        == 0
    )
    scored = pd.read_parquet(dst)
    assert scored["patient_id"].tolist() == frame["patient_id"].tolist()
    whole = Predictor(bundle).predict(
        load_cohort(small_cohort / "cohort.parquet").iloc[:45].to_dict("records")
    )
    expected = [
        next(o["p_satisfied"] for o in p["outcomes"] if o["treatment"] == "fusion") for p in whole
    ]
    np.testing.assert_allclose(scored["p_satisfied_fusion"], expected, atol=1e-5)
    assert not dst.with_name(dst.name + ".partial").exists()


def test_batch_scoring_reports_bad_rows_by_their_file_row(bundle, small_cohort, tmp_path, capsys):
    frame = pd.read_parquet(small_cohort / "cohort.parquet").iloc[:30].drop(columns=["mri_image"])
    frame.loc[frame.index[23], "age"] = 200
    src = tmp_path / "bad.parquet"
    frame.to_parquet(src)
    dst = tmp_path / "pred.parquet"
    assert (
        main(
            [
                "predict",
                "--model",
                str(bundle),
                "--in",
                str(src),
                "--out",
                str(dst),
                "--chunk-rows",
                "10",
            ]
        )
        == 1
    )
    assert "bad.parquet:24:age" in capsys.readouterr().err
    assert not dst.exists()


def test_export_without_the_training_cohort_asks_for_data(checkpoint, tmp_path, small_cohort):
    moved = tmp_path / "moved.ckpt"
    import torch

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["datamodule_hyper_parameters"]["train_path"] = str(tmp_path / "gone.parquet")
    torch.save(saved, moved)
    with pytest.raises(ExportError, match="--data"):
        export(moved, tmp_path / "b")
    card = export(moved, tmp_path / "b", data=small_cohort / "cohort.parquet", eval_rows=80)
    assert card.parity["passed"] and card.variants["fp32"].val_rows == 80


def test_records_already_checked_by_the_api_schema_predict_the_same(bundle, records):
    """The service's model worker skips the second contract check: same answers either way."""
    from spinecast.serving.schemas import Patient

    rows = records.drop(columns=["satisfied", "odi_12m", "mri_image"]).to_dict("records")
    api = [
        Patient.model_validate({k: v for k, v in r.items() if not pd.isna(v)}).model_dump()
        for r in rows
    ]
    predictor = Predictor(bundle)
    assert predictor.predict(api, validated=True) == predictor.predict(api)


def test_a_batch_of_one_runs_on_a_one_thread_copy_of_the_graph_with_the_same_answers(
    bundle, records
):
    rows = records.drop(columns=["satisfied", "odi_12m", "mri_image"]).to_dict("records")
    predictor = Predictor(bundle, threads=2)
    assert predictor.single is not predictor.session
    assert predictor.single.get_session_options().intra_op_num_threads == 1
    together = predictor.predict(rows)
    alone = [predictor.predict([row])[0] for row in rows]
    for one, many in zip(alone, together, strict=True):
        assert one["recommended_treatment"] == many["recommended_treatment"]
        for a, b in zip(one["outcomes"], many["outcomes"], strict=True):
            assert a["treatment"] == b["treatment"]
            assert abs(a["p_satisfied"] - b["p_satisfied"]) <= 1e-5


def _with_cohort(checkpoint, tmp_path, frame) -> Path:
    """A copy of the checkpoint whose recorded training file is `frame`."""
    import torch

    (tmp_path / "cohort.parquet").unlink(missing_ok=True)
    frame.to_parquet(tmp_path / "cohort.parquet")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["datamodule_hyper_parameters"]["train_path"] = str(tmp_path / "cohort.parquet")
    torch.save(saved, tmp_path / "moved.ckpt")
    return tmp_path / "moved.ckpt"


def test_the_held_out_split_is_recorded_by_patient_and_survives_reordering_and_appending(
    checkpoint, tmp_path, small_cohort
):
    import torch
    from spinecast.training.data import recorded_split
    from spinecast.training.export import held_out

    record = recorded_split(torch.load(checkpoint, map_location="cpu", weights_only=False))
    original = pd.read_parquet(small_cohort / "cohort.parquet").drop(columns=["mri_image"])
    assert record["rows"] == len(original) and len(record["val"]) > 0
    assert set(record["train"]).isdisjoint(record["val"])
    val, _ = held_out(checkpoint, None)
    assert val["patient_id"].tolist() == record["val"]
    appended = original.assign(patient_id=original["patient_id"] + "-new")
    changed = pd.concat(
        [original.sample(frac=1.0, random_state=3), appended]
    )  # reordered, then rows appended
    val, summary = held_out(_with_cohort(checkpoint, tmp_path, changed), None)
    assert val["patient_id"].tolist() == record["val"] and summary["patients"] == len(
        record["train"]
    )
    lost = original[original["patient_id"] != record["val"][0]]  # one validation patient gone
    with pytest.raises(ExportError, match="no longer holds 1 of the"):
        held_out(_with_cohort(checkpoint, tmp_path, lost), None)


def test_a_graph_that_differs_from_pytorch_is_refused_and_the_card_says_so(
    checkpoint, tmp_path, monkeypatch
):
    import spinecast.training.export as export_module

    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", -1.0)  # no graph can pass
    with pytest.raises(ExportError, match="ONNX Runtime differs from PyTorch by .* must not be"):
        export(checkpoint, tmp_path / "b", eval_rows=80)
    card = json.loads((tmp_path / "b" / "card.json").read_text())
    assert card["parity"]["passed"] is False and card["parity"]["records"] > 0
