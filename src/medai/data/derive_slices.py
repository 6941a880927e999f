"""2D axial "tumour present" slices from a 3D segmentation cohort (:func:`slice_dataset`).

Re-exported by :mod:`medai.data.derive`, next to the 3D classification and regression
datasets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medai.data.manifest import Case, Dataset, Splits, TaskType
from medai.errors import ConfigError, DatasetError
from medai.fsutil import atomic_write_text, publish_folder
from medai.image import Image, LabelMap, ScalarImage
from medai.io import write_nifti

__all__ = ["NO_TUMOUR", "TUMOUR", "nonzero_mask", "slice_dataset"]

logger = logging.getLogger(__name__)

TUMOUR, NO_TUMOUR = "tumour", "no-tumour"
_PROVENANCE = "derived.json"


def nonzero_mask(image: Image) -> NDArray[np.bool_]:
    """Voxels non-zero in any channel: the brain of a skull-stripped image."""
    return np.asarray(np.any(image.array != 0, axis=0))


def _channel_index(dataset: Dataset, channel: str) -> int:
    lowered = [c.lower() for c in dataset.channels]
    if channel.lower() not in lowered:
        raise DatasetError(
            f"channel {channel!r} is not in dataset {dataset.name!r}; "
            f"channels are {dataset.channels}"
        )
    return lowered.index(channel.lower())


def _axial_axis(image: Image) -> int:
    """The array axis closest to the world's superior (S) direction."""
    return int(np.argmax(np.abs(image.direction[2])))


def _take_slice(image: Image, axis: int, k: int) -> tuple[NDArray[Any], NDArray[np.float64]]:
    """Slice ``k`` along ``axis`` as a ``(c, a, b, 1)`` array and its affine (world kept)."""
    others = [a for a in range(3) if a != axis]
    array = np.moveaxis(image.array, 1 + axis, -1)[..., k : k + 1]
    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, [*others, axis]]
    affine[:3, 3] = image.affine[:3, 3] + k * image.affine[:3, axis]
    return array, affine


def _resize(
    array: NDArray[Any], affine: NDArray[np.float64], size: int, *, order: int
) -> tuple[NDArray[Any], NDArray[np.float64]]:
    """Resample a ``(c, a, b, 1)`` slice to ``size × size`` over the same field of view."""
    a, b = array.shape[1:3]
    scale = np.array([a / size, b / size])
    grid = (np.indices((size, size)) + 0.5) * scale[:, None, None] - 0.5
    out = np.stack(
        [ndimage.map_coordinates(ch[..., 0], grid, order=order, mode="nearest") for ch in array]
    )
    new = affine.copy()
    new[:3, :2] = affine[:3, :2] * scale
    new[:3, 3] = affine[:3, 3] + affine[:3, :2] @ (0.5 * scale - 0.5)
    return out[..., None].astype(array.dtype), new


def _slice_areas(
    brain: NDArray[np.bool_], tumour: NDArray[np.bool_], axis: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    others = tuple(a for a in range(3) if a != axis)
    return brain.sum(axis=others), tumour.sum(axis=others)


def _pick_slices(
    brain_area: NDArray[np.int64],
    tumour_area: NDArray[np.int64],
    *,
    count: int,
    min_tumour_fraction: float,
    min_brain_fraction: float,
    rng: np.random.Generator,
) -> list[tuple[int, str]]:
    """``(slice index, target)`` pairs: ``ceil(count / 2)`` tumour slices and the rest
    without, drawn among the slices whose brain area is at least ``min_brain_fraction``
    of the largest; slices with a little tumour below the threshold are never drawn."""
    inside = brain_area >= max(1.0, min_brain_fraction * float(brain_area.max()))
    positive = np.flatnonzero(inside & (tumour_area >= min_tumour_fraction * brain_area))
    negative = np.flatnonzero(inside & (tumour_area == 0))
    picked: list[tuple[int, str]] = []
    for pool, want, target in (
        (positive, (count + 1) // 2, TUMOUR),
        (negative, count // 2, NO_TUMOUR),
    ):
        chosen = rng.choice(pool, size=min(want, pool.size), replace=False)
        picked += [(int(k), target) for k in chosen]
    return sorted(picked)


def _case_rng(seed: int, case_id: str) -> np.random.Generator:
    """A generator for one case that does not depend on the order or number of cases."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode("utf-8"))])


def _write(image: Image, path: Path) -> str:
    write_nifti(image, path)
    return path.relative_to(path.parent.parent).as_posix()


def _case_slices(
    dataset: Dataset, case: Case, staging: Path, options: dict[str, Any]
) -> list[Case]:
    """Write the drawn slices of ``case`` under ``staging``; their cases (paths in it)."""
    image = dataset.load_case_image(case)
    label = dataset.load_case_label(case)
    if label is None or not label.same_grid(image):
        why = "has no label map" if label is None else "has a label map off the image's grid"
        raise DatasetError(f"case {case.case_id!r} {why}; slice_dataset needs both on one grid")
    axis = _axial_axis(image)
    brain = nonzero_mask(image)
    tumour = label.array[0] > 0
    brain_area, tumour_area = _slice_areas(brain, tumour, axis)
    picked = _pick_slices(
        brain_area,
        tumour_area,
        count=options["slices_per_case"],
        min_tumour_fraction=options["min_tumour_fraction"],
        min_brain_fraction=options["min_brain_fraction"],
        rng=_case_rng(options["seed"], case.case_id),
    )
    channel = image.array[options["channel_index"] : options["channel_index"] + 1]
    volumes = {"images": channel, "labels": label.array, "brain": brain[None].astype(np.uint8)}
    out = []
    for k, target in picked:
        slice_id = f"{case.case_id}_z{k}"
        paths = {}
        for folder, volume in volumes.items():
            array, affine = _take_slice(ScalarImage(volume, image.affine), axis, k)
            if options["size"] is not None:
                order = 1 if folder == "images" else 0
                array, affine = _resize(array, affine, options["size"], order=order)
            kind = ScalarImage if folder == "images" else LabelMap
            paths[folder] = _write(kind(array, affine), staging / folder / f"{slice_id}.nii.gz")
        fraction = float(tumour_area[k]) / float(brain_area[k])
        clinical = {
            **case.clinical,
            "parent_case": case.case_id,
            "slice": k,
            "tumour_fraction": round(fraction, 4),
            "brain_mask": paths["brain"],
        }
        out.append(
            Case(
                patient_id=case.patient_id,
                case_id=slice_id,
                image=staging / paths["images"],
                label=staging / paths["labels"],
                target=target,
                clinical=clinical,
            )
        )
    if len(out) < options["slices_per_case"]:
        logger.info(
            "case %s: only %d of %d slices qualify",
            case.case_id,
            len(out),
            options["slices_per_case"],
        )
    return out


def _slice_splits(parent: Splits, children: dict[str, list[Case]]) -> Splits:
    """The parent's splits and folds with every case id replaced by its slices' ids."""

    def expand(ids: list[str]) -> list[str]:
        return [s.case_id for i in ids for s in children.get(i, [])]

    return Splits(
        train=expand(parent.train),
        validation=expand(parent.validation),
        test=expand(parent.test),
        external=expand(parent.external),
        folds=[expand(fold) for fold in parent.folds],
        seed=parent.seed,
        stratify=parent.stratify,
    )


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"out_dir {out_dir} is a file; give a folder for the slices")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / _PROVENANCE).is_file():
        raise DatasetError(
            f"out_dir {out_dir} holds files that are not a slice dataset (no {_PROVENANCE}); "
            "give an empty or new folder, nothing there is replaced"
        )


def _check_slice_args(options: dict[str, Any]) -> None:
    count, size = options["slices_per_case"], options["size"]
    if count < 1:
        raise ConfigError(f"slices_per_case must be >= 1; got {count}")
    if not 0.0 < options["min_tumour_fraction"] <= 1.0:
        raise ConfigError(
            f"min_tumour_fraction must be in (0, 1]; got {options['min_tumour_fraction']}"
        )
    if not 0.0 <= options["min_brain_fraction"] <= 1.0:
        raise ConfigError(
            f"min_brain_fraction must be in [0, 1]; got {options['min_brain_fraction']}"
        )
    if size is not None and size < 2:
        raise ConfigError(f"size must be >= 2 pixels (or None to keep the grid); got {size}")


@contextlib.contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A new folder beside ``out_dir``, published onto it in one rename on success and
    removed on failure."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        yield staging
        publish_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def slice_dataset(
    dataset: Dataset,
    out_dir: str | Path,
    *,
    channel: str = "flair",
    slices_per_case: int = 6,
    min_tumour_fraction: float = 0.02,
    min_brain_fraction: float = 0.25,
    seed: int = 0,
    size: int | None = None,
    name: str | None = None,
) -> Dataset:
    """A 2D "tumour present" classification dataset of axial slices, written to ``out_dir``.

    From each case, ``ceil(slices_per_case / 2)`` axial slices (the array axis closest to
    world S) whose tumour area (label > 0) is at least ``min_tumour_fraction`` of the
    brain area on that slice are drawn as ``"tumour"``, and the rest of
    ``slices_per_case`` among slices without any tumour voxel as ``"no-tumour"``; slices
    in between are never drawn, nor slices whose brain area (voxels non-zero in any
    channel) is under ``min_brain_fraction`` of the case's largest. A case with too few
    qualifying slices gives fewer. The draw of case ``c`` uses ``seed`` and ``c``'s id
    only, so it does not depend on the other cases.

    Files are 2D NIfTI (``x, y, 1``), which keeps the spacing and world position:
    ``images/<case>_z<k>.nii.gz`` (the one ``channel``), ``labels/`` (the slice of the
    label map, parent label values: the ``label`` for the pointing game) and ``brain/``
    (the brain mask; its path relative to ``out_dir`` is ``clinical["brain_mask"]``).
    Each slice keeps the parent's patient id and clinical columns plus ``parent_case``,
    ``slice`` and ``tumour_fraction``; the parent's splits and folds map onto the slices.
    The folder is built aside and published in one rename with ``dataset.yaml`` and
    ``derived.json`` (the options, for replay); an existing ``out_dir`` is replaced only
    if it holds a previous slice dataset.

    Args:
        dataset: The parent segmentation dataset (images and label maps on one grid).
        out_dir: Folder to write (created).
        channel: Channel name, case-insensitive (``"flair"`` matches ``"FLAIR"``).
        slices_per_case: Slices drawn per case, half with tumour (rounded up).
        min_tumour_fraction: Tumour area / brain area for a ``"tumour"`` slice.
        min_brain_fraction: Brain area / the case's largest brain slice area, for any slice.
        seed: Seed of the draw (recorded in ``derived.json``).
        size: Resample every slice to ``size × size`` over the same field of view
            (linear for the image, nearest for masks); ``None`` keeps the grid.
        name: Name of the new dataset; default ``"<parent>-slices"``.

    Returns:
        The dataset, as read back from ``out_dir/dataset.yaml``.

    Raises:
        DatasetError: If the channel is unknown, a case has no label map or one off the
            image's grid, a file is missing, or ``out_dir`` holds other files.
        ConfigError: On an out-of-range option.
    """
    options: dict[str, Any] = {
        "channel": channel,
        "slices_per_case": slices_per_case,
        "min_tumour_fraction": min_tumour_fraction,
        "min_brain_fraction": min_brain_fraction,
        "seed": seed,
        "size": size,
    }
    _check_slice_args(options)
    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir)
    index = _channel_index(dataset, channel)
    with _staging(out_dir) as staging:
        children: dict[str, list[Case]] = {}
        for case in dataset.cases:
            made = _case_slices(dataset, case, staging, {**options, "channel_index": index})
            children[case.case_id] = made
        derived = Dataset(
            name=name or f"{dataset.name}-slices",
            description=f"axial {dataset.channels[index]} slices, tumour present or not, "
            f"derived from {dataset.name!r}",
            task=TaskType.CLASSIFICATION,
            channels=[dataset.channels[index]],
            labels=dict(dataset.labels),
            regions={k: list(v) for k, v in dataset.regions.items()},
            classes=[NO_TUMOUR, TUMOUR],  # the last class is the positive one,
            cases=[c for made in children.values() for c in made],
            splits=_slice_splits(dataset.splits, children),
        )
        derived.save(staging / "dataset.yaml")
        provenance = {"parent": dataset.name, "function": "slice_dataset", **options}
        atomic_write_text(staging / _PROVENANCE, json.dumps(provenance, indent=1) + "\n")
    logger.info("wrote %d slices of %d cases to %s", len(derived.cases), len(children), out_dir)
    return Dataset.load(out_dir / "dataset.yaml")
