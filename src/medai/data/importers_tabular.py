"""Importers for image-level datasets: DeepHealth YAML, CSV, class folders, MedMNIST.

Also :func:`import_dataset`, which recognises any supported layout (or an existing
medai manifest) and calls the right importer.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from medai.data.importers import (
    _clean,
    _read_csv,
    _read_json,
    _stem,
    import_brats,
    import_msd,
    import_nnunet_raw,
    typed_import_errors,
)
from medai.data.importers_dicom import has_dicom_files, import_dicom_annotations
from medai.data.manifest import Case, Dataset, Splits, TaskType
from medai.errors import DatasetError
from medai.image import ScalarImage
from medai.io import write_image

__all__ = [
    "import_class_folders",
    "import_csv",
    "import_dataset",
    "import_deephealth_yaml",
    "import_medmnist_npz",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
_DH_SPLITS = {"training": "train", "validation": "validation", "test": "test"}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _unique_ids(stems: list[str]) -> list[str]:
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i:05d}_{s}" for i, s in enumerate(stems)]


# -- DeepHealth Toolkit Dataset Format -----------------------------------------------
def _dh_target(label: Any, classes: list[str], root: Path) -> tuple[Any, Path | None]:
    """A DeepHealth label → (target, label file): class name(s), index, or image path."""
    if label is None:
        return None, None
    if isinstance(label, list):
        return [_dh_target(x, classes, root)[0] for x in label], None
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(classes):
            raise DatasetError(f"label index {label} outside classes 0..{len(classes) - 1}")
        return classes[label], None
    text = str(label)
    if text in classes:
        return text, None
    if text.lower().endswith(IMAGE_SUFFIXES):
        return None, (root / text).resolve()
    raise DatasetError(f"label {text!r} is neither a class in {classes} nor an image file")


def _dh_case(
    case_id: str,
    entry: dict[str, Any],
    channels: list[str],
    classes: list[str],
    features: list[str],
    root: Path,
) -> Case:
    target, label_file = _dh_target(entry.get("label"), classes, root)
    values = entry.get("values") or {}
    if isinstance(values, list):
        names = features or [f"f{i}" for i in range(len(values))]
        values = dict(zip(names, values, strict=False))
    locs = entry["location"] if isinstance(entry["location"], list) else [entry["location"]]
    files = {ch: (root / str(loc)).resolve() for ch, loc in zip(channels, locs, strict=True)}
    single = len(channels) == 1
    return Case(
        patient_id=case_id,
        case_id=case_id,
        image=files[channels[0]] if single else None,
        channels={} if single else files,
        label=label_file,
        target=target,
        clinical={str(k): _clean(v) for k, v in dict(values).items()},
    )


@typed_import_errors
def import_deephealth_yaml(path: str | Path) -> Dataset:
    """Import a DeepHealth Toolkit Dataset Format YAML file.

    ``images`` entries are a location string or a mapping with ``location`` (a path
    or a list of paths, taken as channels), ``label`` (class name, class index, list
    of class names, or a ground-truth image path → segmentation) and ``values``
    (features, as a mapping or a list aligned with ``features``). ``split`` index
    lists ``training``/``validation``/``test`` map to the manifest's splits. The
    format does not declare segmentation label values (ground truths are often
    0/255 PNGs), so ``labels`` stays empty: declare them in the manifest.

    Raises:
        DatasetError: If the YAML is not in this format.
    """
    path = Path(path).resolve()
    root = path.parent
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"{path}: not readable YAML ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("images"), list):
        raise DatasetError(f"{path}: DeepHealth format needs an 'images' list")
    classes = [str(c) for c in meta.get("classes") or []]
    features = [str(f) for f in meta.get("features") or []]
    entries = [e if isinstance(e, dict) else {"location": e} for e in meta["images"]]
    nowhere = [i for i, e in enumerate(entries) if not isinstance(e.get("location"), str | list)]
    if nowhere:
        raise DatasetError(
            f"{path}: images {nowhere[:5]} have no 'location'; give each image a path "
            "(or a list of paths, one per channel)"
        )
    n_channels = {len(e["location"]) if isinstance(e.get("location"), list) else 1 for e in entries}
    if len(n_channels) != 1:
        raise DatasetError(f"{path}: images have different numbers of locations {n_channels}")
    width = n_channels.pop()
    channels = ["image"] if width == 1 else [f"image_{i}" for i in range(width)]
    stems = [_stem(Path(e["location"][0] if width > 1 else e["location"])) for e in entries]
    cases = []
    for case_id, entry in zip(_unique_ids(stems), entries, strict=True):
        try:
            cases.append(_dh_case(case_id, entry, channels, classes, features, root))
        except DatasetError as exc:
            raise DatasetError(f"{path}: image {case_id!r}: {exc}") from exc
    is_seg = any(c.label is not None for c in cases)
    ids = [c.case_id for c in cases]
    try:
        splits = Splits.model_validate(
            {_DH_SPLITS[k]: [ids[int(i)] for i in v] for k, v in (meta.get("split") or {}).items()}
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{path}: bad 'split' ({exc}); use training/validation/test index lists"
        ) from exc
    return Dataset(
        name=str(meta.get("name") or path.stem),
        description=str(meta.get("description") or "").strip(),
        task=TaskType.SEGMENTATION if is_seg else TaskType.CLASSIFICATION,
        channels=channels,
        classes=[] if is_seg else classes,
        cases=cases,
        splits=splits,
    )


# -- CSV ------------------------------------------------------------------------------
@typed_import_errors
def import_csv(
    path: str | Path,
    path_column: str = "path",
    label_column: str = "label",
    *,
    patient_column: str | None = None,
    task: TaskType | str | None = None,
) -> Dataset:
    """Import a table with one image per row: an image path column, a label column,
    and any other columns (kept as clinical data).

    The task is classification unless ``task`` says otherwise or the label column
    holds non-integer numbers (then regression). Paths are relative to the CSV.

    Raises:
        DatasetError: If a named column is missing.
    """
    path = Path(path).resolve()
    table = _read_csv(path)
    for column in (path_column, label_column, patient_column):
        if column is not None and column not in table.columns:
            raise DatasetError(f"{path}: no column {column!r}; columns are {list(table.columns)}")
    labels = table[label_column]
    if task is None:
        numeric = pd.api.types.is_numeric_dtype(labels)
        fractional = numeric and not np.allclose(labels, np.round(labels))
        task = TaskType.REGRESSION if fractional else TaskType.CLASSIFICATION
    task = TaskType(task)
    files = [(path.parent / str(p)).resolve() for p in table[path_column]]
    ids = _unique_ids([_stem(f) for f in files])
    cases = []
    for case_id, file, row in zip(ids, files, table.to_dict(orient="records"), strict=True):
        value = row[label_column]
        target = float(value) if task is TaskType.REGRESSION else str(_clean(value))
        extra = {str(k): _clean(v) for k, v in row.items() if k not in (path_column, label_column)}
        patient = str(row[patient_column]) if patient_column else case_id
        cases.append(
            Case(patient_id=patient, case_id=case_id, image=file, target=target, clinical=extra)
        )
    classes = sorted({str(c.target) for c in cases}) if task is TaskType.CLASSIFICATION else []
    return Dataset(name=path.stem, task=task, classes=classes, cases=cases)


# -- one folder per class -------------------------------------------------------------
@typed_import_errors
def import_class_folders(folder: str | Path) -> Dataset:
    """Import ``folder/<class name>/<image files>`` as a classification dataset.

    Raises:
        DatasetError: If no class folder holds an image.
    """
    folder = Path(folder).resolve()
    cases = []
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in classes:
        for file in sorted(f for f in (folder / name).iterdir() if _is_image(f)):
            case_id = f"{name}/{_stem(file)}"
            cases.append(Case(patient_id=case_id, case_id=case_id, image=file, target=name))
    if not cases:
        raise DatasetError(f"{folder}: no images in class sub-folders (expected <class>/<image>)")
    used = sorted({str(c.target) for c in cases})
    return Dataset(name=folder.name, task=TaskType.CLASSIFICATION, classes=used, cases=cases)


# -- MedMNIST -------------------------------------------------------------------------
def _medmnist_image(array: np.ndarray) -> ScalarImage:
    """One MedMNIST sample: (H, W), (H, W, 3) or (D, H, W) → image with x = columns."""
    data = np.asarray(array, dtype=np.float32)
    if data.ndim == 2:
        return ScalarImage(data.T)
    if data.ndim == 3 and data.shape[-1] == 3:
        return ScalarImage(data.transpose(2, 1, 0)[..., np.newaxis])
    return ScalarImage(data.transpose(2, 1, 0))


@typed_import_errors
def import_medmnist_npz(path: str | Path, *, out_dir: str | Path | None = None) -> Dataset:
    """Import a MedMNIST ``.npz`` (``train_images``, ``train_labels``, ``val_*``, ``test_*``).

    Each sample is written as a file in ``out_dir`` (default: ``<stem>_images``
    beside the ``.npz``): 2D images as PNG (8-bit as stored), 3D volumes as NIfTI.
    Classes are the label indices as strings; multi-label rows give a list.
    Splits follow the file's train/val/test.

    Raises:
        DatasetError: If the file has no ``*_images``/``*_labels`` pairs.
    """
    path = Path(path).resolve()
    out = Path(out_dir).resolve() if out_dir else path.parent / f"{path.stem}_images"
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a MedMNIST .npz archive ({exc})") from exc
    cases: list[Case] = []
    split_ids: dict[str, list[str]] = {}
    n_classes, rgb = 0, False
    for prefix, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        if f"{prefix}_images" not in arrays:
            continue
        if f"{prefix}_labels" not in arrays:
            raise DatasetError(f"{path}: '{prefix}_images' has no '{prefix}_labels' array")
        images, labels = (
            arrays[f"{prefix}_images"],
            arrays[f"{prefix}_labels"].reshape(len(arrays[f"{prefix}_images"]), -1),
        )
        multi = labels.shape[1] > 1
        n_classes = max(n_classes, labels.shape[1] if multi else int(labels.max()) + 1)
        rgb = images.ndim == 4 and images.shape[-1] == 3
        is_3d = images.ndim == 4 and not rgb
        suffix = ".nii.gz" if is_3d else ".png"
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            case_id = f"{prefix}_{i:05d}"
            file = out / f"{case_id}{suffix}"
            write_image(_medmnist_image(image), file)
            target = [str(j) for j in np.flatnonzero(label)] if multi else str(int(label[0]))
            cases.append(Case(patient_id=case_id, case_id=case_id, image=file, target=target))
        split_ids[split] = [c.case_id for c in cases[-len(images) :]]
    if not cases:
        raise DatasetError(f"{path}: no '<split>_images' arrays; is this a MedMNIST file?")
    return Dataset(
        name=path.stem,
        task=TaskType.CLASSIFICATION,
        channels=["red", "green", "blue"] if rgb else ["image"],
        classes=[str(i) for i in range(n_classes)],
        cases=cases,
        splits=Splits.model_validate(split_ids),
    )


# -- detection ------------------------------------------------------------------------
def _import_folder(folder: Path, out_dir: Path | None = None) -> Dataset:
    if (folder / "dataset.yaml").is_file():
        return Dataset.load(folder / "dataset.yaml")
    if (folder / "dataset.json").is_file():
        meta = _read_json(folder / "dataset.json")
        return import_nnunet_raw(folder) if "channel_names" in meta else import_msd(folder)
    subs = [p for p in folder.iterdir() if p.is_dir()]
    if any(list(p.glob(f"{p.name}_flair.nii*")) for p in subs):
        return import_brats(folder)
    if any(_is_image(f) for p in subs for f in p.iterdir()):
        return import_class_folders(folder)
    if has_dicom_files(folder):
        return import_dicom_annotations(folder, out_dir=out_dir)
    raise DatasetError(
        f"{folder}: not a known dataset layout (MSD or nnU-Net dataset.json, BraTS case "
        "folders, class folders, DICOM with SEG/RTSTRUCT annotations, or a medai dataset.yaml)"
    )


@typed_import_errors
def import_dataset(path: str | Path, *, out_dir: str | Path | None = None) -> Dataset:
    """Import whatever ``path`` holds, detecting its format.

    Folders: medai ``dataset.yaml``, MSD / nnU-Net ``dataset.json``, BraTS, class
    folders, DICOM annotated with SEG / RTSTRUCT. Files: a medai manifest or DeepHealth
    ``.yaml``/``.yml``, ``.csv`` (columns ``path`` and ``label``), MedMNIST ``.npz``,
    ``dataset.json``.

    Args:
        path: Folder or file to import.
        out_dir: Where converted files go for formats that need conversion (DICOM:
            NIfTI images and label maps; see :func:`import_dicom_annotations`).

    Raises:
        DatasetError: If the format is not recognised.
    """
    path = Path(path)
    if path.is_dir():
        return _import_folder(path, Path(out_dir) if out_dir is not None else None)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file or folder")
    name = path.name.lower()
    if name == "dataset.json":
        return _import_folder(path.parent)
    if name.endswith(".npz"):
        return import_medmnist_npz(path)
    if name.endswith(".csv"):
        return import_csv(path)
    if name.endswith((".yaml", ".yml", ".json")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise DatasetError(f"{path}: not readable YAML/JSON ({exc}); fix its syntax") from exc
        if isinstance(data, dict) and "cases" in data:
            return Dataset.load(path)
        return import_deephealth_yaml(path)
    raise DatasetError(f"{path}: unknown dataset file type; see `medai data import --help`")
