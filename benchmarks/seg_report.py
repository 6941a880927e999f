"""Tables and the time-to-Dice figure from the scored results of ``seg_benchmark.py``.

Every interval resamples patients (medai's bootstrap, 10 000 replicates, BCa for means,
percentile for paired differences); per-case Dice is averaged over the training seeds
before the seed-averaged rows, and each seed also gets its own row. Paired differences
are medai − peer on the same test cases, with medai's paired bootstrap and scipy's
Wilcoxon signed-rank test.

    .venv/bin/python benchmarks/seg_report.py /tmp/segbench --png docs/img/seg_time_to_dice.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from medai.evaluation import bootstrap_mean_ci, paired_bootstrap_mean

REGIONS = ("WT", "TC", "ET")
ARMS = ("medai", "monai_unet", "monai_tutorial", "nnunet")
SETTINGS = {"none": "no post-processing (sigmoid ≥ 0.5)", "medai_post": "medai's post-processing"}
ABLATION = {
    "full": "full inference (Gaussian, box, small blobs, nesting, ET rule)",
    "constant_blend": "− Gaussian blending (constant)",
    "no_box": "− zero outside the foreground box",
    "no_small_components": "− small-component removal",
    "no_nesting": "− region nesting",
    "no_et_rule": "− learned ET volume rule",
    "none": "none of them (Gaussian only)",
    "none_constant": "none of them, constant blending (the old peers' protocol)",
    "as_shipped": "as shipped: predict_case (crop → window), its own ET rule",
}
LEVELS = (0.5, 0.7, 0.8, 0.85, 0.9)
N_BOOT = 10_000


def load(folder: Path) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted((folder / "scored").glob("*.json")):
        res = json.loads(path.read_text())
        out.setdefault(res["arm"], {})[int(res["seed"])] = res
    return out


def common_ids(*arms: dict[int, dict[str, Any]]) -> list[str]:
    """Test cases every run of these arms was scored on (pairs stay pairs)."""
    sets = [set(res["test_ids"]) for runs in arms for res in runs.values()]
    first = next(iter(arms[0].values()))["test_ids"]
    return [i for i in first if all(i in s for s in sets)]


def values(res: dict[str, Any], keys: tuple[str, ...], ids: list[str]) -> dict[str, np.ndarray]:
    """Per-case Dice of one run, region → (len(ids),), in ``ids`` order."""
    node = res
    for k in keys:
        node = node[k]
    pos = {case: i for i, case in enumerate(res["test_ids"])}
    return {r: np.asarray([node[r][pos[i]] for i in ids], dtype=float) for r in REGIONS}


def seed_mean(
    runs: dict[int, dict[str, Any]], *keys: str, ids: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Per-case Dice averaged over seeds: region → (n_cases,)."""
    ids = ids or common_ids(runs)
    per = [values(res, keys, ids) for res in runs.values()]
    return {r: np.mean([p[r] for p in per], axis=0) for r in REGIONS}


def ci_cell(values: np.ndarray) -> str:
    ci = bootstrap_mean_ci(values, n_resamples=N_BOOT, seed=0)
    return f"{ci.estimate:.3f} [{ci.low:.3f}–{ci.high:.3f}]"


def diff_cell(a: np.ndarray, b: np.ndarray) -> str:
    cmp = paired_bootstrap_mean(a, b, n_resamples=N_BOOT, seed=0)
    d = a - b
    p = float(wilcoxon(a, b).pvalue) if np.any(d != 0) else 1.0
    return f"{cmp.difference:+.3f} [{cmp.low:+.3f}, {cmp.high:+.3f}] p={p:.2g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def dice_tables(data: dict[str, dict[int, dict[str, Any]]]) -> str:
    out = []
    for setting, title in SETTINGS.items():
        rows = []
        for arm in (a for a in ARMS if a in data):
            runs = data[arm]
            m = seed_mean(runs, "test", setting)
            rows.append(
                [f"**{arm}** (mean of {len(runs)} seeds)"] + [ci_cell(m[r]) for r in REGIONS]
            )
            for seed, res in sorted(runs.items()):
                rows.append(
                    [f"{arm} seed {seed}"]
                    + [ci_cell(np.asarray(res["test"][setting][r])) for r in REGIONS]
                )
        if "nnunet" in data and setting == "none":
            m = seed_mean(data["nnunet"], "own", "labels")
            rows.append(
                ["nnunet, its own inference (nnUNetv2_predict, no TTA)"]
                + [ci_cell(m[r]) for r in REGIONS]
            )
        if "nnunet" in data and setting == "medai_post":
            m = seed_mean(data["nnunet"], "own", "probs_medai_post")
            rows.append(
                ["nnunet, its own probabilities + medai's post-processing"]
                + [ci_cell(m[r]) for r in REGIONS]
            )
        out.append(f"Test Dice, {title}: mean [95 % CI]\n\n" + table(["arm", *REGIONS], rows))
    return "\n\n".join(out)


def paired_tables(data: dict[str, dict[int, dict[str, Any]]]) -> str:
    if "medai" not in data:
        return ""
    out = []
    for setting, title in SETTINGS.items():
        rows = []
        for peer in (p for p in ARMS if p != "medai" and p in data):
            ids = common_ids(data["medai"], data[peer])
            a = seed_mean(data["medai"], "test", setting, ids=ids)
            b = seed_mean(data[peer], "test", setting, ids=ids)
            label = f"medai − {peer} (seed means, n={len(ids)})"
            rows.append([label] + [diff_cell(a[r], b[r]) for r in REGIONS])
            for seed in sorted(set(data["medai"]) & set(data[peer])):
                ta = values(data["medai"][seed], ("test", setting), ids)
                tb = values(data[peer][seed], ("test", setting), ids)
                rows.append([f"seed {seed}"] + [diff_cell(ta[r], tb[r]) for r in REGIONS])
        out.append(
            f"Paired differences, {title}: medai − peer [95 % CI], Wilcoxon p\n\n"
            + table(["comparison", *REGIONS], rows)
        )
    return "\n\n".join(out)


def ablation_table(data: dict[str, dict[int, dict[str, Any]]]) -> str:
    if "medai" not in data:
        return ""
    runs = data["medai"]
    full = seed_mean(runs, "ablation", "full")
    rows = []
    for key, title in ABLATION.items():
        m = seed_mean(runs, "ablation", key)
        cells = [
            f"{m[r].mean():.3f}" + ("" if key == "full" else f" ({diff_cell(m[r], full[r])})")
            for r in REGIONS
        ]
        rows.append([title, *cells])
    return (
        "medai ablation, test Dice (seed means); in brackets: variant − full [95 % CI], "
        "Wilcoxon p\n\n" + table(["inference", *REGIONS], rows)
    )


def curves(data: dict[str, dict[int, dict[str, Any]]], key: str = "none") -> dict[str, Any]:
    """arm → mean time and mean Dice per snapshot mark reached by every seed.

    A snapshot is taken at the first step after its mark, so a slow arm (one long step)
    can skip marks; only marks every seed of the arm has are averaged.
    """
    out = {}
    for arm, runs in data.items():
        per_seed = [{s["mark_s"]: s for s in res["snapshots"]} for res in runs.values()]
        marks = sorted(set.intersection(*(set(p) for p in per_seed)))
        t = [float(np.mean([p[m]["t_s"] for p in per_seed])) for m in marks]
        d = [float(np.mean([p[m][key]["mean"] for p in per_seed])) for m in marks]
        seeds = [[(s["t_s"], s[key]["mean"]) for s in res["snapshots"]] for res in runs.values()]
        out[arm] = {"t": t, "dice": d, "seeds": seeds}
    return out


def _first(points: list[tuple[float, float]], level: float) -> float | None:
    return next((t for t, d in points if d >= level), None)


def time_to_dice_table(cur: dict[str, Any]) -> str:
    rows = []
    for arm in (a for a in ARMS if a in cur):
        c = cur[arm]
        cells = []
        for level in LEVELS:
            hit = _first(list(zip(c["t"], c["dice"], strict=True)), level)
            seeds = [_first(p, level) for p in c["seeds"]]
            each = ", ".join("–" if t is None else f"{t / 60:.1f}" for t in seeds)
            mean = f"{hit / 60:.1f} min" if hit is not None else "not reached"
            cells.append(f"{mean} ({each})")
        best = max(c["dice"]) if c["dice"] else float("nan")
        rows.append([arm, *cells, f"{best:.3f}"])
    return (
        "Time to reach a validation mean Dice (WT/TC/ET, threshold only): first snapshot of "
        "the seed-mean curve at or above the level; in brackets each seed's own (min; – not "
        "reached)\n\n" + table(["arm", *(f"≥ {v}" for v in LEVELS), "best snapshot"], rows)
    )


def plot(cur: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for arm in (a for a in ARMS if a in cur):
        c = cur[arm]
        (line,) = ax.plot(np.asarray(c["t"]) / 60, c["dice"], marker="o", lw=2, label=arm)
        for seed in c["seeds"]:
            ax.plot(
                [p[0] / 60 for p in seed],
                [p[1] for p in seed],
                lw=0.6,
                alpha=0.35,
                color=line.get_color(),
            )
    ax.set_xlabel("arm wall clock (min), planning, probing and caching included")
    ax.set_ylabel("validation Dice, mean of WT/TC/ET")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Time to Dice: weight snapshots scored with one inference protocol")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _before_first_step(tr: dict[str, Any]) -> float:
    """Arm clock spent before training: planning/probe + preprocessing, or caching."""
    if tr["arm"] == "medai":
        return float(tr["plan_s"] + tr["preprocess_s"])
    if tr["arm"] == "nnunet":
        return float(tr["first_step_at_s"])
    return float(tr["cache_s"])


def run_table(data: dict[str, dict[int, dict[str, Any]]]) -> str:
    rows = []
    for arm in (a for a in ARMS if a in data):
        for seed, res in sorted(data[arm].items()):
            tr = res["train"]
            extra = tr.get("architecture") or tr.get("plans", "")
            rows.append(
                [
                    f"{arm} seed {seed}",
                    f"{tr['wall_s']:.0f}",
                    f"{_before_first_step(tr):.0f}",
                    str(tr["samples"]),
                    f"{tr['samples_per_s']:.2f}",
                    f"{res['et_rule']['threshold_ml']:g}",
                    str(extra),
                ]
            )
    return "Runs\n\n" + table(
        ["run", "wall clock s", "before training s", "samples", "samples/s", "ET rule mL", "notes"],
        rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    data = load(args.folder)
    cur = curves(data)
    parts = [
        run_table(data),
        dice_tables(data),
        paired_tables(data),
        ablation_table(data),
        time_to_dice_table(cur),
    ]
    text = "\n\n".join(p for p in parts if p) + "\n"
    print(text)
    (args.md or args.folder / "report.md").write_text(text)
    if args.png:
        plot(cur, args.png)
        print(f"figure: {args.png}")


if __name__ == "__main__":
    main()
