"""`spinecast predict --engine ray`: the same predictor on Ray Data, in Ray's local mode."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from spinecast.serving.scoring import SCHEMA

from spinecast.cli import main

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """A small Ray on this machine: 2 CPUs, a 100 MiB object store, no dashboard, quiet, offline."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray would report usage to its servers
    ray.init(
        num_cpus=2,
        object_store_memory=100 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture
def cohort(small_cohort, tmp_path):
    """40 patients in a folder of their own, MRI images by paths relative to it, as `synth`
    writes."""
    os.symlink(small_cohort / "images", tmp_path / "images")
    return pd.read_parquet(small_cohort / "cohort.parquet").iloc[:40]


@pytest.mark.slow  # Ray's start and its actors: seconds each
def test_ray_engine_scores_as_the_local_engine_does(local_ray, bundle, cohort, tmp_path, capsys):
    cohort.to_parquet(tmp_path / "cohort.parquet")
    cohort.iloc[:20].to_csv(tmp_path / "cohort.csv", index=False)
    cohort.iloc[20:].to_json(tmp_path / "cohort.jsonl", orient="records", lines=True)
    local = tmp_path / "local.parquet"
    assert (
        main(
            [
                "predict",
                "--model",
                str(bundle),
                "--in",
                str(tmp_path / "cohort.parquet"),
                "--out",
                str(local),
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert (
        stats["rows"] == 40 and 0 < stats["seconds"] < 60
    )  # the local timer once restarted per chunk
    expected = pd.read_parquet(local).set_index("patient_id")
    for name, rows in (
        ("cohort.parquet", slice(0, 40)),
        ("cohort.csv", slice(0, 20)),
        ("cohort.jsonl", slice(20, 40)),
    ):
        out = tmp_path / f"ray_{name.replace('.', '_')}"
        assert (
            main(
                [
                    "predict",
                    "--model",
                    str(bundle),
                    "--in",
                    str(tmp_path / name),
                    "--out",
                    str(out),
                    "--engine",
                    "ray",
                    "--chunk-rows",
                    "8",
                ]
            )
            == 0
        )
        assert pq.read_table(out).schema.equals(SCHEMA, check_metadata=False)
        scored = pd.read_parquet(out).set_index("patient_id")  # every file of the folder
        assert sorted(scored.index) == sorted(cohort["patient_id"].iloc[rows])
        want = expected.loc[scored.index]
        probabilities = [c for c in SCHEMA.names if c.startswith("p_")]
        np.testing.assert_allclose(scored[probabilities], want[probabilities], atol=1e-6, rtol=0)
        odi = [c for c in SCHEMA.names if c.startswith("odi_12m_")]
        np.testing.assert_allclose(
            scored[odi], want[odi], atol=1e-4, rtol=0
        )  # points on 0-100, float32
        for column in ("model_version", "recommended_treatment", "planned_treatment"):
            assert scored[column].tolist() == want[column].tolist(), column
        for column in ("modalities_used", "warnings"):
            assert scored[column].map(list).tolist() == want[column].map(list).tolist(), column
        assert not out.with_name(out.name + ".partial").exists()


@pytest.mark.slow
def test_ray_engine_names_a_bad_field_and_hides_the_text(
    local_ray, bundle, cohort, tmp_path, capsys
):
    """The last Ray test: Ray Data frees a failed run's actors lazily
    (spinecast.serving.distributed)."""
    bad = cohort.iloc[:24].copy()
    bad.loc[bad.index[20], "patient_id"] = bad["patient_id"].iloc[
        2
    ]  # in another batch: seen after scoring
    bad.to_parquet(tmp_path / "bad.parquet")
    out = tmp_path / "out"
    args = [
        "predict",
        "--model",
        str(bundle),
        "--in",
        str(tmp_path / "bad.parquet"),
        "--out",
        str(out),
        "--engine",
        "ray",
        "--chunk-rows",
        "8",
    ]
    assert main(args) == 1
    assert (
        f"patient_id={bad['patient_id'].iloc[2]}:patient_id: must be unique in the cohort"
        in capsys.readouterr().err
    )
    assert not out.exists() and not (tmp_path / "out.partial").exists()

    bad.loc[bad.index[13], ["age", "clinical_note"]] = [200, "SENTINEL-PHI note text"]
    bad.to_parquet(tmp_path / "bad.parquet")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (
        f"bad.parquet:patient_id={bad['patient_id'].iloc[13]}:age: "
        "must be an integer in [18, 110] (got 200)" in err
    )
    assert "SENTINEL-PHI" not in err
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_serving_imports_and_the_local_engine_run_without_ray(bundle, cohort, tmp_path):
    cohort.iloc[:6].to_parquet(tmp_path / "cohort.parquet")
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if the `ray` extra were not installed
        "from spinecast.serving import batch, predictor, schemas\n"
        "try:\n"
        f"    batch.main(['--model', {str(bundle)!r}, '--in', 'x.parquet', '--out', 'y', "
        "'--engine', 'ray'])\n"
        "except ImportError as err:\n"
        "    print(err)\n"
        f"code = batch.main(['--model', {str(bundle)!r}, '--in', 'cohort.parquet', "
        "'--out', 'local.parquet'])\n"
        "print('local engine:', code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pip install 'spinecast[ray]'" in done.stdout
    assert "local engine: 0" in done.stdout, done.stdout + done.stderr
    scored = pd.read_parquet(tmp_path / "local.parquet")
    assert scored["patient_id"].tolist() == cohort["patient_id"].iloc[:6].tolist()
