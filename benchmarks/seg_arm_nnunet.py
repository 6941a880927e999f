"""The nnU-Net v2 arm: its own venv, fingerprint, plan, preprocessing, 3d_fullres training
(region-based, as nnU-Net configures BraTS) and inference, driven from the project venv.

Build the peer first: ``bash benchmarks/nnunet_setup.sh`` (venv ``/tmp/peer_nnunet``).
Converting the MSD cases into nnU-Net's raw layout happens once, outside every clock
(the counterpart of medai reading the MSD folder); ``nnUNetv2_plan_and_preprocess`` and
training run per seed on that seed's clock. The trainer variant
(``nnunet_trainer_wallclock.py``) stops at the budget and saves weight snapshots;
``nnunet_export.py`` (run in the peer venv) turns final and snapshot weights into
TorchScript so the shared scorer can run nnU-Net's network through medai's window.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from medai.image import ScalarImage
from seg_common import REGIONS, ScoredNet, Split

VENV = Path(os.environ.get("NNUNET_VENV", "/tmp/peer_nnunet"))
DATASET_ID = 501
DATASET = f"Dataset{DATASET_ID:03d}_MedaiGlioma"
HERE = Path(__file__).resolve().parent


def _bin(name: str) -> str:
    path = VENV / "bin" / name
    if not path.exists():
        raise SystemExit(f"{path} missing: run `bash benchmarks/nnunet_setup.sh` first")
    return str(path)


def write_raw(root: Path, split: Split, raw: Path) -> Path:
    """nnU-Net raw layout: 4 channel files per case, region labels, test images."""
    folder = raw / DATASET
    if (folder / "dataset.json").is_file():
        return folder
    meta = json.loads((root / "dataset.json").read_text())
    modality = meta["modality"]
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for case_id in split.train + split.test:
        sub = "imagesTr" if case_id in split.train else "imagesTs"
        src = nib.load(root / "imagesTr" / f"{case_id}.nii.gz")  # 4D, stored dtype kept
        data = np.asarray(src.dataobj)
        for c in range(data.shape[-1]):
            img = nib.Nifti1Image(data[..., c], src.affine)
            nib.save(img, folder / sub / f"{case_id}_{c:04d}.nii.gz")
        if case_id in split.train:
            src = nib.load(root / "labelsTr" / f"{case_id}.nii.gz")
            lab = np.asarray(src.dataobj).astype(np.uint8)
            nib.save(nib.Nifti1Image(lab, src.affine), folder / "labelsTr" / f"{case_id}.nii.gz")
    dataset = {
        "channel_names": {str(k): modality[k] for k in sorted(modality, key=int)},
        # nnU-Net's BraTS convention (Dataset137): regions as label lists, nested order
        "labels": {
            "background": 0,
            "whole tumor": [1, 2, 3],
            "tumor core": [2, 3],
            "enhancing tumor": [3],
        },
        "regions_class_order": [1, 2, 3],
        "numTraining": len(split.train),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return folder


def _env(seed_dir: Path, raw: Path, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(raw),
        nnUNet_preprocessed=str(seed_dir / "preprocessed"),
        nnUNet_results=str(seed_dir / "results"),
        nnUNet_n_proc_DA="0",  # one core: augment in the training process
        nnUNet_compile="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(cmd)}\n")
        handle.flush()
        done = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}); see {log}")


def model_dir(seed_dir: Path) -> Path:
    return seed_dir / "results" / DATASET / "nnUNetTrainerWallClock__nnUNetPlans__3d_fullres"


def train_nnunet(
    split: Split, raw: Path, *, seed: int, budget_s: float, out: Path, snap_every_s: float
) -> dict[str, Any]:
    """Plan + preprocess + train on one clock, started before planning."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "nnunet.log"
    t0 = time.time()
    extra = {
        "MEDAI_BENCH_T0": repr(t0),
        "MEDAI_BENCH_BUDGET_S": repr(budget_s),
        "MEDAI_BENCH_SNAP_EVERY_S": repr(snap_every_s),
        "MEDAI_BENCH_SEED": str(seed),
        "MEDAI_BENCH_OUT": str(out),
    }
    env = _env(out, raw, extra)
    plan_cmd = [_bin("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres"]
    # the planner sets torch threads from nnUNet_n_proc_DA, so it must be ≥ 1 there
    _run([*plan_cmd, "-np", "1", "-npfp", "1"], {**env, "nnUNet_n_proc_DA": "1"}, log)
    pre = out / "preprocessed" / DATASET
    (pre / "splits_final.json").write_text(json.dumps([{"train": split.fit, "val": split.val}]))
    before_train_s = time.time() - t0
    train_cmd = [_bin("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0"]
    _run([*train_cmd, "-tr", "nnUNetTrainerWallClock", "-device", "cpu"], env, log)
    wall = time.time() - t0
    record = json.loads((out / "trainer_record.json").read_text())
    plans = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    return {
        "arm": "nnunet",
        "seed": seed,
        "wall_s": round(wall, 2),
        "before_train_s": round(before_train_s, 2),
        "plans": f"patch {plans['patch_size']}, batch {plans['batch_size']}",
        **record,
        "final": str(model_dir(out) / "fold_0" / "checkpoint_final.pth"),
    }


def export(seed_dir: Path, weights: list[Path]) -> dict[str, Any]:
    """TorchScript files for ``weights`` (snapshots) and the final checkpoint."""
    cmd = [_bin("python"), str(HERE / "nnunet_export.py"), str(model_dir(seed_dir))]
    env = _env(seed_dir, seed_dir / "unused_raw", {})
    _run([*cmd, *map(str, weights)], env, seed_dir / "export.log")
    return json.loads((model_dir(seed_dir) / "export.json").read_text())


class _AxisOrder(torch.nn.Module):
    """nnU-Net trains on SimpleITK's (z, y, x) order; the scorer works in (x, y, z)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x.permute(0, 1, 4, 3, 2).contiguous())
        return y.permute(0, 1, 4, 3, 2).contiguous()


def _prepare(info: dict[str, Any]) -> Any:
    """nnU-Net's own normalisation: non-zero mask of any channel with holes filled,
    z-score per channel inside it when ``use_mask_for_norm`` (0 outside), else over the
    whole crop; the cohort is at the plan's spacing, so nothing is resampled."""

    def prepare(image: ScalarImage) -> np.ndarray:
        if not np.allclose(image.spacing, info["spacing"]):
            raise SystemExit("nnU-Net arm is scored on cases at its plan's spacing")
        data = image.array.astype(np.float32)
        mask = ndimage.binary_fill_holes(np.any(data != 0, axis=0))
        out = np.zeros_like(data)
        idx = np.argwhere(mask)
        lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        for c in range(data.shape[0]):
            crop, m = data[c][box], mask[box]
            if info["use_mask_for_norm"][c]:
                v = crop[m]
                res = np.where(m, (crop - v.mean()) / max(float(v.std()), 1e-8), crop)
            else:
                res = (crop - crop.mean()) / max(float(crop.std()), 1e-8)
            out[c][box] = res
        return out

    return prepare


def scored_net(info: dict[str, Any], script: Path) -> ScoredNet:
    net = _AxisOrder(torch.jit.load(str(script), map_location="cpu")).eval()
    patch = tuple(int(p) for p in reversed(info["patch_size_zyx"]))
    return ScoredNet("nnunet", net, patch, _prepare(info))  # type: ignore[arg-type]


def own_inference(seed_dir: Path, raw: Path, pred: Path, case_ids: list[str]) -> None:
    """``nnUNetv2_predict`` with its defaults (its preprocessing, Gaussian window with step
    0.5, resampling and export) except mirroring TTA, which costs 8× on one CPU thread;
    probabilities saved for the shared post-processing."""
    inputs = seed_dir / "own_inputs"  # links to the test cases being scored
    inputs.mkdir(parents=True, exist_ok=True)
    for case_id in case_ids:
        for src in sorted((raw / DATASET / "imagesTs").glob(f"{case_id}_*.nii.gz")):
            if not (inputs / src.name).exists():
                (inputs / src.name).symlink_to(src)
    cmd = [_bin("nnUNetv2_predict"), "-i", str(inputs), "-o", str(pred)]
    cmd += ["-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainerWallClock"]
    cmd += ["-chk", "checkpoint_final.pth", "-device", "cpu", "--save_probabilities"]
    cmd += ["--disable_tta", "-npp", "1", "-nps", "1"]
    _run(cmd, _env(seed_dir, raw, {}), seed_dir / "predict.log")


def own_outputs(pred: Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(region masks from nnU-Net's label file, region probabilities) in (x, y, z)."""
    labels = np.asarray(nib.load(pred / f"{case_id}.nii.gz").dataobj)
    masks = np.stack([np.isin(labels, ids) for ids in ([1, 2, 3], [2, 3], [3])])
    with np.load(pred / f"{case_id}.npz") as data:
        probs = data["probabilities"]
    probs = np.transpose(probs, (0, 3, 2, 1)).astype(np.float32)  # (R, z, y, x) → (R, x, y, z)
    if probs.shape[0] != len(REGIONS) or probs.shape[1:] != labels.shape:
        raise RuntimeError(f"unexpected nnU-Net probabilities {probs.shape} for {case_id}")
    return masks, probs
