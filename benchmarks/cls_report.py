"""Figures and the markdown report of the classification benchmark (``cls_vs_monai.py``).

Per (task, arm, seed): test ROC-AUC with DeLong's 95 % interval, balanced accuracy at the
arm's own validation-chosen threshold, training samples/s, samples seen, peak RSS.
Per (task, seed): medai − MONAI on the same test cases, DeLong's test of the AUC
difference (cases independent) and, beside it, a paired bootstrap that resamples
patients (the 2D task has several slices per patient, which DeLong does not allow for).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medai.evaluation.bootstrap import paired_bootstrap
from medai.evaluation.classification import compute_balanced_accuracy, compute_roc_auc
from medai.evaluation.delong import delong_ci, delong_test

TASK_TITLES = {
    "grade": "tumour grade (HGG / LGG) from 3D MRI, 4 channels",
    "slices": "tumour present on 2D axial FLAIR slices",
}


def arm_figures(result: dict[str, Any]) -> dict[str, Any]:
    """Test figures of one (task, arm, seed) result."""
    test = result["test"]
    truth, score = np.asarray(test["truth"]), np.asarray(test["score"])
    try:
        ci = delong_ci(truth, score)
        auc, low, high, note = ci.estimate, ci.low, ci.high, ""
    except ValueError as exc:  # too few cases of a class for an interval
        auc = compute_roc_auc(truth, score) if len(set(truth.tolist())) > 1 else float("nan")
        low, high, note = float("nan"), float("nan"), str(exc)
    return {
        "auc": auc,
        "auc_low": low,
        "auc_high": high,
        "auc_note": note,
        "balanced_accuracy": compute_balanced_accuracy(truth, np.asarray(test["decision"])),
        "n_test": len(truth),
        "n_positive": int(truth.sum()),
    }


def paired_figures(medai: dict[str, Any], monai: dict[str, Any]) -> dict[str, Any]:
    """medai − MONAI on the same test cases (DeLong; patient bootstrap beside it)."""
    a, b = medai["test"], monai["test"]
    if a["ids"] != b["ids"] or a["truth"] != b["truth"]:
        raise RuntimeError("the two arms were tested on different cases or truths")
    truth = np.asarray(a["truth"])
    score_a, score_b = np.asarray(a["score"]), np.asarray(b["score"])
    out: dict[str, Any] = {"n_patients": len(set(a["patients"]))}
    try:
        d = delong_test(truth, score_a, score_b)
        out.update(diff=d.difference, low=d.low, high=d.high, p=d.p_value, note="")
    except ValueError as exc:
        out.update(diff=float("nan"), low=float("nan"), high=float("nan"), p=float("nan"))
        out["note"] = str(exc)
    try:
        boot = paired_bootstrap(
            compute_roc_auc, truth, score_a, score_b, clusters=a["patients"], seed=0
        )
        out.update(boot_low=boot.low, boot_high=boot.high, boot_p=boot.p_value)
    except ValueError as exc:
        out.update(boot_low=float("nan"), boot_high=float("nan"), boot_p=float("nan"))
        out["note"] = (out["note"] + "; " if out["note"] else "") + f"bootstrap: {exc}"
    return out


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:+.3f}"


def _p(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:.2g}"


def _arm_row(task: str, seed: int, arm: str, r: dict[str, Any]) -> str:
    f = arm_figures(r)
    auc = f"{_f(f['auc'])} [{_f(f['auc_low'])}, {_f(f['auc_high'])}]"
    over = r["wall_s"] - r["budget_s"]
    wall = f"{r['wall_s']:.0f}" + (f" (+{over:.0f} over)" if over > 1 else "")
    return (
        f"| {task} | {seed} | {arm} | {r['network']} | {auc} | {_f(f['balanced_accuracy'])} "
        f"@ {_f(r['threshold'])} | {r['samples_per_s']:.2f} | {r['samples']} ({r['epochs']} ep) "
        f"| {r['peak_rss_mb']:.0f} | {r['plan_s']:.0f} / {wall} |"
    )


def _paired_row(task: str, seed: int, medai: dict[str, Any], monai: dict[str, Any]) -> str:
    f = paired_figures(medai, monai)
    n = len(medai["test"]["ids"])
    return (
        f"| {task} | {seed} | {n} ({f['n_patients']} patients) | {_signed(f['diff'])} "
        f"[{_signed(f['low'])}, {_signed(f['high'])}] | {_p(f['p'])} | "
        f"[{_signed(f['boot_low'])}, {_signed(f['boot_high'])}] | {_p(f['boot_p'])} | "
        f"{f['note'] or ''} |"
    )


def render(results: dict[tuple[str, str, int], dict[str, Any]], header: list[str]) -> str:
    """The report: settings, one row per (task, seed, arm), then the paired rows."""
    lines = [*header, "", "## Test figures per task, seed and arm", ""]
    lines += [
        "| task | seed | arm | network | test AUC [DeLong 95 % CI] | balanced acc. @ threshold "
        "| samples/s | samples seen | peak RSS MiB | plan s / arm wall s |",
        "|---|---:|---|---|---|---|---:|---:|---:|---|",
    ]
    keys = sorted(results)
    lines += [_arm_row(t, s, a, results[(t, a, s)]) for t, a, s in keys]
    lines += ["", "## Paired: medai − MONAI, same test cases", ""]
    lines += [
        "| task | seed | test cases | Δ AUC [DeLong 95 % CI] | DeLong p | patient bootstrap "
        "95 % CI | bootstrap p | note |",
        "|---|---:|---|---|---:|---|---:|---|",
    ]
    pairs = sorted({(t, s) for t, _a, s in keys})
    for task, seed in pairs:
        medai, monai = results.get((task, "medai", seed)), results.get((task, "monai", seed))
        if medai is not None and monai is not None:
            lines.append(_paired_row(task, seed, medai, monai))
    lines += _summary(results, pairs)
    return "\n".join(lines) + "\n"


def _summary(
    results: dict[tuple[str, str, int], dict[str, Any]], pairs: list[tuple[str, int]]
) -> list[str]:
    """Per task: mean test AUC of each arm over the seeds both finished, the mean paired
    difference, and on how many seeds DeLong's interval excludes zero either way."""
    lines = ["", "## Over seeds", ""]
    lines += [
        "| task | seeds | medai mean AUC | MONAI mean AUC | mean Δ AUC | medai better / "
        "tie / worse (DeLong 95 % CI) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for task in sorted({t for t, _s in pairs}):
        both = [
            (results[(task, "medai", s)], results[(task, "monai", s)])
            for t, s in pairs
            if t == task and (task, "medai", s) in results and (task, "monai", s) in results
        ]
        if not both:
            continue
        auc_a = [arm_figures(a)["auc"] for a, _b in both]
        auc_b = [arm_figures(b)["auc"] for _a, b in both]
        paired = [paired_figures(a, b) for a, b in both]
        better = sum(p["low"] > 0 for p in paired)
        worse = sum(p["high"] < 0 for p in paired)
        undefined = sum(not np.isfinite(p["diff"]) for p in paired)
        ties = len(both) - better - worse - undefined
        diffs = [p["diff"] for p in paired]
        lines.append(
            f"| {task} | {len(both)} | {_f(float(np.mean(auc_a)))} | {_f(float(np.mean(auc_b)))} "
            f"| {_signed(float(np.mean(diffs)))} | {better} / {ties} / {worse}"
            + (f" ({undefined} without a test)" if undefined else "")
            + " |"
        )
    return lines
