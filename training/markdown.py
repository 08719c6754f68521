"""The evaluation report as Markdown, from its metrics alone (so it can hold nothing that is not an
aggregate): the summary, the recommendation sections, ablations, subgroups and baselines."""

from __future__ import annotations

from spinecast.datasets.schema import TREATMENTS

from spinecast.metrics import ECE_BINS

from .recommendation import LABELS


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


def render_markdown(metrics: dict) -> str:
    """The report from the metrics alone, so it can hold nothing that is not an aggregate. The
    recommendation summary comes first: it is what the model is for."""
    c = metrics["counts"]
    intro = (
        f"{c['patients']:,} test patients, {c['labeled']:,} with a `satisfied` label "
        f"({fmt(c['satisfied_rate'], '.1%')} satisfied)."
    )
    plots = "Plots: [ROC curves](roc.png), [reliability diagram](calibration.png)"
    if "test/cf_rmse" in metrics:
        plots += ", [predicted vs true P(satisfied)](counterfactual.png)"
    lines = [
        "# SpineCast evaluation report",
        "",
        intro,
        "",
        *summary_section(metrics),
        "## Predictions",
        "",
        *_summary(metrics),
        "",
        plots,
        "",
        "![ROC curves](roc.png) ![Reliability diagram](calibration.png)",
        "",
    ]
    if "test/cf_rmse" in metrics:
        lines += ["![Predicted vs true P(satisfied) per treatment](counterfactual.png)", ""]
    for section in (
        diagnosis_section,
        overlap_section,
        benefit_section,
        _ablation_table,
        _subgroup_table,
        _baseline_table,
    ):
        lines += section(metrics)
    return "\n".join(lines).rstrip() + "\n"


def _summary(m: dict) -> list[str]:
    rows = [
        ("AUROC, `satisfied`", fmt(m["test/auroc"])),
        ("AUPRC", fmt(m["test/auprc"])),
        ("Brier score", fmt(m["test/brier"])),
        (f"expected calibration error ({ECE_BINS} bins)", fmt(m["test/ece"])),
    ]
    if "test/mcid_auroc" in m:
        rows.append((f"AUROC, `mcid` ({m['test/mcid_n']:,} rows)", fmt(m["test/mcid_auroc"])))
    if "test/odi_rmse" in m:
        rows.append(
            (f"ODI at 12 months, RMSE ({m['test/odi_n']:,} rows)", fmt(m["test/odi_rmse"], ".2f"))
        )
    if "test/bayes_auroc" in m:
        rows += [
            (
                "Bayes AUROC: true probabilities (on these labels)",
                f"{fmt(m['test/bayes_auroc'])} ({fmt(m['test/bayes_auroc_on_labels'])})",
            ),
            (
                "gap to the Bayes AUROC (on these labels)",
                f"{fmt(m['test/bayes_auroc_gap'])} ({fmt(m['test/bayes_auroc_gap_on_labels'])})",
            ),
        ]
    if "test/cf_rmse" in m:
        rows += [
            ("RMSE of P(satisfied) vs truth, all patients x all treatments", fmt(m["test/cf_rmse"]))
        ]
        rows += [(f"... {t}", fmt(m[f"test/cf_rmse_{t}"])) for t in TREATMENTS]
    intro = (
        "Label metrics score the predicted P(satisfied) of the treatment each patient got; the "
        "RMSE against the truth scores every treatment."
    )
    return [intro, "", "| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _ablation_table(m: dict) -> list[str]:
    if "ablation" not in m:
        return []
    rows = [
        f"| {k} | {fmt(v['auroc'])} | {fmt(v['drop'], '+.3f')} |" for k, v in m["ablation"].items()
    ]
    return [
        "## Modality ablation",
        "",
        "AUROC of `satisfied` with one input removed; the drop is what that modality adds.",
        "",
        "| modality removed | AUROC | drop |",
        "|---|---|---|",
        *rows,
        "",
    ]


def _subgroup_table(m: dict) -> list[str]:
    rows = [
        f"| {r['field']} | {r['value']} | {r['n']:,} | {fmt(r['auroc'])} "
        f"| {fmt(r['satisfied_rate'], '.1%')} |"
        for r in m["subgroups"]
    ]
    return [
        "## Subgroups",
        "",
        "n counts labeled rows; AUROC is n/a where a subgroup holds a single class.",
        "",
        "| field | group | n | AUROC | satisfied |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _baseline_table(m: dict) -> list[str]:
    if "baselines" not in m:
        return []
    rmse = {
        k: m.get("test/cf_rmse" if k == "model" else f"test/{k}/cf_rmse") for k in m["baselines"]
    }
    rows = [
        f"| {k} | {fmt(v['auroc'])} | {fmt(v['auprc'])} | {fmt(v['brier'])} | {fmt(v['ece'])} "
        f"| {fmt(rmse[k])} |"
        for k, v in m["baselines"].items()
    ]
    return [
        "## Baselines",
        "",
        (
            "Same rows, same labels: label metrics on the observed treatment's column; RMSE "
            "against the truth over every treatment (n/a without a truth file). Their "
            "recommendations (argmax) are in the recommendations table."
        ),
        "",
        "| model | AUROC | AUPRC | Brier | ECE | RMSE vs truth |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
