"""A task's input instances as the runtime reads them: a folder view and channel matching.

The runtime reads DICOM series from folders; a task is given instance files (wherever
the archive keeps them). :func:`input_view` links the files of each alias into
``<out>/.input/<alias>/`` (symbolic links, nothing copied; the task removes the view
before it returns), :func:`view_series` lists the image series found there, and
:func:`match_channels` maps a bundle's channels to them: an alias that names a channel
(case-insensitively) first, then a series whose description names it, then the rest in
the selection's order, as :func:`medai.inference.read_study` does for a study folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medai.errors import BundleInputError, ImageReadError
from medai.image import ScalarImage

__all__ = [
    "VIEW_FOLDER",
    "ViewSeries",
    "input_view",
    "match_channels",
    "read_channels",
    "remove_view",
    "view_series",
]

#: The view's folder under a task's ``out`` (hidden: the runtime's readers skip it there).
VIEW_FOLDER = ".input"

#: Modalities of derived objects: never an image channel.
_DERIVED = frozenset({"SEG", "SR", "RTSTRUCT", "KO", "PR"})


@dataclass(frozen=True)
class ViewSeries:
    """One image series of the view: the alias it came with, its folder and identity."""

    alias: str
    folder: Path
    uid: str
    description: str
    modality: str


def input_view(out: Path, inputs: Mapping[str, Sequence[str]]) -> dict[str, Path]:
    """Link each alias's instance files into ``out/.input/<alias>/``; returns the folders.

    Raises:
        ValueError: If an alias is not a plain name, or a file is not an absolute path to
            an existing file.
    """
    root = out / VIEW_FOLDER
    folders: dict[str, Path] = {}
    for alias, files in inputs.items():
        if not alias or alias in (".", "..") or "/" in alias or "\\" in alias:
            raise ValueError(f"input alias {alias!r} is not a plain name; use letters and digits")
        folder = root / alias
        folder.mkdir(parents=True, exist_ok=True)
        for index, name in enumerate(files):
            source = Path(name)
            if not source.is_absolute() or not source.is_file():
                raise ValueError(
                    f"input {alias!r}: {name!r} is not an existing file given by absolute path"
                )
            os.symlink(source, folder / f"{index:06d}_{source.name}")
        folders[alias] = folder
    return folders


def remove_view(out: Path) -> None:
    """Remove the view (the links only; the archive's files stay)."""
    shutil.rmtree(out / VIEW_FOLDER, ignore_errors=True)


def view_series(
    folders: Mapping[str, Path], series: Mapping[str, Sequence[str]] | None = None
) -> list[ViewSeries]:
    """The usable image series of each alias, in alias order (then series order); when
    ``series`` names an alias's series UIDs, only those."""
    from medai.io import find_series

    found: list[ViewSeries] = []
    for alias, folder in folders.items():
        wanted = set((series or {}).get(alias, ()))
        for info in find_series(folder):
            if info.problem is not None or info.modality.upper() in _DERIVED:
                continue
            if wanted and info.uid not in wanted:
                continue
            found.append(ViewSeries(alias, folder, info.uid, info.description, info.modality))
    return found


def match_channels(channels: Sequence[str], found: Sequence[ViewSeries]) -> list[ViewSeries]:
    """One series per channel: the alias naming it, else a series described by it, else
    the remaining series in order.

    Raises:
        BundleInputError: If there are fewer series than channels.
    """
    chosen: dict[str, ViewSeries] = {}
    left = list(found)
    for by_alias in (True, False):
        for channel in channels:
            if channel in chosen:
                continue
            for candidate in left:
                name = candidate.alias if by_alias else candidate.description.strip()
                if name.lower() == channel.lower():
                    chosen[channel] = candidate
                    left.remove(candidate)
                    break
    for channel in channels:
        if channel not in chosen:
            if not left:
                have = ", ".join(f"{s.alias} ({s.description!r})" for s in found) or "none"
                raise BundleInputError(
                    f"the bundle needs channels {list(channels)}; the selection gives the "
                    f"series {have}: bind one series per channel (alias = channel name)"
                )
            chosen[channel] = left.pop(0)
    return [chosen[c] for c in channels]


def read_channels(chosen: Sequence[ViewSeries]) -> ScalarImage:
    """The chosen series as one multi-channel image on the first one's grid; ``meta``
    names the first series' folder and UID (what the DICOM results reference).

    Raises:
        ImageReadError: If the series do not share one voxel grid.
    """
    from medai.io import read_dicom_series

    images: list[ScalarImage] = [read_dicom_series(s.folder, series_uid=s.uid) for s in chosen]
    for series, other in zip(chosen[1:], images[1:], strict=True):
        if not other.same_grid(images[0], atol=1e-3):
            raise ImageReadError(
                series.folder,
                f"series {series.uid} is not on the grid of {chosen[0].uid}: the channels "
                "must share one voxel grid (resample them, or select co-registered series)",
            )
    data = np.concatenate([im.array.astype(np.float32) for im in images])
    meta = {"source": str(chosen[0].folder), "series_uid": chosen[0].uid}
    return ScalarImage(data, images[0].affine, meta=meta)
