"""The normality ranking as a detector of failed segmentations (issue 14).

One cohort (``--seed``; 4242 is the one the ranking's defaults were chosen on, so report
another) is split into training cases, a set of
``accepted`` cases and held-out ``test`` cases. Two models are trained on the training
cases with one plan: ``good`` (``--budget-s``) and ``under`` (``--under-s``, the same plan
with a short budget); both are exported as bundles and run by the torch-free runtime
(:class:`medai.runtime.Segmenter`, one thread, flip TTA forced on so every result has
the uncertainty the service records).

The results ranked are the test cases under these conditions:

- ``clean``: the good model; ``under``: the under-trained model;
- ``swap``: FLAIR and T1 exchanged; ``missing``: FLAIR declared missing when the model
  was trained with channel dropout, else replaced by a blank series (noise at 1 % of the
  channel's 99th percentile: the runtime refuses an all-zero channel that is not
  declared);
- ``scale``: FLAIR intensities × 10; ``noise``: a cube (a third of each axis, at a seeded
  place) of Gaussian noise in every channel; ``flip``: the voxels flipped along the
  first axis (laterality lost; the ground truth is not flipped).

Per result: the measures the service records (``volume_ml.WT/TC/ET``, ``uncertainty``)
and Dice against the ground truth (WT, mean over regions). The accepted distribution is
the good model's clean results on the accepted cases (never the test results); the
bundle's ``reference.json`` is passed as the fallback the service uses. Every result is
scored with :func:`medai.service.normality.score_tasks` (default config, the bundle's
review threshold, or when the bundle has none, 90th percentile of the accepted results'
uncertainty by :func:`medai.evaluation.fit_review_threshold`).

Arms on the same results: ``ranking`` (``rank_score``), ``queue`` (the position in
:func:`~medai.service.normality.rank`'s order: colour first, the uncertainty flag
included, then score), ``uncertainty`` (the score alone) and ``wt-volume`` (|robust z|
of ``volume_ml.WT`` alone, by the same code with ``method=maxz``).
Failed = WT Dice < 0.7. Bootstrap CIs resample cases (all conditions of a case together).

    taskset -c 0 .venv/bin/python benchmarks/normality_qc.py OUT --smoke
    .venv/bin/python benchmarks/normality_qc.py OUT --json   # 38 min on a shared core
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medai.data.synth import generate_cohort
from medai.evaluation import (
    bootstrap_ci,
    compute_roc_auc,
    fit_review_threshold,
    region_dice,
    spearman_with_ci,
)
from medai.export import export_run
from medai.image import ScalarImage
from medai.preprocess import apply_overrides, as_cohort
from medai.preprocess.contrasts import canonical_contrast
from medai.runtime import Segmenter
from medai.service.normality import (
    Colour,
    MeasureTable,
    Method,
    NormalityConfig,
    NormalityResult,
    rank,
    score_tasks,
)
from medai.training import make_plan, train

SEED = 4242  # the cohort the defaults of stop 19 were chosen on; measure with another
REGIONS = ("WT", "TC", "ET")
MEASURES = (*(f"volume_ml.{r}" for r in REGIONS), "uncertainty")
CONDITIONS = ("clean", "under", "swap", "missing", "noise", "flip", "scale")
FAILED_BELOW = 0.7
ARMS = ("ranking", "queue", "uncertainty", "wt-volume")


# -- data and models -----------------------------------------------------------------
def split(ids: list[str], args: argparse.Namespace) -> dict[str, list[str]]:
    """Training, accepted and test ids (in cohort order, test last)."""
    n_test, n_acc = args.test_cases, args.accepted_cases
    if len(ids) < n_test + n_acc + 2:
        raise SystemExit(f"{len(ids)} cases cannot hold {n_test} test + {n_acc} accepted + 2")
    return {
        "train": ids[: -(n_test + n_acc)],
        "accepted": ids[-(n_test + n_acc) : -n_test],
        "test": ids[-n_test:],
    }


def models(
    data: Path, train_ids: list[str], out: Path, args: argparse.Namespace
) -> dict[str, Path]:
    """Train (once) the good and the under-trained model on one plan and export both."""
    bundles = {name: out / "bundles" / name for name in ("good", "under")}
    if all((b / "manifest.json").is_file() for b in bundles.values()):
        return bundles
    cohort = as_cohort(data)
    cohort.train_ids = list(train_ids)
    plan = make_plan(cohort, time_budget_s=args.budget_s, probe=False, device="cpu")
    for name, budget in (("good", args.budget_s), ("under", args.under_s)):
        run = out / "runs" / name
        if not (run / "model.pt").is_file():
            arm_plan = apply_overrides(plan, [f"train.time_budget_s={budget}"])
            t0 = time.perf_counter()
            result = train(
                cohort, arm_plan, run, case_ids=train_ids, cache_dir=out / "cache", device="cpu"
            )
            took = time.perf_counter() - t0
            record = {"steps": result.steps, "budget_s": budget, "wall_s": took}
            (run / "bench.json").write_text(json.dumps(record, indent=1) + "\n")
        export_run(run, bundles[name], dataset=data, overwrite=True, reference_cases=10)
    return bundles


def _channel(channels: list[str], name: str) -> int:
    found = [i for i, c in enumerate(channels) if canonical_contrast(c) == canonical_contrast(name)]
    if not found:
        raise SystemExit(f"the model has no {name} channel ({channels})")
    return found[0]


def perturb(
    image: ScalarImage, condition: str, channels: list[str], rng: np.random.Generator
) -> ScalarImage:
    """The study as ``condition`` presents it (``missing`` here: the blank series)."""
    data = np.array(image.array, dtype=np.float32)
    flair, t1 = _channel(channels, "FLAIR"), _channel(channels, "T1")
    if condition == "swap":
        data[[flair, t1]] = data[[t1, flair]]
    elif condition == "missing":
        level = 0.01 * float(np.percentile(data[flair], 99))
        data[flair] = rng.normal(0.0, max(level, 1e-3), data[flair].shape)
    elif condition == "scale":
        data[flair] *= 10.0
    elif condition == "noise":
        size = [max(2, n // 3) for n in data.shape[1:]]
        lo = [int(rng.integers(0, n - s + 1)) for n, s in zip(data.shape[1:], size, strict=True)]
        block = [slice(a, a + s) for a, s in zip(lo, size, strict=True)]
        for c in range(data.shape[0]):
            scale = float(np.percentile(data[c], 99))
            data[c][tuple(block)] = rng.normal(0.0, scale, size)
    elif condition == "flip":
        data = data[:, ::-1].copy()
    return ScalarImage(data, image.affine, meta=image.meta)


def _dropout(segmenter: Segmenter) -> bool:
    return bool(segmenter.loaded.plan.train.shift.channel_dropout > 0)


def predict_one(
    segmenter: Segmenter, image: ScalarImage, label: np.ndarray, condition: str, seed: int
) -> dict[str, Any]:
    """Measures and Dice of one result."""
    channels = list(segmenter.loaded.channels)
    declared = condition == "missing" and _dropout(segmenter)
    if declared:
        keep = [i for i in range(len(channels)) if i != _channel(channels, "FLAIR")]
        study = ScalarImage(image.array[keep], image.affine, meta=image.meta)
        pred = segmenter.predict(study, tta=True, missing=["FLAIR"])
    else:
        study = perturb(image, condition, channels, np.random.default_rng(seed))
        pred = segmenter.predict(study, tta=True)
    labels = pred.labels.array[0]
    regions = segmenter.loaded.plan.regions
    dice = {
        r: region_dice(np.isin(labels, regions[r]), np.isin(label, regions[r])) for r in REGIONS
    }
    row: dict[str, Any] = {f"volume_ml.{r}": float(pred.volumes_ml[r]) for r in REGIONS}
    row["uncertainty"] = pred.uncertainty
    row |= {f"dice.{r}": float(d) for r, d in dice.items()}
    row["dice.mean"] = float(np.mean(list(dice.values())))
    row["missing_mode"] = ("declared" if declared else "blank") if condition == "missing" else ""
    return row


def predict_all(
    bundles: dict[str, Path],
    data: Path,
    ids: dict[str, list[str]],
    out: Path,
    conditions: list[str],
    seed: int,
) -> dict[str, dict[str, dict[str, Any]]]:
    """condition → case → row, cached per condition under ``OUT/results``."""
    segmenters = {name: Segmenter(path, threads=1) for name, path in bundles.items()}
    cohort = as_cohort(data)
    jobs = [("accepted", "clean", ids["accepted"])] + [(c, c, ids["test"]) for c in conditions]
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for key, condition, case_ids in jobs:
        path = out / "results" / f"{key}.json"
        if path.is_file():
            found[key] = json.loads(path.read_text())
            continue
        segmenter = segmenters["under" if condition == "under" else "good"]
        rows = {}
        for k, case in enumerate(cohort.subset(case_ids)):
            label = case.load_label()
            if label is None:
                raise SystemExit(f"case {case.case_id} has no label to score against")
            draw = seed + 1000 * CONDITIONS.index(condition) + k
            rows[case.case_id] = predict_one(
                segmenter, case.load_image(), label.array[0], condition, draw
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1) + "\n")
        found[key] = rows
    return found


# -- scoring -------------------------------------------------------------------------
def _table(rows: dict[str, dict[str, Any]], measures: tuple[str, ...]) -> MeasureTable:
    return MeasureTable.from_records({k: {m: r.get(m) for m in measures} for k, r in rows.items()})


def review_threshold(bundle: Path, accepted: list[float]) -> tuple[float, str]:
    """The bundle's review threshold, else one fitted on the accepted results."""
    from medai.runtime import load_bundle

    loaded = load_bundle(bundle)
    settings = loaded.info.get("uncertainty")
    value = settings.get("review_above") if isinstance(settings, dict) else None
    target = getattr(loaded.plan, "target", None)
    value = value if value is not None else getattr(target, "review_above", None)
    if value is not None:
        return float(value), "the bundle's"
    fitted = fit_review_threshold(accepted, refer_fraction=0.1)
    return fitted, "fitted on the accepted results (none in the bundle; 10 % referred)"


def reference(bundle: Path) -> dict[str, list[float]]:
    """The bundle's ``reference.json`` as measure → values (as the service reads it)."""
    from medai.runtime import load_bundle

    ref = load_bundle(bundle).documents.get("reference.json") or {}
    found = {
        f"volume_ml.{r}": list(v.get("values") or []) for r, v in ref.get("regions", {}).items()
    }
    if isinstance(ref.get("uncertainty"), dict):
        found["uncertainty"] = list(ref["uncertainty"].get("values") or [])
    return {k: v for k, v in found.items() if v}


def score(
    results: dict[str, dict[str, dict[str, Any]]], bundle: Path, config: NormalityConfig
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One record per test result with the three arms' scores, and the settings used."""
    accepted = results["accepted"]
    rows = {f"{c}/{case}": r for c, by_case in results.items() if c != "accepted"
            for case, r in by_case.items()}  # fmt: skip
    threshold, source = review_threshold(bundle, [r["uncertainty"] for r in accepted.values()])
    uncertainty = {k: float(r["uncertainty"]) for k, r in rows.items()}

    def ranking(method: Method) -> list[NormalityResult]:
        return score_tasks(
            _table(accepted, MEASURES),
            _table(rows, MEASURES),
            reference=reference(bundle),
            uncertainty=uncertainty,
            review_threshold=threshold,
            units={m: "mL" for m in MEASURES[:3]},
            config=config.model_copy(update={"method": method}),
        )

    ranked = ranking(config.method)
    variants = {m: ranking(m) for m in Method if m is not config.method}
    wt_config = config.model_copy(update={"method": Method.MAXZ})
    wt = score_tasks(_table(accepted, MEASURES[:1]), _table(rows, MEASURES[:1]), config=wt_config)
    queue = {r.task_key: i for i, r in enumerate(rank(ranked))}
    records = []
    for i, (res, vol) in enumerate(zip(ranked, wt, strict=True)):
        row = rows[res.task_key]
        condition, case = res.task_key.split("/", 1)
        record = {
            "key": res.task_key, "condition": condition, "case": case,
            "dice_wt": row["dice.WT"], "dice_mean": row["dice.mean"],
            "failed": row["dice.WT"] < FAILED_BELOW, "colour": res.colour.value,
            "method": res.method.value, "queue": -float(queue[res.task_key]),
            "reasons": list(res.reasons), "ranking": _finite(res.rank_score),
            "uncertainty": uncertainty[res.task_key], "wt-volume": _finite(vol.rank_score),
            "wt_colour": vol.colour.value, "missing_mode": row["missing_mode"],
        }  # fmt: skip
        for m, other in variants.items():
            record[f"ranking-{m.value}"] = _finite(other[i].rank_score)
            record[f"colour-{m.value}"] = other[i].colour.value
        records.append(record)
    settings = {"review_threshold": threshold, "threshold_source": source,
                "method": sorted({r.method.value for r in ranked})}  # fmt: skip
    return records, settings


def _finite(x: float) -> float:
    return float(x) if np.isfinite(x) else 1e9  # unranked → amber → reviewed first


# -- figures -------------------------------------------------------------------------
def _top(score: np.ndarray, failed: np.ndarray) -> tuple[float, float]:
    """(share failed among the top 10 %, share of the failed caught there)."""
    k = max(1, math.ceil(0.1 * score.size))
    top = np.argsort(-score, kind="stable")[:k]
    caught = float(failed[top].sum())
    return caught / k, caught / max(1.0, float(failed.sum()))


def _ci(metric: Callable[..., float], y: np.ndarray, s: np.ndarray, cases: np.ndarray) -> dict:
    try:
        ci = bootstrap_ci(metric, y, s, clusters=cases, n_resamples=2000, seed=0)
    except ValueError as exc:
        return {"estimate": float(metric(y, s)), "low": None, "high": None, "note": str(exc)}
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high}


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    return compute_roc_auc(y, s) if 0 < y.sum() < y.size else float("nan")


def _auc_diff(y: np.ndarray, s: np.ndarray) -> float:
    return _auc(y, s[:, 0]) - _auc(y, s[:, 1])


def arm_figures(records: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """AUROC, top-10 % and Spearman figures of one arm, with case-bootstrap CIs."""
    y = np.array([r["failed"] for r in records], dtype=np.int64)
    cases = np.array([r["case"] for r in records])
    s = np.array([r[arm] for r in records], dtype=np.float64)
    share, caught = _top(s, y.astype(bool))
    dice = np.array([r["dice_wt"] for r in records])
    mean = np.array([r["dice_mean"] for r in records])
    out: dict[str, Any] = {
        "auroc": _ci(_auc, y, s, cases),
        "top10_share_failed": _ci(lambda a, b: _top(b, a.astype(bool))[0], y, s, cases),
        "top10_caught": caught,
        "top10_best_share": min(1.0, y.sum() / max(1, math.ceil(0.1 * y.size))),
        "top10_share_point": share,
    }
    for name, truth in (("spearman_dice_wt", dice), ("spearman_dice_mean", mean)):
        try:
            ci = spearman_with_ci(s, truth, clusters=cases, n_resamples=2000, seed=0)
            out[name] = {"estimate": ci.estimate, "low": ci.low, "high": ci.high}
        except ValueError as exc:
            out[name] = {"estimate": None, "note": str(exc)}
    return out


def figures(records: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the report as one JSON-able mapping."""
    y = np.array([r["failed"] for r in records], dtype=np.int64)
    cases = np.array([r["case"] for r in records])
    names = [*ARMS, *(k for k in records[0] if k.startswith("ranking-"))]
    arms = {arm: arm_figures(records, arm) for arm in names}
    for arm in names[1:]:
        both = np.column_stack([[r["ranking"] for r in records], [r[arm] for r in records]])
        arms[arm]["auroc_ranking_minus_arm"] = _ci(_auc_diff, y, both, cases)
    clean = [r for r in records if r["condition"] == "clean"]
    per_condition = {}
    for c in dict.fromkeys(r["condition"] for r in records):
        rs = [r for r in records if r["condition"] == c]
        per_condition[c] = {
            "n": len(rs),
            "failed": float(np.mean([r["failed"] for r in rs])),
            "red": float(np.mean([r["colour"] == Colour.RED for r in rs])),
            "amber": float(np.mean([r["colour"] == Colour.AMBER for r in rs])),
            "dice_wt_mean": float(np.mean([r["dice_wt"] for r in rs])),
            "rank_score_median": float(np.median([r["ranking"] for r in rs])),
            "missing_mode": rs[0]["missing_mode"],
        }
    return {
        "n_results": len(records),
        "n_failed": int(y.sum()),
        "settings": settings,
        "clean_red": float(np.mean([r["colour"] == Colour.RED for r in clean])) if clean else None,
        "clean_amber": float(np.mean([r["colour"] == Colour.AMBER for r in clean]))
        if clean
        else None,
        "clean_wt_volume_red": float(np.mean([r["wt_colour"] == Colour.RED for r in clean]))
        if clean
        else None,
        "clean_uncertain": float(
            np.mean([r["uncertainty"] > settings["review_threshold"] for r in clean])
        )
        if clean
        else None,
        "clean_red_variants": {
            k[len("colour-") :]: float(np.mean([r[k] == Colour.RED for r in clean]))
            for k in (records[0] if clean else {})
            if k.startswith("colour-")
        },
        "arms": arms,
        "per_condition": per_condition,
    }


def _fmt_ci(item: dict[str, Any]) -> str:
    if item.get("estimate") is None or not np.isfinite(item["estimate"]):
        return "n/a"
    if item.get("low") is None:
        return f"{item['estimate']:.3f}"
    return f"{item['estimate']:.3f} [{item['low']:.3f}, {item['high']:.3f}]"


def report(fig: dict[str, Any]) -> str:
    """The figures as markdown tables."""
    lines = [
        f"{fig['n_results']} results, {fig['n_failed']} failed (WT Dice < {FAILED_BELOW}); "
        f"review threshold {fig['settings']['review_threshold']:.4g} "
        f"({fig['settings']['threshold_source']}); method {fig['settings']['method']}.",
        "",
        "| arm | AUROC failed vs rest [95 % CI] | ranking − arm AUROC | share failed in top "
        "10 % [CI] (best possible) | failed caught in top 10 % | Spearman vs WT Dice | "
        "Spearman vs mean Dice |",
        "|---|---|---|---|---:|---|---|",
    ]
    for arm, a in fig["arms"].items():
        diff = _fmt_ci(a["auroc_ranking_minus_arm"]) if "auroc_ranking_minus_arm" in a else "—"
        lines.append(
            f"| {arm} | {_fmt_ci(a['auroc'])} | {diff} | {_fmt_ci(a['top10_share_failed'])} "
            f"({a['top10_best_share']:.2f}) | {a['top10_caught']:.2f} | "
            f"{_fmt_ci(a['spearman_dice_wt'])} | {_fmt_ci(a['spearman_dice_mean'])} |"
        )
    lines += [
        "",
        f"Clean results: red {fig['clean_red']:.3f}, amber {fig['clean_amber']:.3f} (ranking); "
        f"WT-volume |z| ≥ 5: {fig['clean_wt_volume_red']:.3f}; uncertainty above the review "
        f"threshold: {fig['clean_uncertain']:.3f}; red with the other methods: "
        + ", ".join(f"{m} {v:.3f}" for m, v in fig["clean_red_variants"].items())
        + ".",
        "",
        "| condition | n | failed | red | amber | mean WT Dice | median rank score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c, p in fig["per_condition"].items():
        mode = f" ({p['missing_mode']})" if p["missing_mode"] else ""
        lines.append(
            f"| {c}{mode} | {p['n']} | {p['failed']:.2f} | {p['red']:.2f} | {p['amber']:.2f} "
            f"| {p['dice_wt_mean']:.3f} | {p['rank_score_median']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", type=int, default=70, help="cohort size")
    parser.add_argument("--test-cases", type=int, default=30)
    parser.add_argument("--accepted-cases", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--budget-s", type=float, default=150.0, help="good model")
    parser.add_argument("--under-s", type=float, default=15.0, help="under-trained model")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--json", action="store_true", help="also write and print figures.json")
    parser.add_argument("--smoke", action="store_true", help="10 cases, 10 s trainings")
    parser.add_argument("--seed", type=int, default=SEED, help="cohort and perturbation seed")
    args = parser.parse_args()
    config = NormalityConfig()
    if args.smoke:  # too few accepted results for the default min_results (10)
        args.cases, args.test_cases, args.accepted_cases, args.spacing = 10, 3, 4, 4.0
        args.budget_s, args.under_s = 10.0, 10.0
        config = NormalityConfig(min_results=3)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    root = args.out / "data"
    if not (root / "clinical.csv").is_file():
        generate_cohort(root, cases=args.cases, spacing=args.spacing, seed=args.seed, sites=4)
    data = root / "Task01_BrainTumour"
    ids = split(as_cohort(data).ids(), args)
    bundles = models(data, ids["train"], args.out, args)
    results = predict_all(bundles, data, ids, args.out, list(args.conditions), args.seed)
    records, settings = score(results, bundles["good"], config)
    settings |= {"cases": {k: len(v) for k, v in ids.items()}, "seed": args.seed,
                 "budget_s": args.budget_s, "under_s": args.under_s, "smoke": args.smoke,
                 "config": config.model_dump(mode="json")}  # fmt: skip
    fig = figures(records, settings)
    fig["wall_s"] = time.perf_counter() - t0
    text = report(fig) + f"\n\nTotal wall time {fig['wall_s']:.0f} s.\n"
    (args.out / "report.md").write_text(text)
    (args.out / "records.json").write_text(json.dumps(records, indent=1) + "\n")
    print(text)
    if args.json:
        (args.out / "figures.json").write_text(json.dumps(fig, indent=1) + "\n")
        print(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()
