"""The recommendation part of the evaluation report: the model's rule, its argmax and the baselines'
argmax as treatment policies, scored against the truth where it exists and by doubly robust
estimates always (training/counterfactual.py holds the estimators).

    from spinecast.training.recommendation import evaluate_recommendations
    flat, section = evaluate_recommendations(test_df, outcomes, baselines, truth_df, DecisionRule())

`flat` holds `test/<name>` scalars for the model and `test/<baseline>/<name>` for each baseline (the
same names, so every run reads the same way); `section` holds the tables behind the report's
recommendation sections and plots. Aggregates only: no patient id, no note or report text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from spinecast.datasets.decision import DecisionRule, decide
from spinecast.datasets.schema import TREATMENTS

from .baselines import treatment_index
from .counterfactual import (
    aligned_truth,
    as_float,
    by_diagnosis,
    doubly_robust,
    policy_truth,
    truth_metrics,
)

# policy name -> label in the tables; predictive policies first, then the fixed references
LABELS = {
    "model": "model: decision rule",
    "model_argmax": "model: argmax",
    "t_learner": "T-learner (argmax)",
    "s_learner": "S-learner (argmax)",
    "oracle": "oracle: `best_treatment`",
    "observed": "observed practice",
    "always_physical_therapy": "always physical therapy",
}
POLICY_KEYS = (
    "policy_capture",
    "policy_agreement",
    "unnecessary_surgery",
    "missed_benefit",
    "surgery_share",
    "oracle_surgery_share",
)
HEADS_KEYS = ("p_satisfied_heads", "p_satisfied_members")  # the ensemble's samples, either name
CF_KEYS = (
    "cf_rmse",
    *(f"cf_rmse_{t}" for t in TREATMENTS),
    "cf_ece",
    *(f"cf_ece_{t}" for t in TREATMENTS),
)


def evaluate_recommendations(
    test: pd.DataFrame,
    outcomes: dict[str, np.ndarray],
    baselines: dict[str, np.ndarray] | None = None,
    truth: pd.DataFrame | None = None,
    rule: DecisionRule | None = None,
    *,
    seed: int = 0,
    n_boot: int = 1000,
    folds: int = 5,
) -> tuple[dict, dict]:
    """-> (flat `test/...` scalars, the `recommendation` section). `outcomes` may hold
    `p_satisfied_heads` (or `p_satisfied_members`) (N, K, 4) and `propensity` (N, 4) for the rule;
    without them the rule runs on the point estimates with every treatment counted as supported."""
    rule, baselines = rule or DecisionRule(), baselines or {}
    observed = treatment_index(test, "test")
    p = np.asarray(outcomes["p_satisfied"], dtype=float)
    decision = decide(member_samples(outcomes), outcomes.get("propensity"), rule)
    predictions = {"model": p, "model_argmax": p, **baselines}
    policies = {
        "model": decision.recommended,
        "model_argmax": decision.argmax,
        **{k: np.asarray(v).argmax(axis=1) for k, v in baselines.items()},
        "observed": observed,
        "always_physical_therapy": np.zeros(len(test), dtype=np.int64),
    }
    diagnosis = (
        test["diagnosis"].to_numpy(dtype=object)
        if "diagnosis" in test
        else np.full(len(test), None)
    )
    blocked = ~decision.supported[
        np.arange(len(p)), decision.argmax
    ]  # the floor overrode the argmax
    section: dict = {
        "rule": rule.to_dict(),
        "argmax_unsupported_share": as_float(blocked.mean()),
        "unsupported": [t for k, t in enumerate(TREATMENTS) if not (observed == k).any()],
    }
    if truth is not None:
        true_p, best = aligned_truth(test, truth)
        policies["oracle"] = best
        rows = {
            name: truth_metrics(true_p, best, observed, predictions[name], choice)
            if name in predictions
            else policy_truth(true_p, best, observed, choice)
            for name, choice in policies.items()
        }
        section["by_diagnosis"] = by_diagnosis(diagnosis, p, decision.recommended, true_p, best)
    else:
        rows = {name: {} for name in policies}
        section["by_diagnosis"] = by_diagnosis(diagnosis, p, decision.recommended)
    section["dr"] = doubly_robust(
        test, policies, p, folds=folds, seed=seed, n_boot=n_boot, floor=rule.support_floor
    )
    for name, row in rows.items():
        row["mix"] = {t: as_float(np.mean(policies[name] == k)) for k, t in enumerate(TREATMENTS)}
        row |= _dr_row(section["dr"], name)
    section["policies"] = {name: rows[name] for name in LABELS if name in rows}
    return _flat(section["policies"], baselines), section


def member_samples(outcomes: dict[str, np.ndarray]) -> np.ndarray:
    """(N, K, 4) P(satisfied) of the model's K ensemble members; K = 1 (the point estimate) when
    the predictions carry none."""
    for key in HEADS_KEYS:
        if outcomes.get(key) is not None:
            return np.asarray(outcomes[key], dtype=float)
    return np.asarray(outcomes["p_satisfied"], dtype=float)[:, None, :]


def _dr_row(dr: dict, name: str) -> dict:
    if "skipped" in dr:
        return {}
    value = dr["values"][name]
    return {
        "dr_value": value["value"],
        "dr_low": value["low"],
        "dr_high": value["high"],
        "dr_reason": value["reason"],
        "low_support_share": dr["overlap"]["low_support_share"][name],
    }


def _flat(rows: dict, baselines: dict) -> dict:
    """The acceptance keys: `test/<name>` for the model's rule and `test/<baseline>/<name>` for each
    baseline's argmax (for a baseline `policy_capture_argmax` is its `policy_capture`); plus the
    model's argmax (`test/<name>_argmax`) and the reference policies' true and DR values."""
    out = {}
    for name, prefix in [("model", "test/"), *((b, f"test/{b}/") for b in baselines)]:
        row = rows[name]
        out |= {
            prefix + k: row[k] for k in (*POLICY_KEYS, *CF_KEYS, "low_support_share") if k in row
        }
        if "policy_capture" in row:
            out[prefix + "policy_capture_argmax"] = rows[
                "model_argmax" if name == "model" else name
            ]["policy_capture"]
        out |= {prefix + k: v for k, v in _values(row, "model").items()}
    argmax = rows["model_argmax"]
    out |= {
        f"test/{k}_argmax": argmax[k]
        for k in POLICY_KEYS[1:5] + ("low_support_share",)
        if k in argmax
    }
    for name, tag in (
        ("model_argmax", "argmax"),
        ("observed", "observed"),
        ("always_physical_therapy", "always_physical_therapy"),
        ("oracle", "oracle"),
    ):
        out |= {f"test/{k}": v for k, v in _values(rows.get(name, {}), tag).items()}
    return out


def _values(row: dict, tag: str) -> dict:
    """true_value_<tag>, dr_value_<tag>, dr_value_<tag>_low, dr_value_<tag>_high, where known."""
    names = {
        "true_value": f"true_value_{tag}",
        "dr_value": f"dr_value_{tag}",
        "dr_low": f"dr_value_{tag}_low",
        "dr_high": f"dr_value_{tag}_high",
    }
    return {new: row[old] for old, new in names.items() if old in row}


# ----------------------------------------------------------------------------- plots


def write_plots(
    out: Path,
    section: dict,
    test: pd.DataFrame,
    p_satisfied: np.ndarray,
    truth: pd.DataFrame | None,
) -> None:
    """counterfactual.png (with a truth file), mix_by_diagnosis.png, propensity.png (with DR)."""
    if truth is not None:
        plot_counterfactual(out / "counterfactual.png", p_satisfied, aligned_truth(test, truth)[0])
    plot_mix_by_diagnosis(out / "mix_by_diagnosis.png", section["by_diagnosis"])
    if "overlap" in section["dr"]:
        plot_propensity(out / "propensity.png", section["dr"]["overlap"])


def plot_counterfactual(path: Path, predicted: np.ndarray, true_p: np.ndarray) -> None:
    """Predicted vs true P(satisfied) of every patient under every treatment, one panel each."""
    fig = Figure(
        figsize=(10, 9), layout="constrained"
    )  # a bare Figure renders with Agg and touches no pyplot state
    for k, ax in enumerate(fig.subplots(2, 2).ravel()):
        ax.hexbin(
            true_p[:, k],
            predicted[:, k],
            gridsize=30,
            extent=(0, 1, 0, 1),
            mincnt=1,
            cmap="viridis",
        )
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        rmse = np.sqrt(np.mean((predicted[:, k] - true_p[:, k]) ** 2))
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="true P(satisfied)",
            ylabel="predicted P(satisfied)",
            title=f"{TREATMENTS[k]}: RMSE {rmse:.3f}",
        )
    fig.suptitle("Counterfactual accuracy: every patient under every treatment")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_mix_by_diagnosis(path: Path, table: list[dict]) -> None:
    """Per diagnosis, the rule's recommended mix above the oracle's (where a truth file exists)."""
    bars = [
        (f"{r['diagnosis']} ({r['n']:,}): {who}", r[key])
        for r in table
        if r["n"]
        for who, key in (("model rule", "recommended_mix"), ("oracle", "oracle_mix"))
        if r[key]
    ]
    fig = Figure(figsize=(9, 0.45 * len(bars) + 1.5))
    ax = fig.subplots()
    y = np.arange(len(bars))[::-1]
    left = np.zeros(len(bars))
    for t in TREATMENTS:
        share = np.array([mix[t] for _, mix in bars])
        ax.barh(y, share, left=left, label=t)
        left += share
    ax.set_yticks(y, [label for label, _ in bars])
    ax.set(
        xlim=(0, 1),
        xlabel="share of patients",
        title="Recommended vs oracle treatment mix by diagnosis",
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_propensity(path: Path, overlap: dict) -> None:
    """Cross-fitted propensity of each treatment among those who received it and those who did
    not."""
    fig = Figure(figsize=(10, 8), layout="constrained")
    edges = np.asarray(overlap["edges"])
    for ax, (t, row) in zip(fig.subplots(2, 2).ravel(), overlap["treatments"].items()):
        for key, label in (
            ("histogram_received", f"received it ({row['received']:,})"),
            ("histogram_others", "did not"),
        ):
            counts = np.asarray(row[key], dtype=float)
            if counts.sum():
                ax.stairs(counts / counts.sum(), edges, label=label)
        if not row["received"]:
            ax.text(0.5, 0.5, "no patient received it", ha="center", transform=ax.transAxes)
        ax.axvline(
            overlap["floor"], ls=":", color="grey", label=f"support floor {overlap['floor']:g}"
        )
        ax.set(xlim=(0, 1), xlabel=f"P({t} | chart)", ylabel="share of patients", title=t)
        ax.legend(fontsize=8)
    fig.suptitle("Propensity overlap (cross-fitted)")
    fig.savefig(path, dpi=100, bbox_inches="tight")


# ----------------------------------------------------------------------------- markdown


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _dr_cell(row: dict) -> str:
    if "dr_value" not in row:
        return "n/a"
    if row["dr_value"] is None:
        return "n/a (see below)"
    return f"{row['dr_value']:.3f} ({row['dr_low']:.3f} to {row['dr_high']:.3f})"


def summary_section(m: dict) -> list[str]:
    """The table a reader looks at first: every policy by every recommendation metric."""
    if "recommendation" not in m:
        return []
    r = m["recommendation"]
    rows = [
        f"| {LABELS[name]} | {fmt(row.get('policy_capture'), '.1%')} "
        f"| {fmt(row.get('policy_agreement'), '.1%')} "
        f"| {fmt(row.get('unnecessary_surgery'), '.1%')} | {fmt(row.get('missed_benefit'), '.1%')} "
        f"| {fmt(_surgery(row), '.1%')} "
        f"| {_dr_cell(row)} | {fmt(row.get('true_value'))} |"
        for name, row in r["policies"].items()
    ]
    rule = ", ".join(f"{k} {v:g}" for k, v in r["rule"].items())
    lines = [
        "## Recommendations",
        "",
        (
            "Each policy gives every test patient one treatment. Capture = share of the oracle's "
            "gain over observed practice; unnecessary surgery / missed benefit = share of all "
            "patients sent to a surgery the truth rates below the best non-surgical option / kept "
            "from a surgery it rates higher; DR value = doubly robust estimate of mean "
            "P(satisfied) with a bootstrap 95 % interval (no truth needed); true value = the same "
            "from the truth file."
        ),
        "",
        (
            "| policy | capture | agreement | unnecessary surgery | missed benefit | surgery share "
            "| DR value (95 % CI) | true value |"
        ),
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Decision rule: {rule}.",
    ]
    lines += [
        f"**{t} lacks support: no patient in this cohort received it.** Its predictions are "
        "extrapolations, its propensity is 0, and DR values of policies that recommend it are n/a."
        for t in r["unsupported"]
    ]
    lines += [
        f"- DR value of {LABELS[name]} is n/a: {row['dr_reason']}."
        for name, row in r["policies"].items()
        if row.get("dr_reason")
    ]
    if "skipped" in r["dr"]:
        lines.append(f"DR estimates skipped: {r['dr']['skipped']}.")
    return lines + [""]


def _surgery(row: dict) -> float:
    return sum(row["mix"][t] or 0 for t in ("decompression", "fusion"))


def diagnosis_section(m: dict) -> list[str]:
    if "recommendation" not in m:
        return []
    table = m["recommendation"]["by_diagnosis"]
    head = " | ".join(f"{t} predicted (true)" for t in TREATMENTS)
    rows = [
        f"| {r['diagnosis']} | {r['n']:,} | "
        + " | ".join(
            f"{fmt(r['predicted'][t])} ({fmt((r['true'] or {}).get(t))})" for t in TREATMENTS
        )
        + f" | {_mix(r['recommended_mix'])} | {_mix(r['oracle_mix'])} |"
        for r in table
        if r["n"]
    ]
    return [
        "## By diagnosis",
        "",
        (
            "Mean P(satisfied) per treatment over each diagnosis group (true values "
            "from the truth file), and the rule's recommended mix beside the oracle's."
        ),
        "",
        f"| diagnosis | n | {head} | recommended | oracle |",
        "|---" * (len(TREATMENTS) + 4) + "|",
        *rows,
        "",
        "![Recommended vs oracle mix by diagnosis](mix_by_diagnosis.png)",
        "",
    ]


def _mix(mix: dict | None) -> str:
    return "n/a" if mix is None else ", ".join(f"{t} {v:.0%}" for t, v in mix.items() if v)


def overlap_section(m: dict) -> list[str]:
    dr = m.get("recommendation", {}).get("dr", {})
    if "overlap" not in dr:
        return []
    o = dr["overlap"]
    rows = [
        f"| {t} | {v['received']:,} | " + " | ".join(fmt(q) for q in v["quantiles"].values()) + " |"
        for t, v in o["treatments"].items()
    ]
    low = ", ".join(f"{LABELS[k]} {fmt(v, '.1%')}" for k, v in o["low_support_share"].items())
    blocked = m["recommendation"]["argmax_unsupported_share"]
    return [
        "## Overlap and support",
        "",
        (
            f"Cross-fitted ({dr['folds']} folds) multinomial propensity P(treatment | chart) of "
            "each treatment over all test patients."
        ),
        "",
        "| treatment | received | "
        + " | ".join(o["treatments"][TREATMENTS[0]]["quantiles"])
        + " |",
        "|---" * (2 + len(o["treatments"][TREATMENTS[0]]["quantiles"])) + "|",
        *rows,
        "",
        (
            "Share of patients whose recommended treatment has propensity below "
            f"{o['floor']:g}: {low}. "
            f"The rule's support floor (on the model's own propensity) overrode the argmax for "
            f"{fmt(blocked, '.1%')} of patients."
        ),
        "",
        "![Propensity overlap](propensity.png)",
        "",
    ]


def benefit_section(m: dict) -> list[str]:
    calibration = m.get("recommendation", {}).get("dr", {}).get("benefit_calibration")
    if not calibration:
        return []
    rows = []
    for t, c in calibration.items():
        if "reason" in c:
            rows.append(f"| {t} | n/a | n/a | n/a | {c['reason']} |")
            continue
        bins = ", ".join(
            f"{fmt(b['predicted'], '+.2f')} → {fmt(b['dr'], '+.2f')}" for b in c["bins"]
        )
        slope = f"{fmt(c['slope'], '.2f')} ± {fmt(c['slope_se'], '.2f')}"
        rows.append(
            f"| {t} | {fmt(c['predicted_mean'], '+.3f')} | {fmt(c['dr_mean'], '+.3f')} "
            f"| {slope} | {bins} |"
        )
    return [
        "## Calibration of predicted benefit",
        "",
        (
            "Predicted benefit over physical therapy (p_t − p_PT) against the doubly robust "
            "benefit (Γ_t − Γ_PT), in quintiles of predicted benefit; the slope of DR benefit on "
            "predicted benefit (± robust SE) is near 1 when the predicted differences are right in "
            "size, near 0 when they do not tell who benefits."
        ),
        "",
        (
            "| treatment | mean predicted benefit | mean DR benefit | slope "
            "| quintiles: predicted → DR |"
        ),
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def recommendation_table(m: dict) -> str:
    """The short table `spinecast evaluate` prints: model rule, baselines, oracle."""
    policies = m.get("recommendation", {}).get("policies", {})
    lines = [
        (
            f"{'policy':<24} {'capture':>8} {'unnecessary surgery':>20} {'surgery share':>14} "
            f"{'DR value (95 % CI)':>24}"
        )
    ]
    for name in ("model", "t_learner", "s_learner", "oracle"):
        if name in policies:
            row = policies[name]
            share = _surgery(row)
            lines.append(
                f"{LABELS[name].replace('`', ''):<24} {fmt(row.get('policy_capture'), '.1%'):>8} "
                f"{fmt(row.get('unnecessary_surgery'), '.1%'):>20} {fmt(share, '.1%'):>14} "
                f"{_dr_cell(row):>24}"
            )
    return "\n".join(lines)
