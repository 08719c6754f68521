"""Sentence embeddings for the patient graph: each distinct sentence encoded once, by length group,
and kept in a bounded cache.

A sentence's embedding depends on that sentence alone (the encoder reads sentence by sentence),
and clinical text repeats itself: templated phrases, copied-forward notes, the same report read for
several visits, the same patient scored again. `SentenceEmbedder` looks every sentence of a batch
up in the `SentenceCache` (keyed by the encoder and a hash of the sentence's exact token ids),
runs the sentence graph only on the ones it has not seen (sorted by length; the graph itself drops
the padding), and returns the (B, S, H) embeddings the patient graph takes.

The cache holds embeddings (float32 vectors) under 24-byte keys (8 bytes of the encoder's hash,
16 of the token ids' BLAKE2b hash), never text nor token ids. `max_bytes=0` turns it
off; see SECURITY.md. `SentenceStore` keeps the same on disk (SQLite) for `spinecast predict
--sentence-cache`, so that a cohort scored again, in another run, encodes nothing it has seen.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort

GROUP_SENTENCES = 256  # sentences per sentence-graph run at most (bounds its memory)
ENTRY_OVERHEAD = 160  # bytes a cache entry costs beyond its key and vector (dict, objects)


class BlobStore:
    """Values by key in one table of a SQLite file: key -> bytes. Safe across threads (one
    connection, a lock); a later run finds what an earlier one stored."""

    def __init__(self, path: str | Path, table: str):
        self.path, self.table = Path(path), table
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key BLOB PRIMARY KEY, value BLOB)")
        self._lock = threading.Lock()

    def get(self, keys: list[bytes]) -> dict[bytes, bytes]:
        found = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite's bound on parameters
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT key, value FROM {self.table} WHERE key IN ({marks})", part
                )
                found |= dict(rows)
        return found

    def put(self, items: dict[bytes, bytes]) -> None:
        with self._lock, self._db:
            self._db.executemany(f"INSERT OR IGNORE INTO {self.table} VALUES (?, ?)", items.items())


class SentenceStore(BlobStore):
    """Sentence embeddings on disk: key -> float32 vector."""

    def __init__(self, path: str | Path):
        super().__init__(path, "embedding")

    def get(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        return {k: np.frombuffer(v, dtype=np.float32) for k, v in super().get(keys).items()}

    def put(self, items: dict[bytes, np.ndarray]) -> None:
        super().put({k: v.astype(np.float32).tobytes() for k, v in items.items()})


class SentenceCache:
    """A thread-safe LRU map of sentence keys to embeddings, capped in bytes (keys, vectors and
    their bookkeeping); counts its hits and misses. Behind it, optionally, a `SentenceStore`."""

    def __init__(self, max_bytes: int, store: SentenceStore | None = None):
        self.max_bytes, self.store = max_bytes, store
        self.bytes = 0
        self.hits = self.misses = 0
        self._taken = (0, 0)
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (the counts stay)."""
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def take_counts(self) -> tuple[int, int]:
        """Hits and misses since the last call (for a metrics counter), read and reset at once."""
        with self._lock:
            counts = (self.hits - self._taken[0], self.misses - self._taken[1])
            self._taken = (self.hits, self.misses)
        return counts

    def get(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        with self._lock:
            found = {k: self._entries[k] for k in keys if k in self._entries}
            for k in found:
                self._entries.move_to_end(k)
        if self.store is not None and len(found) < len(keys):
            stored = self.store.get([k for k in keys if k not in found])
            self._keep(stored)
            found |= stored
        with self._lock:
            self.hits += len(found)
            self.misses += len(keys) - len(found)
        return found

    def put(self, items: dict[bytes, np.ndarray]) -> None:
        if self.store is not None:
            self.store.put(items)
        self._keep(items)

    def _keep(self, items: dict[bytes, np.ndarray]) -> None:
        if self.max_bytes <= 0:
            return
        with self._lock:
            for key, vector in items.items():
                if key in self._entries:
                    continue
                self._entries[key] = vector
                self.bytes += _cost(key, vector)
            while self.bytes > self.max_bytes and self._entries:
                key, vector = self._entries.popitem(last=False)
                self.bytes -= _cost(key, vector)


def _cost(key: bytes, vector: np.ndarray) -> int:
    return len(key) + vector.nbytes + ENTRY_OVERHEAD


class SentenceEmbedder:
    """One sentence graph (an ONNX Runtime session) behind the cache."""

    def __init__(self, session: ort.InferenceSession, graph: Path, cache: SentenceCache | None):
        self.session, self.cache = session, cache
        # the encoder's identity in the cache's keys: two graphs never share an entry
        with graph.open("rb") as f:
            self.prefix = hashlib.file_digest(f, "sha256").digest()[:8]
        self.width = int(session.get_outputs()[0].shape[-1])

    def __call__(self, ids: np.ndarray, mask: np.ndarray, run_options=None) -> np.ndarray:
        """(B, S, L) token ids and mask (each sentence's mask a prefix of its row) -> (B, S, H)
        float32 embeddings, zeros where a sentence slot is empty."""
        [out] = self.many([(ids, mask)], run_options)
        return out

    def many(self, texts: list[tuple[np.ndarray, np.ndarray]], run_options=None) -> list:
        """`__call__` for several texts at once (the note and the report of a shared encoder):
        one cache lookup, and their unseen sentences in one run."""
        flat = []
        for ids, mask in texts:
            b, s, length = ids.shape
            flat.append((ids.reshape(b * s, length), mask.reshape(b * s, length).sum(axis=1)))
        tokens = {}  # key -> the sentence's token ids
        keys = []  # per text, per non-empty row: (row, key)
        for ids, lengths in flat:
            keys.append([])
            for r in np.flatnonzero(lengths):
                row = ids[r, : lengths[r]].astype(np.int32)
                key = self.prefix + hashlib.blake2b(row.tobytes(), digest_size=16).digest()
                tokens.setdefault(key, row)
                keys[-1].append((r, key))
        found = self.cache.get(list(tokens)) if self.cache is not None else {}
        todo = {k: v for k, v in tokens.items() if k not in found}
        if todo:
            computed = self._encode(todo, run_options)
            if self.cache is not None:
                self.cache.put(computed)
            found |= computed
        out = []
        for (ids, mask), rows in zip(texts, keys):
            emb = np.zeros((ids.shape[0] * ids.shape[1], self.width), dtype=np.float32)
            for r, key in rows:
                emb[r] = found[key]
            out.append(emb.reshape(*ids.shape[:2], self.width))
        return out

    def _encode(self, todo: dict[bytes, np.ndarray], run_options) -> dict[bytes, np.ndarray]:
        """Sentences by length, in runs of at most GROUP_SENTENCES."""
        keys = sorted(todo, key=lambda k: len(todo[k]))
        out = {}
        for start in range(0, len(keys), GROUP_SENTENCES):
            group = keys[start : start + GROUP_SENTENCES]
            width = len(todo[group[-1]])
            ids = np.zeros((len(group), width), dtype=np.int64)
            mask = np.zeros((len(group), width), dtype=np.int64)
            for row, key in enumerate(group):
                ids[row, : len(todo[key])], mask[row, : len(todo[key])] = todo[key], 1
            [emb] = self.session.run(None, {"ids": ids, "mask": mask}, run_options)
            out |= {key: emb[row] for row, key in enumerate(group)}
        return out
