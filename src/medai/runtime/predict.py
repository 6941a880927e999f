"""Segment studies with a bundle: ONNX Runtime, numpy sliding window, the shared flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medai.errors import BundleInputError
from medai.image import ScalarImage
from medai.inference.study import Prediction, read_study, segment_image
from medai.runtime.bundle import Bundle, load_bundle
from medai.runtime.session import OnnxNetwork
from medai.runtime.sliding import sliding_window_probabilities

__all__ = ["Segmenter", "check_input"]


def check_input(bundle: Bundle, image: ScalarImage) -> None:
    """Refuse a study the bundle was not made for.

    Raises:
        BundleInputError: If the channel count differs from the bundle's channels, or
            the image is a single slice (or line) for this 3D model.
    """
    need = bundle.channels
    if image.num_channels != len(need):
        raise BundleInputError(
            f"{bundle.name} needs {len(need)} channels ({', '.join(need)}, in that order); "
            f"the study has {image.num_channels}"
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

    def __post_init__(self) -> None:
        if not isinstance(self.bundle, Bundle):
            self.bundle = load_bundle(self.bundle)
        self.network = OnnxNetwork(self.bundle.model, threads=self.threads, device=self.device)

    @property
    def loaded(self) -> Bundle:
        """The bundle (always loaded after construction)."""
        if not isinstance(self.bundle, Bundle):  # pragma: no cover - set in __post_init__
            raise TypeError("bundle not loaded")
        return self.bundle

    def probabilities(self, array: NDArray[Any], *, tta: bool | None = None) -> NDArray[np.float32]:
        """Region probabilities of a preprocessed ``(C, x, y, z)`` array (network grid)."""
        plan = self.loaded.plan
        return sliding_window_probabilities(
            self.network,
            array,
            window=plan.train.patch_size,
            overlap=plan.inference.overlap,
            tta_flips=plan.inference.tta_flips if tta is None else tta,
            batch_size=self.batch_size,
        )

    def read(self, path: str | Path) -> ScalarImage:
        """Read a study (NIfTI/ITK file or DICOM folder) with the bundle's channels."""
        return read_study(path, self.loaded.channels)

    def predict(
        self,
        image: ScalarImage | str | Path,
        *,
        tta: bool | None = None,
        keep_probabilities: bool = False,
    ) -> Prediction:
        """Segment one study; the label map lands on the input grid.

        Raises:
            BundleInputError: If the study does not fit the bundle (see :func:`check_input`).
        """
        img = image if isinstance(image, ScalarImage) else self.read(image)
        check_input(self.loaded, img)

        def probabilities(array: NDArray[np.float32]) -> NDArray[np.float32]:
            return self.probabilities(array, tta=tta)

        return segment_image(
            img, self.loaded.plan, probabilities, keep_probabilities=keep_probabilities
        )
