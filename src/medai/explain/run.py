"""Explain a trained classification run: heat maps on each input's own grid, an overlay
and a gallery to look at, and the two checks that the maps explain the model.

:func:`explain_run` loads a run, makes each input the network's fixed-size input (the
plan's ``input`` settings, as at training), computes a saliency map there, maps it back
onto the input image's voxel grid (:func:`medai.preprocess.fixed_geometry.to_input_grid`)
and writes, into ``out_dir``:

- ``<name>_heatmap.nii.gz``: the map on the input's grid, with its affine;
- ``<name>_overlay.png``: the map over the image (2D: the slice; 3D: :func:`best_slice`),
  the finding's outline when a mask is known;
- ``gallery/``: the overlays of up to 12 inputs, highest output first;
- ``explain.json``: the method, one entry per input, ``pointing_game`` (when masks are
  known) and ``randomisation`` (when ``check``).

Which class a map explains: a binary run's positive class (its last class, the one its
single logit scores); a multi-class or multi-label run's top class for each input. The
pointing game scores the true positives only: inputs whose reference is the explained
class and whose output reaches it at the run's stored threshold
(:func:`medai.inference.classify.decide`), with a non-empty mask.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from medai.data import Dataset
from medai.errors import ConfigError, PlanError
from medai.explain.inputs import ExplainInput, explain_inputs
from medai.explain.saliency import (
    SaliencyMethod,
    _as_method,
    _Explainer,
    default_target_layer,
)
from medai.explain.sanity import LayerCheck, PointingResult, pointing_game, randomisation_check
from medai.explain.writers import best_slice, write_heatmap_nifti, write_overlay_png
from medai.fsutil import atomic_write_text
from medai.inference.classify import ImagePrediction, predict_images
from medai.inference.predict import LoadedRun, load_run
from medai.preprocess.fixed_geometry import fixed_input_with_geometry, to_input_grid
from medai.preprocess.plan import TaskKind

__all__ = ["ExplainResult", "InputExplanation", "explain_run"]

log = logging.getLogger(__name__)

#: Overlays copied into ``gallery/``.
GALLERY_SIZE = 12
#: Inputs the parameter-randomisation check runs on.
CHECK_INPUTS = 8
#: Fewest voxels a side of the layer a CAM method reads, when the layer is not given.
MIN_CAM_SIDE = 4
#: ... and at least this fraction (1/n) of the input's side: on the tumour-slice task a
#: 4×4 map of a 64×64 input hit the tumour on 59 % of true positives, a 16×16 one on 84 %.
CAM_SIDE_FRACTION = 4
_JSON = "explain.json"


@dataclass(frozen=True)
class InputExplanation:
    """What was written for one input, and how the run scored it.

    Attributes:
        name: The case id, or the file name without its suffix.
        source: The image file or folder (for a dataset case, its image or case id).
        heatmap: The NIfTI map on the input's grid.
        overlay: The PNG overlay.
        explained: The class the map explains.
        output: The run's calibrated probability of that class.
        predicted: Whether the run decides for that class (stored threshold).
        reference: Whether the reference is that class (``None``: unknown).
        pointing: ``"hit"`` or ``"miss"`` for a scored true positive, else ``None``.
    """

    name: str
    source: str
    heatmap: Path
    overlay: Path
    explained: str
    output: float
    predicted: bool
    reference: bool | None
    pointing: str | None


@dataclass(frozen=True)
class ExplainResult:
    """The outcome of :func:`explain_run`.

    Attributes:
        out_dir: Where the files are.
        json_path: ``out_dir/explain.json``.
        method: The saliency method.
        layer: The layer the CAM methods read (``None`` for occlusion).
        inputs: One entry per input, in the order given.
        pointing: Pointing-game score over the true positives with a mask (``None``
            without masks, or when no input is a true positive).
        randomisation: The cascading randomisation check (empty without ``check``).
    """

    out_dir: Path
    json_path: Path
    method: SaliencyMethod
    layer: str | None
    inputs: list[InputExplanation]
    pointing: PointingResult | None
    randomisation: list[LayerCheck]


def explain_run(
    run_dir: str | Path,
    inputs: Sequence[str | Path] | Dataset,
    *,
    out_dir: str | Path,
    case_ids: Sequence[str] | None = None,
    method: SaliencyMethod | str = SaliencyMethod.GRADCAM,
    check: bool = True,
    masks: Sequence[str | Path] | None = None,
    support: Sequence[str | Path] | None = None,
    max_layers: int | None = None,
    target_layer: str | None = None,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExplainResult:
    """Heat maps of a classification run on ``inputs``, with their checks (module notes).

    Args:
        run_dir: The training run folder (``model.pt``).
        inputs: Image files or DICOM study folders (channels in the run's order), or a
            ``Dataset``: its ``case_ids`` (default: all cases), each case's label as its
            mask and its ``clinical["brain_mask"]`` (relative paths: to the folder above
            the image's, as :func:`medai.data.derive.slice_dataset` writes them) as the
            pointing game's support.
        out_dir: Folder for the outputs (created).
        case_ids: Cases of a ``Dataset`` input.
        method: ``gradcam``, ``gradcam++`` or ``occlusion``.
        check: Run the cascading parameter-randomisation check on up to 8 inputs.
        masks: File inputs only: one finding mask per input, on the input's grid (a
            binary run then takes a non-empty mask as a positive reference).
        support: File inputs only: one mask per input of where a point may fall (the
            pointing game's chance rate).
        max_layers: Randomise at most this many layers in the check.
        target_layer: The CAM methods' layer (a name from ``named_modules()``); ``None``:
            the network's default (:func:`~medai.explain.default_target_layer`) when its
            output is at least 4 voxels a side on this input size, else the deepest
            earlier stage that is (a ResNet-18's ``layer4`` is 1×1 for a 32×32 input,
            which leaves a map without a place to point at).
        device: ``cpu`` or ``cuda``; default CUDA when available.
        progress: Called with ``(done, total)`` after each input and after the check.

    Raises:
        PlanError: If the run is not a classification run.
        ConfigError: If ``target_layer`` is not a layer of the run's network.
        ValueError: If no input is given, ``masks`` or ``support`` do not match the
            inputs, or the method is unknown.
        DatasetError: If a case or mask cannot be used (a mask off its image's grid).
    """
    chosen = _as_method(method)
    run = load_run(run_dir, device=device)
    _check_classifier(run, run_dir)
    total, items = explain_inputs(
        run.plan.channels, inputs, case_ids=case_ids, masks=masks, support=support
    )
    if total == 0:
        raise ValueError("no inputs: give at least one image file or case")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps_total = total + int(check)

    def report(done: int) -> None:
        if progress is not None:
            progress(done, steps_total)

    made = _explain_all(run, items, (chosen, target_layer), out, report)
    steps = _randomisation(run, made, chosen, max_layers) if check else []
    if check:
        report(steps_total)
    pointing = _pooled(made.scores)
    _write_gallery(made.entries, out)
    json_path = _write_json(out, run_dir, made, pointing, steps if check else None)
    return ExplainResult(out, json_path, chosen, made.layer, made.entries, pointing, steps)


@dataclass
class _Made:
    """What the pass over the inputs gathered."""

    method: SaliencyMethod
    layer: str | None = None
    entries: list[InputExplanation] = field(default_factory=list)
    scores: list[PointingResult] = field(default_factory=list)
    check_inputs: list[torch.Tensor] = field(default_factory=list)
    with_masks: bool = False


def _explain_all(
    run: LoadedRun,
    items: Iterator[ExplainInput],
    how: tuple[SaliencyMethod, str | None],
    out: Path,
    report: Callable[[int], None],
) -> _Made:
    """Map, write and score each input, one at a time (only 8 network inputs are kept)."""
    method, layer = how
    settings = run.plan.input
    made, names = _Made(method), set[str]()
    explainer: _Explainer | None = None
    for i, item in enumerate(items, start=1):
        array, geometry = fixed_input_with_geometry(
            item.image, settings, channels=len(run.plan.channels)
        )
        tensor = torch.from_numpy(array)
        if explainer is None:  # the layer is chosen on the first input's shape
            made.layer = _cam_layer(run.model, tensor, method, layer)
            explainer = _explainer(run, method, made.layer)
        if len(made.check_inputs) < CHECK_INPUTS:
            made.check_inputs.append(tensor)
        pred = predict_images(run.model, array[None], run.plan, [item.name], device=run.device)[0]
        heat = to_input_grid(explainer(tensor, class_index=_explained(run, pred)[0]), geometry)
        entry, score = _write_one(run, item, heat, pred, _unique(item.name, names), out)
        made.entries.append(entry)
        made.scores += [score] if score is not None else []
        made.with_masks |= item.mask is not None
        log.debug("explained %s: %s %.3f", item.name, entry.explained, entry.output)
        report(i)
    return made


def _explainer(run: LoadedRun, method: SaliencyMethod, layer: str | None) -> _Explainer:
    try:
        return _Explainer(run.model, method=method, target_layer=layer, occlusion_mask_size=None)
    except ValueError as exc:  # a layer name the user gave that the network lacks
        raise ConfigError(str(exc)) from exc


def _check_classifier(run: LoadedRun, run_dir: str | Path) -> None:
    task = run.plan.task
    if task in (TaskKind.SEGMENTATION, TaskKind.REGRESSION):
        raise PlanError(
            f"run {run_dir} is a {task.value} run; heat maps explain classification runs "
            "(binary, multi-class, multi-label), which predict a class from a whole image"
        )


def _unique(name: str, taken: set[str]) -> str:
    """A file-safe form of ``name``, numbered when another input already has it."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "input"
    stem, k = base, 1
    while stem in taken:
        k += 1
        stem = f"{base}_{k}"
    taken.add(stem)
    return stem


def _explained(run: LoadedRun, pred: ImagePrediction) -> tuple[int | None, str]:
    """The class index the map explains (``None``: the network's top logit) and its name."""
    classes = run.plan.classes
    if run.plan.task is TaskKind.BINARY:
        return 0, classes[-1]
    probs = pred.output if isinstance(pred.output, tuple) else (pred.output,)
    top = int(np.argmax(probs))
    return top, classes[top]


def _reference(item: ExplainInput, run: LoadedRun, label: str) -> bool | None:
    """Whether the reference is the explained class; a binary run's mask says so too."""
    if item.target is not None:
        targets = item.target if isinstance(item.target, list) else [item.target]
        return label in [str(t) for t in targets]
    if run.plan.task is TaskKind.BINARY and item.mask is not None:
        return bool(item.mask.any())
    return None


def _decision(run: LoadedRun, pred: ImagePrediction, label: str) -> tuple[float, bool]:
    """The output for the explained class, and whether the run decides for it."""
    if not isinstance(pred.output, tuple):  # binary: the positive class's probability
        return pred.output, pred.decision == 1
    top = run.plan.classes.index(label)
    output = pred.output[top]
    if run.plan.task is TaskKind.MULTILABEL:
        return output, output >= 0.5
    return output, pred.decision == top


def _write_one(
    run: LoadedRun,
    item: ExplainInput,
    heat: NDArray[np.float32],
    pred: ImagePrediction,
    stem: str,
    out: Path,
) -> tuple[InputExplanation, PointingResult | None]:
    """Write one input's heat map and overlay; score it when it is a true positive."""
    label = _explained(run, pred)[1]
    output, predicted = _decision(run, pred, label)
    reference = _reference(item, run, label)
    score = None
    if predicted and reference and item.mask is not None and item.mask.any():
        chance = None if item.support is None else [item.support]
        score = pointing_game([heat], [item.mask], support=chance)
    heatmap = write_heatmap_nifti(heat, item.image, out / f"{stem}_heatmap.nii.gz")
    z = 0 if item.image.is_2d else best_slice(heat)
    outline = None if item.mask is None else item.mask[..., z]
    overlay = write_overlay_png(
        heat[..., z],
        item.image.array[0][..., z],
        out / f"{stem}_overlay.png",
        mask=outline,
        title=f"{item.name}: {label} {output:.2f}",
    )
    entry = InputExplanation(
        name=item.name,
        source=item.source,
        heatmap=heatmap,
        overlay=overlay,
        explained=label,
        output=float(output),
        predicted=bool(predicted),
        reference=reference,
        pointing=None if score is None else ("hit" if score.hits else "miss"),
    )
    return entry, score


def _randomisation(
    run: LoadedRun, made: _Made, method: SaliencyMethod, max_layers: int | None
) -> list[LayerCheck]:
    index = 0 if run.plan.task is TaskKind.BINARY else None
    return randomisation_check(
        run.model,
        made.check_inputs,
        method=method,
        class_index=index,
        max_layers=max_layers,
        target_layer=made.layer,
    )


def _cam_layer(
    net: nn.Module, image: torch.Tensor, method: SaliencyMethod, requested: str | None
) -> str | None:
    """The CAM layer (see :func:`explain_run`); ``None`` for occlusion."""
    if not method.uses_layer or requested is not None:
        return requested
    default = default_target_layer(net)
    sides = _output_sides(net, image)
    need = max(MIN_CAM_SIDE, min(image.shape[1:]) // CAM_SIDE_FRACTION)
    if sides.get(default, 0) >= need:
        return default
    stages = [name for name, side in sides.items() if name.count(".") <= 1 and side >= need]
    if not stages:
        return default
    log.info("layer %s is under %d voxels a side; Grad-CAM reads %s", default, need, stages[-1])
    return stages[-1]


def _output_sides(net: nn.Module, image: torch.Tensor) -> dict[str, int]:
    """Smallest spatial side of each module's output, in the order the modules finish;
    modules that run more than once (shared activations) are left out."""
    sides: dict[str, int] = {}
    calls: dict[str, int] = {}

    def hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.ndim == image.ndim + 1:
                sides.pop(name, None)  # re-inserted: the order is the order modules finish
                sides[name] = int(min(output.shape[2:]))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules() if n]
    device = next(net.parameters()).device
    try:
        with torch.no_grad():
            net.eval()(image.detach().to(device, torch.float32).unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    return {name: side for name, side in sides.items() if calls[name] == 1}


def _pooled(scores: list[PointingResult]) -> PointingResult | None:
    """One pointing-game result from the per-input ones (chance: the mean of theirs)."""
    if not scores:
        return None
    hits, n = sum(s.hits for s in scores), sum(s.n for s in scores)
    chance = float(np.mean([s.chance for s in scores]))
    return PointingResult(hits=hits, n=n, rate=hits / n, chance=chance)


def _write_gallery(entries: list[InputExplanation], out: Path) -> Path:
    """Copy the overlays of the (up to 12) inputs with the highest output."""
    gallery = out / "gallery"
    if gallery.is_dir():
        shutil.rmtree(gallery)
    gallery.mkdir(parents=True)
    ranked = sorted(entries, key=lambda e: -e.output)[:GALLERY_SIZE]
    for rank, entry in enumerate(ranked, start=1):
        shutil.copyfile(entry.overlay, gallery / f"{rank:02d}_{entry.overlay.name}")
    return gallery


def _write_json(
    out: Path,
    run_dir: str | Path,
    made: _Made,
    pointing: PointingResult | None,
    steps: list[LayerCheck] | None,
) -> Path:
    inputs = [
        {
            **asdict(e),
            "heatmap": e.heatmap.relative_to(out).as_posix(),
            "overlay": e.overlay.relative_to(out).as_posix(),
        }
        for e in made.entries
    ]
    data: dict[str, Any] = {
        "run": str(run_dir),
        "method": made.method.value,
        "layer": made.layer,
        "inputs": inputs,
    }
    if made.with_masks:
        data["pointing_game"] = (
            asdict(pointing)
            if pointing is not None
            else {"hits": 0, "n": 0, "rate": None, "chance": None}
        )
    if steps is not None:
        data["randomisation"] = [asdict(step) for step in steps]
    path = out / _JSON
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path
