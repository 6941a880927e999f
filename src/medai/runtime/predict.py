"""Segment studies with a bundle: ONNX Runtime, numpy sliding window, the shared flow.

An ensemble bundle runs every member; their probabilities (each member's TTA flips
too) are the members :func:`medai.inference.study.segment_image` averages, and their
disagreement enters the uncertainty score as TTA members' does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medai.errors import BundleInputError
from medai.image import ScalarImage
from medai.inference.study import Prediction, _member_mean, read_study, segment_image
from medai.preprocess.contrasts import resolve_missing
from medai.runtime.bundle import Bundle, load_bundle
from medai.runtime.session import OnnxNetwork
from medai.runtime.sliding import sliding_window_probabilities

__all__ = ["Segmenter", "check_input"]


def check_input(bundle: Bundle, image: ScalarImage, missing: Sequence[str] = ()) -> None:
    """Refuse a study the bundle was not made for.

    Args:
        bundle: The bundle.
        image: The study: every channel of the bundle, or only the present ones when
            ``missing`` (plan names, as :func:`resolve_missing` gives) is declared.
        missing: Contrasts declared missing.

    Raises:
        BundleInputError: If the channel count fits neither all the bundle's channels nor
            the present ones, or the image is a single slice (or line) for this 3D model.
    """
    need = bundle.channels
    present = [c for c in need if c not in missing]
    if image.num_channels not in (len(need), len(present)):
        declared = f"; without {', '.join(missing)}: {len(present)}" if missing else ""
        raise BundleInputError(
            f"{bundle.name} needs {len(need)} channels ({', '.join(need)}, in that order"
            f"{declared}); the study has {image.num_channels}"
        )
    thin = [axis for axis, n in enumerate(image.shape) if n < 2]
    if thin:
        raise BundleInputError(
            f"{bundle.name} segments 3D volumes; the study has shape {image.shape} (axis "
            f"{thin[0]} is a single voxel): give it the whole series, not one slice"
        )


@dataclass
class Segmenter:
    """A loaded bundle ready to segment studies, torch-free.

    Args:
        bundle: A :class:`Bundle` or the path of a bundle folder / zip.
        threads: ONNX Runtime intra-op threads (0: one per core).
        device: ``"cpu"``, ``"cuda"`` or ``None`` for the best available provider.
        batch_size: Windows per network call.
    """

    bundle: Bundle | str | Path
    threads: int = 0
    device: str | None = None
    batch_size: int = 2
    network: OnnxNetwork = field(init=False, repr=False)
    networks: list[OnnxNetwork] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.bundle, Bundle):
            self.bundle = load_bundle(self.bundle)
        self.networks = [
            OnnxNetwork(member.model, threads=self.threads, device=self.device)
            for member in self.bundle.members
        ]
        self.network = self.networks[0]

    @property
    def loaded(self) -> Bundle:
        """The bundle (always loaded after construction)."""
        if not isinstance(self.bundle, Bundle):  # pragma: no cover - set in __post_init__
            raise TypeError("bundle not loaded")
        return self.bundle

    def probabilities(
        self, array: NDArray[Any], *, tta: bool | None = None, members: bool = False
    ) -> NDArray[np.float32]:
        """Region probabilities of a preprocessed ``(C, x, y, z)`` array (network grid),
        the mean over TTA flips and ensemble members; ``(M, R, x, y, z)`` with
        ``members=True``: each network's TTA members, network by network."""
        plan = self.loaded.plan
        outs = [
            sliding_window_probabilities(
                network,
                array,
                window=plan.train.patch_size,
                overlap=plan.inference.overlap,
                tta_flips=plan.inference.tta_flips if tta is None else tta,
                batch_size=self.batch_size,
                members=members,
            )
            for network in self.networks
        ]
        if len(outs) == 1:
            return outs[0]
        return np.concatenate(outs) if members else _member_mean(np.stack(outs))

    def read(self, path: str | Path, *, missing: Sequence[str] = ()) -> ScalarImage:
        """Read a study (NIfTI/ITK file or DICOM folder) with the bundle's channels (the
        present ones when contrasts are declared ``missing``)."""
        gone = resolve_missing(self.loaded.channels, missing)
        return read_study(path, [c for c in self.loaded.channels if c not in gone])

    def predict(
        self,
        image: ScalarImage | str | Path,
        *,
        tta: bool | None = None,
        keep_probabilities: bool = False,
        missing: Sequence[str] = (),
    ) -> Prediction:
        """Segment one study; the label map lands on the input grid.

        Args:
            image: The study, or the path of a NIfTI file or DICOM folder.
            tta: Flip TTA; default from the bundle. With it (or an ensemble) the
                prediction's uncertainty includes the members' disagreement.
            keep_probabilities: Also return region probabilities (input grid).
            missing: Contrasts the study lacks (the model must have been trained with
                channel dropout; :mod:`medai.preprocess.contrasts`).

        Raises:
            BundleInputError: If the study does not fit the bundle (see :func:`check_input`).
            DatasetError: If a declaration is unknown, or the model cannot do without it.
        """
        gone = resolve_missing(self.loaded.channels, missing)
        img = image if isinstance(image, ScalarImage) else self.read(image, missing=gone)
        check_input(self.loaded, img, gone)

        flips = self.loaded.plan.inference.tta_flips if tta is None else tta
        members = flips or len(self.networks) > 1

        def probabilities(array: NDArray[np.float32]) -> NDArray[np.float32]:
            return self.probabilities(array, tta=flips, members=members)

        return segment_image(
            img,
            self.loaded.plan,
            probabilities,
            keep_probabilities=keep_probabilities,
            missing=gone,
        )
