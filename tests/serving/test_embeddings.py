"""The sentence-embedding cache: bounded, LRU, thread-safe, counted; the predictor's warm path
gives the cold path's numbers; `spinecast predict --sentence-cache` encodes nothing it has seen."""

import json
import threading

import numpy as np
import pandas as pd
import pytest
from spinecast.serving.embeddings import ENTRY_OVERHEAD, SentenceCache, SentenceStore
from spinecast.serving.predictor import Predictor

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


def test_predict_with_a_sentence_cache_encodes_nothing_the_second_time(
    bundle, small_cohort, tmp_path, capsys
):
    src, store = small_cohort / "cohort.parquet", tmp_path / "sentences.sqlite"
    runs = []
    for name in ("first", "second"):
        out = tmp_path / f"{name}.parquet"
        args = ["predict", "--model", str(bundle), "--in", str(src), "--out", str(out)]
        assert main([*args, "--sentence-cache", str(store)]) == 0
        runs.append((json.loads(capsys.readouterr().out), pd.read_parquet(out)))
    (first, a), (second, b) = runs
    assert first["sentence_cache"]["misses"] > 0 and second["sentence_cache"]["misses"] == 0
    pd.testing.assert_frame_equal(a, b, atol=1e-6)
