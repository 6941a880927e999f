"""The inputs of :func:`medai.explain.run.explain_run`: image files or dataset cases,
each read with the masks known for it, one at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medai.data import Dataset
from medai.errors import DatasetError
from medai.image import ScalarImage
from medai.inference.study import read_study
from medai.io import read_label

__all__ = ["ExplainInput", "explain_inputs"]


@dataclass(frozen=True)
class ExplainInput:
    """One input: its image, and what is known about it.

    Attributes:
        name: The case id, or the file name without its suffix.
        source: The image file or folder (a case: its image file, else its id).
        image: The image, channels in the run's order.
        mask: The finding mask on the image's grid (nonzero label), if known.
        support: Where a point may fall (e.g. the brain), if known.
        target: The reference class name(s), if known.
    """

    name: str
    source: str
    image: ScalarImage
    mask: NDArray[np.bool_] | None
    support: NDArray[np.bool_] | None
    target: Any  # the reference class name(s), or None


def explain_inputs(
    channels: Sequence[str],
    inputs: Sequence[str | Path] | Dataset,
    *,
    case_ids: Sequence[str] | None,
    masks: Sequence[str | Path] | None,
    support: Sequence[str | Path] | None,
) -> tuple[int, Iterator[ExplainInput]]:
    """How many inputs there are, and the inputs, read one at a time.

    Args:
        channels: The run's channels (a DICOM study's series are matched to them).
        inputs: Image files or study folders, or a dataset (see ``explain_run``).
        case_ids: A dataset's cases to explain (default: all).
        masks: File inputs only: one mask file per input.
        support: File inputs only: one support file per input.

    Raises:
        ValueError: If the options do not fit the kind of input.
        DatasetError: If a case id is unknown.
    """
    if isinstance(inputs, Dataset):
        if masks is not None or support is not None:
            raise ValueError(
                "masks and support apply to file inputs; a dataset's cases give their "
                "own (the label, clinical['brain_mask'])"
            )
        dataset = inputs
        ids = list(case_ids) if case_ids is not None else [c.case_id for c in dataset.cases]
        for case_id in ids:
            dataset.case(case_id)  # an unknown id fails now, before any work
        return len(ids), (_case_item(dataset, case_id) for case_id in ids)
    if case_ids is not None:
        raise ValueError("case_ids apply to a Dataset input, not to image files")
    if isinstance(inputs, str | Path):
        raise TypeError(f"inputs must be a list of paths or a Dataset; got one path {inputs}")
    paths = [Path(p) for p in inputs]
    for what, given in (("masks", masks), ("support", support)):
        if given is not None and len(given) != len(paths):
            raise ValueError(f"{what} needs one file per input: {len(given)} for {len(paths)}")
    mask_files = list(masks) if masks is not None else [None] * len(paths)
    support_files = list(support) if support is not None else [None] * len(paths)
    return len(paths), (
        _file_item(path, list(channels), mask_files[k], support_files[k])
        for k, path in enumerate(paths)
    )


def _file_item(
    path: Path, channels: list[str], mask: str | Path | None, support: str | Path | None
) -> ExplainInput:
    image = read_study(path, channels)
    return ExplainInput(
        name=_stem(path),
        source=str(path),
        image=image,
        mask=None if mask is None else _mask(mask, image, "mask"),
        support=None if support is None else _mask(support, image, "support"),
        target=None,
    )


def _case_item(dataset: Dataset, case_id: str) -> ExplainInput:
    case = dataset.case(case_id)
    image = dataset.load_case_image(case)
    label = dataset.load_case_label(case)
    if label is not None and not label.same_grid(image):
        raise DatasetError(f"case {case_id!r}: its label map is not on its image's grid")
    brain = case.clinical.get("brain_mask")
    support = None
    if brain is not None:
        path = Path(str(brain))
        if not path.is_absolute() and case.image is not None:
            path = Path(case.image).parent.parent / path
        support = _mask(path, image, "brain mask")
    return ExplainInput(
        name=case_id,
        source=str(case.image or case_id),
        image=image,
        mask=None if label is None else label.array[0] != 0,
        support=support,
        target=case.target,
    )


def _mask(path: str | Path, image: ScalarImage, what: str) -> NDArray[np.bool_]:
    mask = read_label(path)
    if not mask.same_grid(image):
        raise DatasetError(
            f"{what} {path} (shape {mask.shape}) is not on its image's grid (shape "
            f"{image.shape}); give a mask on the input image's voxel grid"
        )
    return np.asarray(mask.array[0] != 0)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".png"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
