"""Like-for-like segmentation benchmark: medai vs nnU-Net v2, a plain MONAI UNet loop and
the MONAI BraTS tutorial recipe, several seeds, one inference protocol, paired statistics.

Protocol: one seeded synthetic cohort and one fixed split; every arm trains one after
another on the benchmark core under the same wall-clock budget, counted from the arm's
start (planning, probing, preprocessing and caching included) and saves weight snapshots
every ``--snap-every`` seconds of that clock. Afterwards every network goes through the
same scorer (``seg_score.py``). Results are written per (arm, seed) as each finishes,
and finished ones are skipped on restart.

    bash benchmarks/nnunet_setup.sh          # once: the nnU-Net peer in /tmp/peer_nnunet
    taskset -c 1 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/seg_benchmark.py --work /tmp/segbench --budget 8m
    .venv/bin/python benchmarks/seg_report.py /tmp/segbench --png docs/img/seg_time_to_dice.png

Each (arm, seed) holds ``/tmp/medai_bench.lock`` while it trains and while it is scored.
Scoring is not timed, so it can run beside training on the other core: start one process
with ``--phase train`` on the benchmark core and one with ``--phase score`` (no lock) on
the other; the scorer waits for each trained run in turn. Several scorers can share the
work (each claims a run before scoring it; ``claimed/`` holds the claims).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import seg_arm_medai
import seg_arm_nnunet
import seg_arms_monai
from medai.preprocess import parse_duration
from seg_common import (
    LabelledCase,
    Split,
    bench_lock,
    load_cases,
    make_split,
    msd_root,
    one_thread,
    write_json,
)
from seg_score import score_run

ARMS = ("medai", "nnunet", "monai_unet", "monai_tutorial")


def train_one(
    arm: str, seed: int, args: argparse.Namespace, root: Path, split: Split, val: list[LabelledCase]
) -> dict[str, object]:
    out = args.work / "runs" / f"{arm}_s{seed}"
    budget = parse_duration(args.budget)
    if arm == "medai":
        return seg_arm_medai.train_medai(
            root, split, seed=seed, budget_s=budget, out=out, snap_every_s=args.snap_every
        )
    if arm == "nnunet":
        return seg_arm_nnunet.train_nnunet(
            split,
            args.work / "nnunet_raw",
            seed=seed,
            budget_s=budget,
            out=out,
            snap_every_s=args.snap_every,
        )
    return seg_arms_monai.train_monai(
        arm, root, split, val, seed=seed, budget_s=budget, out=out, snap_every_s=args.snap_every
    )


def claim(marker: Path) -> bool:
    """True for the one scorer process that creates ``marker`` (several may run at once)."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def score_one(
    arm: str,
    name: str,
    trained_path: Path,
    scored_path: Path,
    args: argparse.Namespace,
    val: list[LabelledCase],
    test: list[LabelledCase],
) -> None:
    trained = json.loads(trained_path.read_text())
    print(f"[score {name}] wall {trained['wall_s']}s", flush=True)
    result = score_run(
        arm, trained, val, test, seed_dir=args.work / "runs" / name, raw=args.work / "nnunet_raw"
    )
    write_json(scored_path, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/segbench/glioma70"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/segbench"))
    ap.add_argument("--budget", default="8m", help="wall clock per arm and seed")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--cases", type=int, default=70)
    ap.add_argument("--n-train", type=int, default=30)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--snap-every", type=float, default=60.0)
    ap.add_argument("--test-limit", type=int, default=0, help="score only N test cases (dev)")
    ap.add_argument("--no-lock", action="store_true", help="dev runs on core 0: no bench lock")
    ap.add_argument(
        "--phase",
        choices=("both", "train", "score"),
        default="both",
        help="train only (holds the lock), score only (waits for trained runs, no lock), both",
    )
    args = ap.parse_args()
    one_thread()
    root = msd_root(args.data, args.cases, 0)
    split = make_split(root, args.n_train, args.n_test)
    write_json(args.work / "split.json", split.as_dict())
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {ARMS}")
    test_ids = split.test[: args.test_limit] if args.test_limit else split.test
    val = load_cases(root, split.val)
    test = load_cases(root, test_ids)
    if "nnunet" in arms:
        seg_arm_nnunet.write_raw(root, split, args.work / "nnunet_raw")
    print(
        f"cohort {root}: fit {len(split.fit)}, val {len(split.val)}, test {len(test)}; "
        f"budget {args.budget} per arm; seeds {args.seeds}; arms {arms}",
        flush=True,
    )
    names = [f"{arm}_s{seed}" for seed in (int(s) for s in args.seeds.split(",")) for arm in arms]
    for name in names:
        arm, seed = name.rsplit("_s", 1)[0], int(name.rsplit("_s", 1)[1])
        trained_path = args.work / "trained" / f"{name}.json"
        scored_path = args.work / "scored" / f"{name}.json"
        failed_path = args.work / "failed" / name
        if scored_path.is_file() or (args.phase == "train" and trained_path.is_file()):
            continue
        try:
            if args.phase == "score":
                while not (trained_path.is_file() or failed_path.is_file()):
                    time.sleep(10)
                if failed_path.is_file() or not claim(args.work / "claimed" / name):
                    continue
                score_one(arm, name, trained_path, scored_path, args, val, test)
                continue
            with bench_lock(enabled=not args.no_lock):
                if not trained_path.is_file():
                    print(f"[train {name}] {time.strftime('%H:%M:%S')}", flush=True)
                    write_json(trained_path, train_one(arm, seed, args, root, split, val))
                if args.phase == "both":
                    score_one(arm, name, trained_path, scored_path, args, val, test)
        except Exception:  # one arm failing must not stop the others
            traceback.print_exc()
            print(f"[failed {name}]", flush=True)
            failed_path.parent.mkdir(parents=True, exist_ok=True)
            failed_path.write_text(traceback.format_exc())
    print("done", flush=True)


if __name__ == "__main__":
    main()
