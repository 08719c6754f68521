"""`MODEL_CARD.md`: the TRIPOD+AI report of an evaluated model (Collins et al., BMJ 2024).

    from spinecast.training.model_card import write_model_card
    write_model_card("artifacts/eval", test_df, outcomes, metrics, sources=data_sources(ckpt, data),
                     model=model_summary(module, ckpt, rule), n_boot=1000, seed=0)

`spinecast evaluate` calls it after the report. Every reported metric carries a percentile
bootstrap 95 % interval over patients (`spinecast.metrics.bootstrap_ci`: one fixed seed, the same
resamples for every metric). The outcome is observed only under the treatment each patient got, so
every label metric here scores the predicted P(satisfied) of that treatment (the observed arm). The
card (Markdown and `model_card.json`) holds aggregates and contract category names only, never
note or report text or a patient id; the figures are `decision_curve.png` and the report's
`calibration.png`.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from spinecast.datasets.schema import COLUMNS, TREATMENTS
from spinecast.serving.bundle import MODEL_CARD

from spinecast.metrics import (
    DECISION_THRESHOLDS,
    N_BOOT,
    binary_metrics_ci,
    bootstrap_ci,
    net_benefit,
    treat_all_net_benefit,
    weighted_auroc,
    weighted_net_benefit,
)

from .baselines import treatment_index
from .card_markdown import render_model_card
from .plots import plot_decision_curve
from .report import subgroup_masks

KEY_THRESHOLDS = (0.5, 0.6, 0.7, 0.8)  # P(satisfied) at which a clinician might offer the treatment
SYNTHETIC_GENERATOR = "spinecast.datasets.synth"  # the `generator` of a synthetic data card
CARD_JSON = "model_card.json"


def mean_gap(p: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean predicted minus observed rate of each weight row (calibration in the large)."""
    return weights @ (p - y) / weights.sum(1)


def card_metrics(
    test: pd.DataFrame, outcomes: dict[str, np.ndarray], n_boot: int = N_BOOT, seed: int = 0
) -> dict:
    """Overall metrics, subgroups and the decision curve on the observed arm, each with its
    bootstrap 95 % interval; participants and missing data of the cohort."""
    observed = treatment_index(test, "test")
    labeled = test["satisfied"].notna().to_numpy()
    p_all = outcomes["p_satisfied"][np.arange(len(test)), observed]
    y_all = test["satisfied"].astype("boolean").fillna(False).to_numpy(dtype=float)
    p, y = p_all[labeled], y_all[labeled]
    ci = partial(bootstrap_ci, n_boot=n_boot, seed=seed)
    subgroups = []
    for field, value, member in subgroup_masks(test):
        keep = member & labeled
        subgroups.append(
            {
                "field": field,
                "value": value,
                "n": int(keep.sum()),
                "events": int(y_all[keep].sum()),
                "auroc": ci(weighted_auroc, p_all[keep], y_all[keep]),
                "mean_gap": ci(mean_gap, p_all[keep], y_all[keep]),
            }
        )
    return {
        "bootstrap": {"resamples": n_boot, "seed": seed, "level": 0.95, "unit": "patient"},
        "overall": binary_metrics_ci(p, y, n_boot, seed) | {"mean_gap": ci(mean_gap, p, y)},
        "subgroups": subgroups,
        "decision_curve": decision_curve(p, y, n_boot, seed) if len(y) else None,
        "participants": participants(test, labeled, y_all),
        "missing": {
            c.name: float(test[c.name].isna().mean()) if c.name in test.columns else 1.0
            for c in COLUMNS
        },
    }


def decision_curve(p: np.ndarray, y: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Net benefit of the model, of acting on all and on none across `DECISION_THRESHOLDS`, and
    at `KEY_THRESHOLDS` with bootstrap intervals (act = offer the treatment the patient got)."""
    thresholds = DECISION_THRESHOLDS
    at = []
    for t in KEY_THRESHOLDS:
        nb = partial(weighted_net_benefit, threshold=t)
        at.append(
            {
                "threshold": t,
                "model": bootstrap_ci(nb, p, y, n_boot=n_boot, seed=seed),
                "treat_all": bootstrap_ci(nb, np.ones_like(p), y, n_boot=n_boot, seed=seed),
                "acted_on": float(np.mean(p >= t)),
            }
        )
    return {
        "thresholds": thresholds.tolist(),
        "model": net_benefit(p, y, thresholds).tolist(),
        "treat_all": treat_all_net_benefit(y, thresholds).tolist(),
        "treat_none": [0.0] * len(thresholds),
        "key": at,
    }


def participants(test: pd.DataFrame, labeled: np.ndarray, y: np.ndarray) -> dict:
    """Aggregates of who is in the cohort: age, sex, diagnosis and, per treatment given, how many
    patients, labeled and satisfied."""
    age = test["age"].astype(float)
    arms = {
        t: {
            "patients": int(given.sum()),
            "labeled": int((given & labeled).sum()),
            "satisfied": int(y[given & labeled].sum()),
        }
        for t in TREATMENTS
        for given in [(test["treatment"] == t).to_numpy()]
    }
    diagnosis = test["diagnosis"] if "diagnosis" in test.columns else pd.Series(dtype=object)
    return {
        "patients": len(test),
        "labeled": int(labeled.sum()),
        "satisfied": int(y[labeled].sum()),
        "age": {
            k: float(age.quantile(q)) for k, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75))
        },
        "female": float((test["sex"] == "female").mean()),
        "diagnosis": {
            str(k): float(v) for k, v in diagnosis.value_counts(normalize=True).sort_index().items()
        },
        "treatments": arms,
    }


def _cohort_source(path: Path | str | None) -> dict | None:
    """A cohort file's name and the data card beside it (a synthetic cohort's `card.json`)."""
    if path is None:
        return None
    path = Path(path)
    card = path.parent / "card.json"
    data_card = json.loads(card.read_text()) if card.is_file() else None
    return {
        "file": path.name,
        "data_card": data_card,
        "synthetic": bool(data_card) and data_card.get("generator") == SYNTHETIC_GENERATOR,
    }


def data_sources(ckpt: Path, data: Path) -> dict:
    """The evaluation cohort and the development cohort the checkpoint records (with its split
    sizes by patient), each with its data card when one lies beside it."""
    import torch

    from .data import recorded_split

    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    hp = saved.get("datamodule_hyper_parameters") or {}
    development = _cohort_source(hp.get("train_path"))
    record = recorded_split(saved)
    if development is not None:
        development["split"] = {
            k: len(record.get(k, [])) if record else None for k in ("train", "val", "test")
        }
        development["split_seed"] = hp.get("seed")
    return {"evaluation": _cohort_source(data), "development": development}


def model_summary(module, ckpt: Path, rule) -> dict:
    """What the network is (TRIPOD+AI item 12 and 22), from the checkpoint's own config."""
    c = module.net.config
    return {
        "checkpoint": Path(ckpt).name,
        "text_encoder": Path(c.text.pretrained).name,
        "trainable_text_layers": c.text.trainable_layers,
        "max_sentences": c.text.max_sentences,
        "max_tokens": c.text.max_tokens,
        "tabular": c.tabular.kind,
        "image": c.image.backbone,
        "fusion": c.fusion,
        "dim": c.dim,
        "members": c.members,
        "effect_penalty": module.hparams.get("effect_penalty"),
        "decision": rule.to_dict(),
    }


def write_model_card(
    out_dir,
    test: pd.DataFrame,
    outcomes: dict[str, np.ndarray],
    metrics: dict,
    *,
    sources: dict | None = None,
    model: dict | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Path:
    """Write MODEL_CARD.md, model_card.json and decision_curve.png into `out_dir`; return the
    card's path. `metrics` is `evaluate_predictions`'s (the policy values, truncation rates)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = card_metrics(test, outcomes, n_boot, seed)
    card["sources"] = sources or {"evaluation": None, "development": None}
    card["model"] = model
    card["policy"] = {
        "value": metrics.get("test/dr_value_model"),
        "low": metrics.get("test/dr_value_model_low"),
        "high": metrics.get("test/dr_value_model_high"),
        "unsupported": metrics.get("recommendation", {}).get("unsupported", []),
    }
    card["text_truncated"] = metrics.get("text_truncated")
    if card["decision_curve"] is not None:
        plot_decision_curve(out / "decision_curve.png", card["decision_curve"])
    (out / CARD_JSON).write_text(json.dumps(card, indent=1) + "\n")
    path = out / MODEL_CARD
    path.write_text(render_model_card(card))
    return path
