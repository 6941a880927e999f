"""Shared parts of the like-for-like segmentation benchmark (``seg_benchmark.py``).

One cohort, one fixed split, one arm clock, one snapshot schedule and one scoring
engine for every arm: a trained network plus the arm's own input normalisation go
through the same sliding window (medai's ``predict_probabilities``: Gaussian blending,
overlap 0.5, no TTA) and the same post-processing settings.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray

from medai.evaluation import region_dice
from medai.image import ScalarImage
from medai.inference import postprocess_regions, predict_probabilities, remove_small_components
from medai.preprocess import BRATS_REGIONS, InferencePlan, as_cohort, foreground_bbox
from medai.training import split_train_val

REGIONS: tuple[str, ...] = tuple(BRATS_REGIONS)
OVERLAP = 0.5
LOCK = Path("/tmp/medai_bench.lock")

Array = NDArray[Any]


# -- cohort and split ------------------------------------------------------------------
def msd_root(data: Path, cases: int, seed: int) -> Path:
    """The MSD folder under ``data``; generate a seeded 2 mm cohort there if missing."""
    for cand in (data, data / "Task01_BrainTumour"):
        if (cand / "dataset.json").is_file():
            return cand
    from medai.data.synth import generate_cohort

    print(f"generating a {cases}-case 2 mm cohort (seed {seed}) in {data} ...", flush=True)
    generate_cohort(data, cases=cases, spacing=2.0, seed=seed)
    return msd_root(data, cases, seed)


@dataclass(frozen=True)
class Split:
    """The fixed split every arm and seed uses."""

    train: list[str]
    fit: list[str]
    val: list[str]
    test: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {"train": self.train, "fit": self.fit, "val": self.val, "test": self.test}


def make_split(root: Path, n_train: int, n_test: int) -> Split:
    """First ``n_train`` ids train (fit / validation by medai's seeded hold-out, seed 0),
    last ``n_test`` ids test; the same for every arm and every training seed."""
    ids = sorted(c.case_id for c in as_cohort(root).cases)
    if len(ids) < n_train + n_test:
        raise SystemExit(f"cohort has {len(ids)} cases; need {n_train + n_test}")
    train, test = ids[:n_train], ids[len(ids) - n_test :]
    fit, val = split_train_val(train, fraction=0.2, seed=0)
    return Split(train, fit, val, test)


def msd_items(root: Path, ids: list[str]) -> list[dict[str, str]]:
    """MONAI-style ``{"image", "label"}`` file dicts for ``ids``."""
    meta = json.loads((root / "dataset.json").read_text())
    by_id = {Path(e["image"]).name.split(".")[0]: e for e in meta["training"]}
    return [
        {"image": str(root / by_id[i]["image"]), "label": str(root / by_id[i]["label"])}
        for i in ids
    ]


@dataclass(frozen=True)
class LabelledCase:
    """A case on its input grid: image and reference region masks ``(3, x, y, z)``."""

    case_id: str
    image: ScalarImage
    regions: NDArray[np.bool_]


def load_cases(root: Path, ids: list[str]) -> list[LabelledCase]:
    cohort = as_cohort(root)
    out = []
    for case in cohort.subset(ids):
        label = case.load_label()
        if label is None:
            raise SystemExit(f"case {case.case_id} has no label")
        lab = label.array[0]
        regions = np.stack([np.isin(lab, BRATS_REGIONS[r]) for r in REGIONS])
        out.append(LabelledCase(case.case_id, case.load_image(), regions))
    return out


# -- the arm clock, the bench lock, snapshots --------------------------------------------
@contextmanager
def bench_lock(*, enabled: bool = True) -> Iterator[None]:
    """Hold ``/tmp/medai_bench.lock`` (one benchmark on core 1 at a time)."""
    if not enabled:
        yield
        return
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def one_thread() -> None:
    """The protocol: one torch thread (plus OMP/MKL=1 in the environment)."""
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@dataclass
class Snapshots:
    """Save weights each time the arm clock passes a multiple of ``every_s``."""

    folder: Path
    t0: float
    every_s: float
    taken: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def maybe(self, state: Callable[[], dict[str, torch.Tensor]], step: int) -> None:
        """Call after an optimiser step; saves when a mark was passed."""
        now = self.elapsed()
        index = int(now // self.every_s)  # marks passed during one long step: one snapshot
        if index < 1 or (self.taken and index <= self.taken[-1]["index"]):
            return
        path = self.folder / f"snap_{index:03d}.pt"
        torch.save({k: v.detach().cpu().clone() for k, v in state().items()}, path)
        mark = index * self.every_s
        row = {
            "index": index,
            "mark_s": mark,
            "t_s": round(now, 2),
            "step": step,
            "path": str(path),
        }
        self.taken.append(row)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (a crash leaves the old file or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


# -- one scoring engine ----------------------------------------------------------------
@dataclass(frozen=True)
class ScoredNet:
    """A trained network as the scorer sees it.

    ``prepare`` maps an input-grid image to the network's input on the same grid
    (the arm's own normalisation); ``patch`` is the arm's own training patch.
    """

    name: str
    model: torch.nn.Module
    patch: tuple[int, int, int]
    prepare: Callable[[ScalarImage], Array]


def window_probabilities(
    net: ScoredNet, image: ScalarImage, *, blend: str = "gaussian", box: bool = True
) -> NDArray[np.float32]:
    """Region probabilities ``(3, x, y, z)`` on the input grid, no TTA.

    With ``box`` the window runs over the foreground box only (non-zero voxels of any
    channel + 2 voxels, what medai crops to; nnU-Net crops to the non-zero box as well)
    and the probability outside it is 0. Gaussian blending is medai's
    ``predict_probabilities`` itself; ``"constant"`` is the same MONAI sliding window
    with uniform weights (for the ablation).
    """
    array = net.prepare(image)
    if array.shape[1:] != image.shape:
        raise RuntimeError(f"{net.name}: input {array.shape} is not on the image grid")
    full = (slice(0, image.shape[0]), slice(0, image.shape[1]), slice(0, image.shape[2]))
    region = tuple(slice(lo, hi) for lo, hi in foreground_bbox(image, margin=2)) if box else full
    crop = np.ascontiguousarray(array[(slice(None), *region)])
    if blend == "gaussian":
        probs = predict_probabilities(net.model, crop, patch_size=net.patch, overlap=OVERLAP)
    else:
        from monai.inferers import sliding_window_inference

        x = torch.as_tensor(crop, dtype=torch.float32)[None]
        net.model.eval()
        with torch.no_grad():
            logits = sliding_window_inference(
                x, net.patch, 2, net.model, overlap=OVERLAP, mode="constant"
            )
        probs = torch.sigmoid(cast(torch.Tensor, logits).float())[0].numpy()
    out = np.zeros((probs.shape[0], *image.shape), dtype=np.float32)
    out[(slice(None), *region)] = probs
    return out


@dataclass(frozen=True)
class PostOptions:
    """Post-processing after the window; every part can be switched off."""

    min_component_ml: float = 0.1
    nest: bool = True
    et_min_ml: float = 0.0
    threshold: float = 0.5


NO_POST = PostOptions(min_component_ml=0.0, nest=False, et_min_ml=0.0)


def postprocess(probs: Array, image: ScalarImage, opts: PostOptions) -> NDArray[np.bool_]:
    """Region masks ``(3, x, y, z)`` from probabilities under ``opts``.

    With every part on this is medai's ``postprocess_regions``
    (:func:`check_postprocess` verifies that); ``NO_POST`` is a plain threshold.
    """
    masks = np.asarray(probs) >= opts.threshold
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    if opts.min_component_ml:
        min_vox = int(np.ceil(opts.min_component_ml / voxel_ml))
        masks[0] = remove_small_components(masks[0], min_vox)
    if opts.nest:
        masks[1] &= masks[0]
        masks[2] &= masks[1]
    if masks[2].sum() * voxel_ml < opts.et_min_ml:
        masks[2] = False
    return masks


def check_postprocess(probs: Array, image: ScalarImage, opts: PostOptions) -> None:
    """Raise if the toggled post-processing differs from medai's own."""
    plan = InferencePlan(
        threshold=opts.threshold,
        min_component_ml=opts.min_component_ml,
        et_min_volume_ml=opts.et_min_ml,
    )
    regions = {r: list(BRATS_REGIONS[r]) for r in REGIONS}
    ref = postprocess_regions(probs, regions, spacing=image.spacing, plan=plan)
    if not np.array_equal(ref, postprocess(probs, image, opts)):
        raise RuntimeError("benchmark post-processing differs from medai.postprocess_regions")


def dice(masks: Array, ref: Array) -> dict[str, float]:
    """Dice per region, BraTS rule for an empty reference (medai's ``region_dice``)."""
    return {r: region_dice(masks[i], ref[i]) for i, r in enumerate(REGIONS)}


def learn_et_rule(
    probs: list[Array], cases: list[LabelledCase], opts: PostOptions
) -> tuple[float, float]:
    """medai's ET-volume rule learnt on validation cases for any arm's network:
    (threshold mL, validation ET Dice at it)."""
    from medai.training.validation import CaseScore, choose_inner_threshold

    scores = []
    for p, case in zip(probs, cases, strict=True):
        masks = postprocess(p, case.image, replace(opts, et_min_ml=0.0))
        d = dice(masks, case.regions)
        voxel_ml = float(np.prod(case.image.spacing)) / 1000.0
        scores.append(
            CaseScore(
                case.case_id,
                d,
                float(masks[2].sum()) * voxel_ml,
                d["ET"],
                not case.regions[2].any(),
            )
        )
    return choose_inner_threshold(scores)
