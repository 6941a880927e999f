"""medai segmentation vs the MONAI BraTS tutorial pipeline and a plain MONAI UNet loop.

Same synthetic cohort, same split (first N train / last M test by case id; the
training cases are further split into fit / validation by medai's deterministic
hold-out, used by every arm), same wall-clock training budget, this machine.

Arms:
  monai_tutorial  SegResNet-16 (dropout 0.2), the tutorial's transforms (random
                  spatial crop scaled to this spacing, flips, non-zero channel-wise
                  normalisation, intensity scale/shift), DiceLoss(squared_pred,
                  sigmoid), Adam 1e-4 + cosine; label conversion *corrected* for MSD
                  labels (TC = 2|3, WT = 1|2|3, ET = 3).
  monai_unet      MONAI UNet 16-256 channels, 2 residual units, 64³ foreground-biased
                  patches, flips, DiceLoss(sigmoid), Adam 1e-3.
  medai           medai.training.make_plan(time budget) → train → predict_case.

Prints Dice WT/TC/ET (mean and 95 % bootstrap CI over test cases, BraTS empty-reference
rule), samples/s, and the time each arm needs to reach a peer's final validation Dice,
as ratios. Example:

    .venv/bin/python benchmarks/seg_vs_monai_tutorial.py --data /tmp/glioma40 --budget 10m
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medai.evaluation.bootstrap import bootstrap_ci
from medai.inference import load_run, predict_case, region_dice
from medai.preprocess import BRATS_REGIONS, as_cohort, parse_duration
from medai.training import make_plan, split_train_val, train

REGIONS = list(BRATS_REGIONS)


# -- data ------------------------------------------------------------------------------
def msd_root(data: Path, cases: int, seed: int) -> Path:
    """The MSD folder under ``data``; generate the cohort there if it is missing."""
    for cand in (data, data / "Task01_BrainTumour"):
        if (cand / "dataset.json").is_file():
            return cand
    from medai.data.synth import generate_cohort

    print(f"generating a {cases}-case 2 mm cohort in {data} ...", flush=True)
    generate_cohort(data, cases=cases, spacing=2.0, seed=seed)
    return msd_root(data, cases, seed)


def split(root: Path, n_train: int, n_test: int) -> dict[str, list[str]]:
    ids = sorted(c.case_id for c in as_cohort(root).cases)
    if len(ids) < n_train + n_test:
        raise SystemExit(f"cohort has {len(ids)} cases; need {n_train + n_test}")
    train_ids, test_ids = ids[:n_train], ids[len(ids) - n_test :]
    fit, val = split_train_val(train_ids, fraction=0.2, seed=0)
    return {"train": train_ids, "fit": fit, "val": val, "test": test_ids}


def _items(root: Path, ids: Sequence[str]) -> list[dict[str, str]]:
    meta = json.loads((root / "dataset.json").read_text())
    by_id = {Path(e["image"]).name.split(".")[0]: e for e in meta["training"]}
    return [
        {"image": str(root / by_id[i]["image"]), "label": str(root / by_id[i]["label"])}
        for i in ids
    ]


def _msd_regions() -> Any:
    """The tutorial's label conversion, corrected for MSD labels (3 is enhancing)."""
    from monai.transforms import MapTransform

    class ToRegions(MapTransform):
        def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
            d = dict(data)
            for key in self.keys:
                lab = d[key][0] if d[key].ndim == 4 else d[key]
                d[key] = torch.stack([lab >= 1, (lab == 2) | (lab == 3), lab == 3]).float()
            return d

    return ToRegions(["label"])


def _base_transforms(spacing: float) -> list[Any]:
    from monai import transforms as mt

    return [
        mt.LoadImaged(["image", "label"]),
        mt.EnsureChannelFirstd("image"),
        mt.EnsureTyped(["image", "label"]),
        _msd_regions(),
        mt.Orientationd(["image", "label"], axcodes="RAS"),
        mt.Spacingd(["image", "label"], pixdim=(spacing,) * 3, mode=("bilinear", "nearest")),
        mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
    ]


# -- evaluation ------------------------------------------------------------------------
def dice_per_region(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {r: region_dice(pred[i] > 0.5, ref[i] > 0.5) for i, r in enumerate(REGIONS)}


def summarise(per_case: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for region, values in per_case.items():
        v = np.asarray(values, dtype=np.float64)
        ci = bootstrap_ci(
            lambda _t, s: float(np.mean(s)),
            np.zeros(v.size),
            v,
            method="percentile",
            n_resamples=2000,
            seed=0,
        )
        out[region] = {"mean": ci.estimate, "low": ci.low, "high": ci.high}
    return out


# -- a generic peer loop with a wall-clock budget -----------------------------------------
def _infer(model: torch.nn.Module, image: torch.Tensor, roi: tuple[int, int, int]) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    model.eval()
    with torch.no_grad():
        logits = sliding_window_inference(image[None], roi, 1, model, overlap=0.5)
    model.train()
    return torch.sigmoid(torch.as_tensor(logits))[0].numpy()


def peer_run(
    name: str,
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[float], float],
    train_ds: Any,
    val_ds: Any,
    test_ds: Any,
    *,
    batch: int,
    roi: tuple[int, int, int],
    budget_s: float,
) -> dict[str, Any]:
    """Train until ``budget_s`` (validation included), keep the best, test it."""
    from monai.data import DataLoader

    torch.manual_seed(0)
    loader = DataLoader(train_ds, batch_size=batch, shuffle=True, num_workers=0)
    start, samples, step_time, curve = time.perf_counter(), 0, 0.0, []
    val_every, next_val, best = budget_s / 10, budget_s / 10, (-1.0, None)
    val_cost = 0.0
    while True:
        for batch_data in loader:
            t = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(min((t - start) / budget_s, 1.0))
            optimizer.zero_grad()
            loss = loss_fn(model(batch_data["image"]), batch_data["label"])
            loss.backward()
            optimizer.step()
            step_time += time.perf_counter() - t
            samples += int(batch_data["image"].shape[0])
            elapsed = time.perf_counter() - start
            if elapsed >= next_val or elapsed + val_cost >= budget_s:
                tv = time.perf_counter()
                scores = [
                    dice_per_region(_infer(model, d["image"], roi), d["label"].numpy())
                    for d in val_ds
                ]
                val_cost = time.perf_counter() - tv
                mean = float(np.mean([np.mean(list(s.values())) for s in scores]))
                curve.append((time.perf_counter() - start, mean))
                print(f"  {name}: t={curve[-1][0]:.0f}s val mean Dice {mean:.3f}", flush=True)
                if mean > best[0]:
                    best = (mean, {k: v.clone() for k, v in model.state_dict().items()})
                next_val += val_every
            if time.perf_counter() - start + val_cost >= budget_s:
                break
        else:
            continue
        break
    if best[1] is not None:
        model.load_state_dict(best[1])
    per_case: dict[str, list[float]] = {r: [] for r in REGIONS}
    for d in test_ds:
        for r, v in dice_per_region(_infer(model, d["image"], roi), d["label"].numpy()).items():
            per_case[r].append(v)
    return {
        "name": name,
        "curve": curve,
        "samples": samples,
        "samples_per_s": samples / max(step_time, 1e-9),
        "test": per_case,
    }


def _cosine(base: float) -> Callable[[float], float]:
    return lambda p: base * 0.5 * (1 + math.cos(math.pi * p))


def arm_monai_tutorial(
    root: Path, sp: dict[str, list[str]], budget_s: float, spacing: float
) -> dict[str, Any]:
    from monai import transforms as mt
    from monai.data import CacheDataset
    from monai.losses import DiceLoss
    from monai.networks.nets import SegResNet

    shape = as_cohort(root).cases[0].load_image().shape  # the tutorial's ROI, scaled, ≤ image
    roi_train = tuple(
        min(round(s / spacing), n) // 8 * 8 for s, n in zip((224, 224, 144), shape, strict=True)
    )
    roi_infer = tuple(round(s / spacing) // 8 * 8 for s in (240, 240, 160))
    rand = [
        mt.RandSpatialCropd(["image", "label"], roi_size=roi_train, random_size=False),
        mt.RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        mt.RandFlipd(["image", "label"], prob=0.5, spatial_axis=1),
        mt.RandFlipd(["image", "label"], prob=0.5, spatial_axis=2),
        mt.RandScaleIntensityd("image", factors=0.1, prob=1.0),
        mt.RandShiftIntensityd("image", offsets=0.1, prob=1.0),
    ]
    base = _base_transforms(spacing)
    train_ds = CacheDataset(_items(root, sp["fit"]), mt.Compose(base + rand), progress=False)
    val_ds = CacheDataset(_items(root, sp["val"]), mt.Compose(base), progress=False)
    test_ds = CacheDataset(_items(root, sp["test"]), mt.Compose(base), progress=False)
    model = SegResNet(
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
        init_filters=16,
        in_channels=4,
        out_channels=3,
        dropout_prob=0.2,
    )
    loss = DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, sigmoid=True)
    opt = torch.optim.Adam(model.parameters(), 1e-4, weight_decay=1e-5)
    return peer_run(
        "monai_tutorial",
        model,
        loss,
        opt,
        _cosine(1e-4),
        train_ds,
        val_ds,
        test_ds,
        batch=1,
        roi=roi_infer,
        budget_s=budget_s,
    )


def arm_monai_unet(
    root: Path, sp: dict[str, list[str]], budget_s: float, spacing: float
) -> dict[str, Any]:
    from monai import transforms as mt
    from monai.data import CacheDataset
    from monai.losses import DiceLoss
    from monai.networks.nets import UNet

    rand = [
        mt.RandCropByPosNegLabeld(
            ["image", "label"], "label", (64, 64, 64), pos=1, neg=1, num_samples=1
        ),
        mt.RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        mt.RandFlipd(["image", "label"], prob=0.5, spatial_axis=1),
        mt.RandFlipd(["image", "label"], prob=0.5, spatial_axis=2),
    ]
    base = _base_transforms(spacing)
    train_ds = CacheDataset(_items(root, sp["fit"]), mt.Compose(base + rand), progress=False)
    val_ds = CacheDataset(_items(root, sp["val"]), mt.Compose(base), progress=False)
    test_ds = CacheDataset(_items(root, sp["test"]), mt.Compose(base), progress=False)
    model = UNet(3, 4, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    return peer_run(
        "monai_unet",
        model,
        DiceLoss(sigmoid=True),
        opt,
        lambda _p: 1e-3,
        train_ds,
        val_ds,
        test_ds,
        batch=2,
        roi=(64, 64, 64),
        budget_s=budget_s,
    )


def arm_medai(root: Path, sp: dict[str, list[str]], budget_s: float, out: Path) -> dict[str, Any]:
    cohort = as_cohort(root)
    cohort.train_ids = list(sp["train"])  # fingerprint and plan on training cases only
    t0 = time.perf_counter()
    plan = make_plan(cohort, time_budget_s=budget_s)
    plan_s = time.perf_counter() - t0
    print(
        f"  medai: planned {plan.network.architecture} {plan.train.patch_size} in "
        f"{plan_s:.0f}s; probe {plan.notes.get('samples_per_s')}",
        flush=True,
    )
    run_dir = out / "medai_run"
    result = train(cohort, plan, run_dir, case_ids=sp["train"])
    rows = json.loads((run_dir / "metrics.json").read_text())
    curve = [(r["elapsed_s"], r["val_dice_mean"]) for r in rows if "val_dice_mean" in r]
    run = load_run(run_dir)
    per_case: dict[str, list[float]] = {r: [] for r in REGIONS}
    for case in cohort.subset(sp["test"]):
        pred = predict_case(run, case.load_image()).labels.array[0]
        ref = case.load_label().array[0]
        for r, ids in BRATS_REGIONS.items():
            per_case[r].append(region_dice(np.isin(pred, ids), np.isin(ref, ids)))
    return {
        "name": "medai",
        "curve": curve,
        "samples": result.kpis["samples"],
        "samples_per_s": result.kpis["samples_per_s"],
        "test": per_case,
        "plan_s": plan_s,
        "kpis": result.kpis,
    }


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, v in curve if v >= target - 1e-9), None)


def report(results: list[dict[str, Any]]) -> None:
    print("\nTest Dice (mean, 95% bootstrap CI over test cases; BraTS empty rule)")
    print(f"{'arm':16s}" + "".join(f"{r:>24s}" for r in REGIONS) + f"{'samples/s':>12s}")
    for res in results:
        s = summarise(res["test"])
        res["summary"] = s
        cells = "".join(
            f"{s[r]['mean']:>8.3f} [{s[r]['low']:.3f}-{s[r]['high']:.3f}]" for r in REGIONS
        )
        print(f"{res['name']:16s}{cells}{res['samples_per_s']:>12.2f}")
    medai = next((r for r in results if r["name"] == "medai"), None)
    if medai is None:
        return
    for peer in (r for r in results if r["name"] != "medai"):
        if not peer["curve"]:
            continue
        t_peer, v_peer = peer["curve"][-1]
        t_medai = time_to_reach(medai["curve"], v_peer)
        speed = f"{t_peer / t_medai:.2f}x" if t_medai else "not reached"
        ratios = " ".join(
            f"{r} {medai['summary'][r]['mean'] / max(peer['summary'][r]['mean'], 1e-9):.2f}"
            for r in REGIONS
        )
        sps = medai["samples_per_s"] / max(peer["samples_per_s"], 1e-9)
        print(
            f"medai vs {peer['name']}: time to its final val Dice {v_peer:.3f}: {speed}; "
            f"Dice ratio {ratios}; samples/s ratio {sps:.2f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/medai_glioma40"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/medai_seg_bench"))
    ap.add_argument("--budget", default="10m", help="training wall clock per arm")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--n-train", type=int, default=30)
    ap.add_argument("--n-test", type=int, default=10)
    ap.add_argument("--arms", default="monai_tutorial,monai_unet,medai")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = parse_duration(args.budget)
    root = msd_root(args.data, args.cases, 0)
    sp = split(root, args.n_train, args.n_test)
    spacing = float(as_cohort(root).cases[0].load_image().spacing[0])
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"cohort {root}: fit {len(sp['fit'])}, val {len(sp['val'])}, test {len(sp['test'])}; "
        f"budget {budget:.0f}s per arm; torch threads {torch.get_num_threads()}"
    )
    results = []
    for arm in args.arms.split(","):
        print(f"[{arm}]", flush=True)
        if arm == "medai":
            results.append(arm_medai(root, sp, budget, args.out))
        elif arm == "monai_tutorial":
            results.append(arm_monai_tutorial(root, sp, budget, spacing))
        elif arm == "monai_unet":
            results.append(arm_monai_unet(root, sp, budget, spacing))
        else:
            raise SystemExit(f"unknown arm {arm!r}")
    report(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
