"""Score one trained (arm, seed) with the shared engine of ``seg_common``.

For every arm: the ET-volume rule is learnt on the validation cases (medai's rule, the
same procedure for every network), then each test case is predicted once (Gaussian
window, overlap 0.5, no TTA) and scored with no post-processing and with medai's
post-processing; every weight snapshot is scored on the validation cases. For medai,
the ablation of each inference-side part; for nnU-Net, also its own inference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import seg_arm_medai
import seg_arm_nnunet
import seg_arms_monai
from medai.inference import LoadedRun, load_run, predict_case
from medai.preprocess import BRATS_REGIONS
from seg_common import (
    NO_POST,
    REGIONS,
    LabelledCase,
    PostOptions,
    ScoredNet,
    check_postprocess,
    dice,
    learn_et_rule,
    postprocess,
    window_probabilities,
)

Scores = dict[str, list[float]]


def _add(store: dict[str, Scores], key: str, values: dict[str, float]) -> None:
    bucket = store.setdefault(key, {r: [] for r in REGIONS})
    for r in REGIONS:
        bucket[r].append(values[r])


def _net_factory(
    arm: str, trained: dict[str, Any], seed_dir: Path
) -> Callable[[str | None], ScoredNet]:
    """``factory(None)`` is the arm's final network; ``factory(path)`` a snapshot."""
    if arm == "medai":
        run_dir = Path(trained["final"])
        return lambda w: seg_arm_medai.scored_net(run_dir, Path(w) if w else None)[0]
    if arm in ("monai_unet", "monai_tutorial"):
        patch = trained["patch"]
        return lambda w: seg_arms_monai.scored_net(arm, Path(w or trained["final"]), patch)
    snaps = [Path(s["path"]) for s in trained["snapshots"]]
    info = seg_arm_nnunet.export(seed_dir, snaps)
    files = info["files"]
    return lambda w: seg_arm_nnunet.scored_net(info, Path(files[Path(w).stem if w else "final"]))


def _snapshot_curve(
    factory: Callable[[str | None], ScoredNet], trained: dict[str, Any], val: list[LabelledCase]
) -> list[dict[str, Any]]:
    rows = []
    post = PostOptions()  # small blobs, nesting; no ET rule (it is learnt on these cases)
    for snap in trained["snapshots"]:
        net = factory(snap["path"])
        per: dict[str, Scores] = {}
        for case in val:
            p = window_probabilities(net, case.image)
            _add(per, "none", dice(postprocess(p, case.image, NO_POST), case.regions))
            _add(per, "post", dice(postprocess(p, case.image, post), case.regions))
        row: dict[str, Any] = {"mark_s": snap["mark_s"], "t_s": snap["t_s"], "step": snap["step"]}
        for key, scores in per.items():
            means = {r: float(np.mean(v)) for r, v in scores.items()}
            row[key] = {**means, "mean": float(np.mean(list(means.values())))}
        rows.append(row)
        print(f"    snapshot t={snap['t_s']:.0f}s val Dice {row['none']['mean']:.3f}", flush=True)
    return rows


def _ablation(
    net: ScoredNet, run: LoadedRun, case: LabelledCase, p: np.ndarray, post: PostOptions
) -> dict[str, dict[str, float]]:
    pc = window_probabilities(net, case.image, blend="constant")
    img, ref = case.image, case.regions
    shipped = predict_case(run, img, tta=False).labels.array[0]
    shipped_masks = np.stack([np.isin(shipped, BRATS_REGIONS[r]) for r in REGIONS])
    return {
        "full": dice(postprocess(p, img, post), ref),
        "constant_blend": dice(postprocess(pc, img, post), ref),
        "no_box": dice(postprocess(window_probabilities(net, img, box=False), img, post), ref),
        "no_small_components": dice(postprocess(p, img, replace(post, min_component_ml=0.0)), ref),
        "no_nesting": dice(postprocess(p, img, replace(post, nest=False)), ref),
        "no_et_rule": dice(postprocess(p, img, replace(post, et_min_ml=0.0)), ref),
        "none": dice(postprocess(p, img, NO_POST), ref),
        "none_constant": dice(postprocess(pc, img, NO_POST), ref),
        "as_shipped": dice(shipped_masks, ref),
    }


def score_run(
    arm: str,
    trained: dict[str, Any],
    val: list[LabelledCase],
    test: list[LabelledCase],
    *,
    seed_dir: Path,
    raw: Path | None = None,
) -> dict[str, Any]:
    """Everything the report needs for one (arm, seed)."""
    t0 = time.perf_counter()
    factory = _net_factory(arm, trained, seed_dir)
    net = factory(None)
    val_probs = [window_probabilities(net, c.image) for c in val]
    thr, val_et = learn_et_rule(val_probs, val, PostOptions())
    post = PostOptions(et_min_ml=thr)
    result: dict[str, Any] = {
        "arm": arm,
        "seed": trained["seed"],
        "train": trained,
        "et_rule": {"threshold_ml": thr, "val_et_dice": val_et},
        "test_ids": [c.case_id for c in test],
    }
    tests: dict[str, Scores] = {}
    ablation: dict[str, Scores] = {}
    run = load_run(trained["final"], device="cpu") if arm == "medai" else None
    for i, case in enumerate(test):
        p = window_probabilities(net, case.image)
        if i < 3:
            check_postprocess(p, case.image, post)
        _add(tests, "none", dice(postprocess(p, case.image, NO_POST), case.regions))
        _add(tests, "medai_post", dice(postprocess(p, case.image, post), case.regions))
        if run is not None:
            for key, values in _ablation(net, run, case, p, post).items():
                _add(ablation, key, values)
    result["test"] = tests
    timing = {"test_done_s": round(time.perf_counter() - t0, 1)}
    if ablation:
        result["ablation"] = ablation
    if arm == "nnunet" and raw is not None:
        result["own"] = _nnunet_own(seed_dir, raw, test, post)
    timing["own_done_s"] = round(time.perf_counter() - t0, 1)
    result["snapshots"] = _snapshot_curve(factory, trained, val)
    timing["snapshots_done_s"] = round(time.perf_counter() - t0, 1)
    result["scoring_timing"] = timing
    print(f"    scoring {timing}", flush=True)
    return result


def _nnunet_own(
    seed_dir: Path, raw: Path, test: list[LabelledCase], post: PostOptions
) -> dict[str, Scores]:
    pred = seed_dir / "own_predictions"
    if not all((pred / f"{c.case_id}.npz").is_file() for c in test):
        seg_arm_nnunet.own_inference(seed_dir, raw, pred, [c.case_id for c in test])
    own: dict[str, Scores] = {}
    for case in test:
        masks, probs = seg_arm_nnunet.own_outputs(pred, case.case_id)
        _add(own, "labels", dice(masks, case.regions))
        _add(own, "probs_medai_post", dice(postprocess(probs, case.image, post), case.regions))
    return own
