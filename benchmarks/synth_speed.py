"""Time `spinecast synth` on the cohort size the foundation issue names (10,000 patients).

    .venv/bin/python benchmarks/synth_speed.py [--n 10000] [--repeats 1]

Writes benchmarks/results/synth.json. Target: under 60 s on 2 cores, images included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from spinecast.datasets.synth import generate

RESULTS = Path(__file__).parent / "results" / "synth.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    seconds = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            card = generate(args.n, seed=0, out=tmp)
            seconds.append(time.perf_counter() - start)
            images = len(list(Path(tmp, "images").glob("*.png")))
    result = {
        "benchmark": "spinecast synth",
        "patients": args.n,
        "images": images,
        "seconds": [round(s, 2) for s in seconds],
        "best_seconds": round(min(seconds), 2),
        "target_seconds": 60,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "satisfied_rate": card["satisfied_rate"],
        "bayes_auroc": card["bayes_auroc"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
