"""The sentence-embedding cache: bounded, LRU, thread-safe, counted; the predictor's warm path
gives the cold path's numbers; `spinecast predict --sentence-cache` encodes nothing it has seen.
The image graph runs only for the records that have an image."""

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from spinecast.datasets.io import load_cohort
from spinecast.serving import bundle as bundle_format
from spinecast.serving.embeddings import ENTRY_OVERHEAD, SentenceCache, SentenceStore
from spinecast.serving.predictor import Predictor
from spinecast.serving.scoring import PredictionStore
from spinecast.training.quantize import _Recording

from spinecast.cli import main

WIDTH = 8


def vector(i: int) -> np.ndarray:
    return np.full(WIDTH, i, dtype=np.float32)


def cost(key: bytes) -> int:
    return len(key) + WIDTH * 4 + ENTRY_OVERHEAD


def test_the_cache_stays_under_its_cap_and_evicts_the_least_recently_used():
    keys = [f"k{i:03d}".encode() for i in range(10)]
    cache = SentenceCache(max_bytes=3 * cost(keys[0]))
    cache.put({k: vector(i) for i, k in enumerate(keys[:3])})
    assert set(cache.get([keys[0]])) == {keys[0]}  # k000 is now the most recent
    cache.put({keys[3]: vector(3)})
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert set(cache.get(keys[:4])) == {keys[0], keys[2], keys[3]}  # k001 went first
    assert (cache.hits, cache.misses) == (4, 1)
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0 and cache.get([keys[0]]) == {}
    off = SentenceCache(max_bytes=0)
    off.put({keys[0]: vector(0)})
    assert len(off) == 0 and off.get([keys[0]]) == {}


def test_the_cache_is_consistent_under_threads():
    cache = SentenceCache(max_bytes=200 * cost(b"t0-000"))
    errors = []

    def work(t: int):
        try:
            for i in range(300):
                key = f"t{t}-{i:03d}".encode()
                cache.put({key: vector(i)})
                found = cache.get([key, f"t{t}-{i // 2:03d}".encode()])
                assert all(np.array_equal(v, vector(int(k[-3:]))) for k, v in found.items())
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert cache.bytes == sum(cost(k) for k in cache._entries) <= cache.max_bytes
    assert cache.hits + cache.misses == 8 * 300 * 2


def test_a_store_keeps_embeddings_for_the_next_run(tmp_path):
    first = SentenceCache(1 << 20, SentenceStore(tmp_path / "cache.sqlite"))
    first.put({b"a": vector(1), b"b": vector(2)})
    later = SentenceCache(1 << 20, SentenceStore(tmp_path / "cache.sqlite"))
    found = later.get([b"a", b"b", b"c"])
    assert np.array_equal(found[b"b"], vector(2)) and set(found) == {b"a", b"b"}
    assert (later.hits, later.misses) == (2, 1)


@pytest.fixture(scope="module")
def records(small_cohort) -> list[dict]:
    frame = pd.read_parquet(small_cohort / "cohort.parquet").iloc[:24]
    frame = frame.drop(columns=["satisfied", "odi_12m", "mri_image"])
    return frame.to_dict("records")


def test_warm_predictions_equal_cold_ones_and_encode_nothing(bundle, records):
    predictor = Predictor(bundle)
    cold = predictor.predict(records)
    misses, hits = predictor.cache.misses, predictor.cache.hits
    assert misses > 0 and len(predictor.cache) > 0
    warm = predictor.predict(records)
    assert predictor.cache.misses == misses  # every sentence found: the encoder did not run
    assert predictor.cache.hits - hits == misses + hits  # every lookup of the first pass, found
    for a, b in zip(cold, warm):
        for x, y in zip(a["outcomes"], b["outcomes"]):
            assert x["p_satisfied"] == pytest.approx(y["p_satisfied"], abs=1e-6)
    uncached = Predictor(bundle, cache_mib=0)
    again = uncached.predict(records)
    assert len(uncached.cache) == 0 and uncached.cache.misses == misses + hits  # all encoded
    assert [p["recommended_treatment"] for p in again] == [p["recommended_treatment"] for p in cold]


def test_the_image_graph_runs_only_for_records_with_an_image_and_once_per_explanation(
    bundle, small_cohort
):
    frame = load_cohort(small_cohort / "cohort.parquet").iloc[:24]
    rows = frame.drop(columns=["satisfied", "odi_12m"]).to_dict("records")
    for row in rows:  # the API carries the image itself; the predictor takes its bytes
        path = row["mri_image"]
        row["mri_image"] = Path(path).read_bytes() if isinstance(path, str) else None
    imaged = [row["mri_image"] is not None for row in rows]
    assert 0 < sum(imaged) < len(rows)
    predictor = Predictor(bundle)
    predictor.image = recording = _Recording(predictor.image)  # the real session, its feeds kept

    def rows_run() -> list[int]:
        return [len(feed["image"]) for feed in recording.feeds]

    with_images = predictor.predict(rows)
    assert sum(rows_run()) == sum(imaged)
    recording.feeds.clear()
    without = predictor.predict([row | {"mri_image": None} for row in rows])
    assert rows_run() == []  # no image: the image graph did not run
    for a, b, has_image in zip(with_images, without, imaged, strict=True):
        assert ("mri_image" in a["modalities_used"]) == has_image
        assert "mri_image" not in b["modalities_used"]
        if not has_image:  # the same record: the same answer, the image graph run or not
            assert a["outcomes"] == b["outcomes"]
    explained = predictor.explain(rows[imaged.index(True)])
    assert rows_run() == [1]  # the record's image once, for every occlusion
    assert "mri_image" in explained["explanation"]["modalities"]


def test_predict_again_answers_unchanged_records_from_the_cache_and_rescores_changed_ones(
    bundle, small_cohort, tmp_path, capsys
):
    frame = pd.read_parquet(small_cohort / "cohort.parquet")
    changed = frame.copy()
    changed.loc[3, "clinical_note"] += " Walks the dog daily."  # a new sentence
    changed.loc[5, "age"] += 1
    changed.to_parquet(tmp_path / "changed.parquet")
    for image in frame["mri_image"].dropna().unique():  # the images, found beside the cohort
        (tmp_path / image).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / image).write_bytes((small_cohort / image).read_bytes())
    store = tmp_path / "scored.sqlite"

    def predict(src: Path, name: str, *cache: str) -> tuple[dict, pd.DataFrame]:
        out = tmp_path / f"{name}.parquet"
        args = ["predict", "--model", str(bundle), "--in", str(src), "--out", str(out), *cache]
        assert main(args) == 0
        return json.loads(capsys.readouterr().out), pd.read_parquet(out)

    first, _ = predict(small_cohort / "cohort.parquet", "first", "--cache", str(store))
    # the option's earlier name still works
    second, b = predict(tmp_path / "changed.parquet", "second", "--sentence-cache", str(store))
    _, fresh = predict(tmp_path / "changed.parquet", "fresh")  # no cache at all
    assert first["prediction_cache"] == {"hits": 0, "misses": len(frame)}
    assert second["prediction_cache"] == {"hits": len(frame) - 2, "misses": 2}
    assert 0 < second["sentence_cache"]["misses"] < first["sentence_cache"]["misses"]
    pd.testing.assert_frame_equal(b, fresh, atol=1e-6)  # answers from the file: the model's own
    other = tmp_path / "other_rule"  # the same graphs under another decision rule
    shutil.copytree(bundle, other)
    card = bundle_format.read(other)
    rule = {**card.decision, "margin": 0.2}
    bundle_format.write(other, card.model_copy(update={"decision": rule}))
    row = frame.iloc[1:2]  # a record without an image
    keys = [PredictionStore(store, Predictor(b)).keys(row)[0] for b in (bundle, other)]
    assert None is not keys[0] != keys[1]  # another bundle never shares an answer
