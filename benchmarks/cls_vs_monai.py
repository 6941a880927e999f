"""medai's image → label runs against a plain MONAI loop on two tasks (issue 11, item 8).

Tasks, from one seeded synthetic cohort (cohort seed 0, 3 mm) split by patient
(test 25 %, validation 15 %, stratified by grade, split seed 0), as the demo does:

- ``grade``: tumour grade HGG / LGG from the 3D MRI (4 channels), via
  ``medai.data.derive.target_dataset(column="grade")``;
- ``slices``: tumour present or not on 2D axial FLAIR slices, via
  ``medai.data.slice_dataset`` (6 slices per case, half with tumour).

Arms (``cls_arms.py``): ``medai`` (planner with its throughput probe → ``train`` →
calibrated, test-time-averaged predictions at its stored Youden threshold) and ``monai``
(DenseNet121, Adam 1e-4, cross-entropy, random flips, best epoch on validation AUC,
Youden threshold on validation with medai's ``choose_threshold``). Same cases, same
train / validation / test split, same wall-clock budget per arm and seed (medai's
planning and probe count inside it), same threshold policy, and the same preprocessed
inputs: both read one ``preprocess_fixed`` cache made before the arms, with the input
settings medai's planner picks, so only the training recipe differs (network width,
optimiser, loss, augmentation, calibration, test-time passes). Each (task, arm, seed)
runs in its own process (peak RSS is its own) with one thread, and is written to
``OUT/results/`` as it finishes; finished ones are skipped when the script is rerun.

    flock /tmp/medai_bench.lock taskset -c 1 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/cls_vs_monai.py /tmp/clsbench
    .venv/bin/python benchmarks/cls_vs_monai.py /tmp/clsbench-smoke --smoke   # 16 cases, 15 s

The table goes to ``OUT/report.md`` and stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cls_report
from cls_arms import ARMS, cache_dir, fixed_settings, input_plan, manifest, split_cases

HERE = Path(__file__).resolve().parent
TASKS = ("grade", "slices")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def make_data(out: Path, *, cases: int, spacing: float) -> None:
    """Cohort, patient split and the two derived datasets under ``out`` (once)."""
    from medai.data import import_msd, slice_dataset, split_dataset, target_dataset
    from medai.data.synth import generate_cohort

    if manifest(out, "grade").is_file() and manifest(out, "slices").is_file():
        return
    msd = out / "cohort" / "Task01_BrainTumour"
    if not (msd / "dataset.json").is_file():
        print(f"generating {cases} cases at {spacing} mm (cohort seed 0) ...", flush=True)
        generate_cohort(out / "cohort", cases=cases, spacing=spacing, seed=0)
    parent = import_msd(msd)
    parent = split_dataset(parent, test=0.25, validation=0.15, stratify="grade", seed=0)
    grade = target_dataset(parent, column="grade", task="classification")
    manifest(out, "grade").parent.mkdir(parents=True, exist_ok=True)
    grade.save(manifest(out, "grade"))
    slice_dataset(parent, manifest(out, "slices").parent, seed=0)


def prepare_inputs(out: Path, task: str, budget_s: float) -> list[str]:
    """Fill the task's shared input cache (untimed, the same for both arms); a summary."""
    from medai.data import Dataset
    from medai.preprocess.fixed import preprocess_fixed

    dataset = Dataset.load(manifest(out, task))
    plan = input_plan(dataset, budget_s)
    settings = fixed_settings(plan)
    t0 = time.perf_counter()
    parts = []
    for name, cases in split_cases(dataset).items():
        preprocess_fixed(cases, dataset=dataset, settings=settings, cache_dir=cache_dir(out, task))
        counts = Counter(str(c.target) for c in cases)
        patients = len({c.patient_id for c in cases})
        parts.append(f"{name} {len(cases)} ({patients} patients; {dict(sorted(counts.items()))})")
    inp = plan.input
    return [
        f"- **{task}**: {cls_report.TASK_TITLES[task]}. Classes {dataset.classes} "
        f"(positive for AUC: {dataset.classes[-1]!r}). " + "; ".join(parts) + ".",
        f"  Input (medai's planner, both arms): {inp.spatial_dims}D, size {list(inp.size)}, "
        f"spacing {inp.spacing}, crop to foreground {inp.crop_to_foreground}, z-score; "
        f"batch {plan.train.batch_size}. Preprocessing {time.perf_counter() - t0:.0f} s "
        "(shared, outside the arms' budget).",
    ]


def run_arm(out: Path, task: str, arm: str, seed: int, budget_s: float) -> Path | None:
    """One (task, arm, seed) in its own process; its result file, or None if it failed."""
    name = f"{task}_{arm}_s{seed}"
    result = out / "results" / f"{name}.json"
    if result.is_file():
        import json

        done = json.loads(result.read_text())["budget_s"]
        if done != budget_s:
            raise SystemExit(f"{result} was run with a {done:g} s budget; use another OUT")
        return result
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
    cmd = [sys.executable, str(HERE / "cls_arms.py"), "--out", str(out), "--task", task]
    cmd += ["--arm", arm, "--seed", str(seed), "--budget-s", str(budget_s)]
    cmd += ["--result", str(result)]
    print(f"[{time.strftime('%H:%M:%S')} {name}] budget {budget_s:g} s", flush=True)
    with log.open("w") as handle:
        code = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0 or not result.is_file():
        tail = log.read_text().splitlines()[-25:]
        print(f"[failed {name}] exit {code}; log {log}:\n" + "\n".join(tail), flush=True)
        return None
    return result


def load_results(out: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    import json

    found = {}
    for path in sorted((out / "results").glob("*.json")):
        r = json.loads(path.read_text())
        found[(r["task"], r["arm"], int(r["seed"]))] = r
    return found


def header(args: argparse.Namespace, described: list[str]) -> list[str]:
    return [
        "# Image classification: medai against a plain MONAI loop",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC · {args.cases} synthetic cases "
        f"at {args.spacing} mm (cohort seed 0, split seed 0) · {args.budget_s:g} s wall clock "
        f"per arm and seed · training seeds {args.seeds} · one thread "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} in the driver, 1 in "
        "every arm) · pinned by `taskset`: "
        + ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        + (" · **SMOKE run: the figures say nothing**" if args.smoke else ""),
        "",
        *described,
        "",
        "What each arm measures: **medai** = `make_image_plan` (its throughput probe inside "
        "the budget) → `train` → `predict_image_splits` (temperature-calibrated probability "
        "averaged over the plan's test-time passes, decision at the Youden threshold its "
        "finalisation stored). **monai** = the plain loop a MONAI user writes: DenseNet121 at "
        "full width, 2 outputs, Adam 1e-4, cross-entropy, random flips on every axis, the "
        "best epoch on validation AUC, Youden threshold chosen on validation with medai's "
        "`choose_threshold`, one forward pass. Both read the same cached inputs, so only the "
        "training recipe differs. Samples/s: training samples per second of optimiser steps.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="work folder: data, runs, results, report.md")
    ap.add_argument("--budget-s", type=float, default=120.0, help="wall clock per arm and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cases", type=int, default=120)
    ap.add_argument("--spacing", type=float, default=3.0)
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    ap.add_argument("--smoke", action="store_true", help="16 cases, 15 s budget, seed 0")
    args = ap.parse_args()
    if args.smoke:
        args.cases, args.budget_s, args.seeds = 16, 15.0, [0]
    for var in THREAD_VARS:
        os.environ.setdefault(var, "1")
    out = args.out.resolve()
    make_data(out, cases=args.cases, spacing=args.spacing)
    described = [line for t in args.tasks for line in prepare_inputs(out, t, args.budget_s)]
    for seed in args.seeds:
        for task in args.tasks:
            for arm in ARMS:
                run_arm(out, task, arm, seed, args.budget_s)
    wanted = {(t, a, s) for t in args.tasks for a in ARMS for s in args.seeds}
    results = {k: v for k, v in load_results(out).items() if k in wanted}
    report = cls_report.render(results, header(args, described))
    (out / "report.md").write_text(report)
    print(report, flush=True)


if __name__ == "__main__":
    main()
