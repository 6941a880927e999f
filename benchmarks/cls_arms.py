"""The two arms of the classification benchmark (``cls_vs_monai.py``), one per process.

``medai``  ``make_image_plan(time budget)`` (its throughput probe timed inside the arm's
           budget) → ``train`` → ``load_run`` + ``predict_image_splits``: calibrated
           probabilities averaged over the plan's test-time passes, decided at the
           Youden threshold that finalisation stored in the plan.
``monai``  a plain MONAI loop as a user would write it: DenseNet121 (full width,
           ``out_channels=2``), Adam lr 1e-4, cross-entropy, random flips on every
           spatial axis, medai's batch size, validation ROC-AUC after every epoch, the
           best epoch kept; the Youden threshold chosen on validation with medai's
           ``choose_threshold`` (the same policy as medai's).

Both read the same cached fixed-size inputs (``preprocess_fixed`` with the input
settings medai's planner chooses), so only the training recipe differs. Run as a
script, one arm and seed per process, so peak RSS is the arm's own:

    python benchmarks/cls_arms.py --out OUT --task grade --arm monai --seed 0 --budget-s 120
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from medai.data import Dataset
from medai.evaluation.classification import compute_roc_auc
from medai.evaluation.thresholds import choose_threshold
from medai.preprocess.fixed import preprocess_fixed
from medai.preprocess.plan import Plan, apply_overrides
from medai.preprocess.task_plan import InputPlan

ARMS = ("medai", "monai")
F32 = NDArray[np.float32]


# -- shared by both arms and the driver ---------------------------------------------------
def manifest(out: Path, task: str) -> Path:
    return out / "data" / task / "dataset.yaml"


def cache_dir(out: Path, task: str) -> Path:
    return out / "cache" / task


def input_plan(dataset: Dataset, budget_s: float) -> Plan:
    """medai's plan without the probe: its input settings and batch size are what both
    arms use (neither depends on the probe)."""
    from medai.training.planner_image import make_image_plan

    return make_image_plan(dataset, time_budget_s=budget_s, device="cpu", probe=False)


def fixed_settings(plan: Plan) -> InputPlan:
    return plan.input


def split_cases(dataset: Dataset) -> dict[str, list[Any]]:
    splits = dataset.splits
    return {
        name: [dataset.case(i) for i in getattr(splits, name)]
        for name in ("train", "validation", "test")
    }


def truth_of(dataset: Dataset, cases: list[Any]) -> NDArray[np.int64]:
    """1 for the dataset's last class (medai's positive class), else 0."""
    last = dataset.classes[-1]
    return np.array([int(str(c.target) == last) for c in cases], dtype=np.int64)


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux ``ru_maxrss`` is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _split_record(
    dataset: Dataset, cases: list[Any], score: NDArray[Any], decision: NDArray[Any] | None
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "ids": [c.case_id for c in cases],
        "patients": [c.patient_id for c in cases],
        "truth": truth_of(dataset, cases).tolist(),
        "score": [float(s) for s in score],
    }
    if decision is not None:
        record["decision"] = [int(d) for d in decision]
    return record


# -- medai -------------------------------------------------------------------------------
def _medai_predictions(
    run: Any, dataset: Dataset, folder: Path, cache: Path
) -> dict[str, dict[str, Any]]:
    """Validation and test records from ``predict_image_splits``' tables, checked
    against the benchmark's case order and truth encoding."""
    import pandas as pd

    from medai.pipeline_image import predict_image_splits

    cases = split_cases(dataset)
    wanted = {"validation": cases["validation"], "test": cases["test"]}
    tables = predict_image_splits(run, dataset, wanted, folder, cache_dir=cache)
    splits = {}
    for name, path in tables.items():
        table = pd.read_csv(path)
        if table["case_id"].tolist() != [c.case_id for c in wanted[name]]:
            raise RuntimeError(f"medai's {name} table is not in the split's case order")
        if table["truth"].astype(int).tolist() != truth_of(dataset, wanted[name]).tolist():
            raise RuntimeError(f"medai's {name} truth differs from the benchmark's encoding")
        decision = table["decision"].to_numpy() if name == "test" else None
        splits[name] = _split_record(dataset, wanted[name], table["output"].to_numpy(), decision)
    return splits


def run_medai(
    dataset: Dataset, *, seed: int, budget_s: float, out: Path, cache: Path
) -> dict[str, Any]:
    """Plan (probe timed), train for what is left of ``budget_s``, predict val and test."""
    from medai.inference import load_run
    from medai.training import train
    from medai.training.planner_image import make_image_plan

    t0 = time.perf_counter()
    plan = make_image_plan(
        dataset, time_budget_s=budget_s, device="cpu", overrides={"train.seed": seed}
    )
    plan_s = time.perf_counter() - t0
    left = max(budget_s - plan_s, 1.0)  # a probe longer than the budget is reported
    plan = apply_overrides(plan, {"train.time_budget_s": left})
    result = train(dataset, plan, out / "run", cache_dir=cache, device="cpu")
    wall = time.perf_counter() - t0
    run = load_run(out / "run", device="cpu")
    if run.plan.input != input_plan(dataset, budget_s).input:
        raise RuntimeError("medai's run planned other inputs than the shared cache's")
    splits = _medai_predictions(run, dataset, out / "predictions", cache)
    kpis = dict(result.kpis)
    return {
        "wall_s": round(wall, 2),
        "plan_s": round(plan_s, 2),
        "train_s": kpis["time_to_train_s"],
        "samples": kpis["samples"],
        "steps": kpis["steps"],
        "epochs": kpis["epochs"],
        "samples_per_s": kpis["samples_per_s"],
        "network": f"{run.plan.network.architecture} width {run.plan.network.width}",
        "network_reason": plan.notes.get("network_reason"),
        "batch": run.plan.train.batch_size,
        "input": run.plan.input.model_dump(mode="json"),
        "threshold": run.plan.target.threshold,
        "threshold_note": f"medai finalisation, policy {run.plan.target.policy.value}",
        "best_val_auc": (result.best_metrics or {}).get("auc"),
        "validation": splits["validation"],
        "test": splits["test"],
    }


# -- plain MONAI ------------------------------------------------------------------------------
def _arrays(dataset: Dataset, cases: list[Any], settings: InputPlan, cache: Path) -> F32:
    paths = preprocess_fixed(cases, dataset=dataset, settings=settings, cache_dir=cache)
    return np.stack([np.load(paths[c.case_id]) for c in cases]).astype(np.float32)


def _probabilities(model: torch.nn.Module, images: F32, batch: int) -> NDArray[np.float64]:
    """Softmax probability of class 1 (the dataset's last class), eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            logits = model(torch.as_tensor(images[start : start + batch]))
            out.append(torch.softmax(logits.float(), dim=1)[:, 1].numpy())
    model.train()
    return np.concatenate(out).astype(np.float64)


def _val_score(truth: NDArray[np.int64], prob: NDArray[np.float64]) -> float:
    return compute_roc_auc(truth, prob) if len(set(truth.tolist())) > 1 else float("nan")


class _MonaiLoop:
    """State of the plain loop: model, optimiser, flips, seeded order, best epoch."""

    def __init__(self, dims: int, channels: int, batch: int, seed: int) -> None:
        import monai.transforms as mt
        from monai.networks.nets import DenseNet121
        from monai.utils import set_determinism

        set_determinism(seed=seed)
        self.model = DenseNet121(spatial_dims=dims, in_channels=channels, out_channels=2)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.loss = torch.nn.CrossEntropyLoss()
        self.flips = mt.Compose([mt.RandFlip(prob=0.5, spatial_axis=a) for a in range(dims)])
        self.flips.set_random_state(seed=seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.batch = batch
        self.samples, self.steps, self.epochs, self.step_s, self.last_step = 0, 0, 0, 0.0, 0.0
        self.best: tuple[float, dict[str, torch.Tensor] | None] = (-np.inf, None)

    def step(self, x: F32, y: NDArray[np.int64]) -> None:
        t = time.perf_counter()
        flipped = np.stack([np.asarray(self.flips(img), dtype=np.float32) for img in x])
        self.opt.zero_grad()
        loss = self.loss(self.model(torch.as_tensor(flipped)), torch.as_tensor(y))
        loss.backward()
        self.opt.step()
        self.last_step = time.perf_counter() - t
        self.step_s += self.last_step
        self.samples += len(x)
        self.steps += 1

    def keep_if_best(self, score: float) -> None:
        if self.best[1] is None or score > self.best[0] or not np.isfinite(self.best[0]):
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = (score, state)


def _train_until(
    loop: _MonaiLoop,
    train: tuple[F32, NDArray[np.int64]],
    val: tuple[F32, NDArray[np.int64]],
    *,
    t0: float,
    budget_s: float,
) -> list[tuple[float, float]]:
    """Epochs (one shuffled pass in full batches: ``drop_last``, as BatchNorm needs), each
    validated; stop when the next step and validation would pass the budget. The curve."""
    (x_train, y_train), (x_val, y_val) = train, val
    val_cost, done, curve = 0.0, False, []
    while not done:
        order = torch.randperm(len(x_train), generator=loop.gen).numpy()
        full = max(len(order) // loop.batch, 1) * loop.batch
        for start in range(0, full, loop.batch):
            idx = order[start : start + loop.batch]
            loop.step(x_train[idx], y_train[idx])
            done = time.perf_counter() - t0 + 1.1 * val_cost + loop.last_step >= budget_s
            if done:
                break
        loop.epochs += 1
        tv = time.perf_counter()
        score = _val_score(y_val, _probabilities(loop.model, x_val, loop.batch))
        val_cost = time.perf_counter() - tv
        curve.append((round(time.perf_counter() - t0, 1), round(score, 4)))
        loop.keep_if_best(score if np.isfinite(score) else -np.inf)
    return curve


def run_monai(
    dataset: Dataset, *, seed: int, budget_s: float, out: Path, cache: Path
) -> dict[str, Any]:
    """Train the plain loop for ``budget_s`` (reading the cached inputs counts), keep the
    best validated epoch, choose its Youden threshold on validation, predict the test."""
    t0 = time.perf_counter()
    plan = input_plan(dataset, budget_s)
    settings, cases = fixed_settings(plan), split_cases(dataset)
    x_train = _arrays(dataset, cases["train"], settings, cache)
    y_train = truth_of(dataset, cases["train"])
    x_val = _arrays(dataset, cases["validation"], settings, cache)
    y_val = truth_of(dataset, cases["validation"])
    loop = _MonaiLoop(plan.input.spatial_dims, x_train.shape[1], plan.train.batch_size, seed)
    curve = _train_until(loop, (x_train, y_train), (x_val, y_val), t0=t0, budget_s=budget_s)
    wall = time.perf_counter() - t0
    if loop.best[1] is not None:
        loop.model.load_state_dict(loop.best[1])
    torch.save(loop.model.state_dict(), out / "best.pt")
    p_val = _probabilities(loop.model, x_val, loop.batch)
    threshold, note = _youden(y_val, p_val)
    x_test = _arrays(dataset, cases["test"], settings, cache)
    p_test = _probabilities(loop.model, x_test, loop.batch)
    return {
        "wall_s": round(wall, 2),
        "plan_s": 0.0,
        "train_s": round(wall, 2),
        "samples": loop.samples,
        "steps": loop.steps,
        "epochs": loop.epochs,
        "samples_per_s": round(loop.samples / max(loop.step_s, 1e-9), 3),
        "network": "MONAI DenseNet121 width 1",
        "batch": loop.batch,
        "input": plan.input.model_dump(mode="json"),
        "threshold": threshold,
        "threshold_note": note,
        "best_val_auc": None if not np.isfinite(loop.best[0]) else loop.best[0],
        "val_curve": curve,
        "validation": _split_record(dataset, cases["validation"], p_val, None),
        "test": _split_record(dataset, cases["test"], p_test, p_test >= threshold),
    }


def _youden(truth: NDArray[np.int64], prob: NDArray[np.float64]) -> tuple[float, str]:
    """medai's Youden threshold on validation; 0.5 (said so) where none can be chosen."""
    try:
        return choose_threshold(truth, prob, policy="youden").value, "youden on validation"
    except ValueError as exc:
        return 0.5, f"0.5: no Youden threshold on validation ({exc})"


# -- one process per (task, arm, seed) -----------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--arm", choices=ARMS, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--budget-s", type=float, required=True)
    ap.add_argument("--result", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dataset = Dataset.load(manifest(args.out, args.task))
    run_dir = args.out / "runs" / f"{args.task}_{args.arm}_s{args.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    run = run_medai if args.arm == "medai" else run_monai
    record = run(
        dataset,
        seed=args.seed,
        budget_s=args.budget_s,
        out=run_dir,
        cache=cache_dir(args.out, args.task),
    )
    record.update(
        task=args.task,
        arm=args.arm,
        seed=args.seed,
        budget_s=args.budget_s,
        peak_rss_mb=peak_rss_mb(),
        threads=os.environ.get("OMP_NUM_THREADS"),
    )
    args.result.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, args.result)


if __name__ == "__main__":
    main()
