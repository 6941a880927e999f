"""Classify (or regress) images with a bundle: ONNX Runtime, the run's fixed-size input
and the same output code as the PyTorch path (:mod:`medai.inference.outputs`).

Monte Carlo dropout cannot run in ONNX (the exported graph is the eval-mode network,
dropout removed). A bundle of a run trained with ``target.uncertainty=mc_dropout``
therefore estimates uncertainty with the test-time shifts instead, and says so in the
log; its uncertainty (and ``needs_review``) is then not the training run's.

An ensemble bundle runs every member through the same passes; each member's logits are
put in the lead plan's terms (:func:`rescale_logits`), so the prediction's output is the
mean of the members' calibrated outputs (probabilities, or values for regression) and
their disagreement enters the uncertainty as the passes' does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from medai.errors import BundleError
from medai.image import ScalarImage
from medai.inference.outputs import ImagePrediction, image_predictions, shifted_inputs
from medai.preprocess.fixed import fixed_input
from medai.preprocess.plan import Plan, TaskKind, UncertaintyMethod
from medai.runtime.bundle import Bundle, load_bundle
from medai.runtime.predict import Segmenter
from medai.runtime.session import OnnxNetwork

__all__ = ["Classifier", "fixed_input_of", "load_predictor", "rescale_logits"]

log = logging.getLogger(__name__)

MC_DROPOUT_NOTE = (
    "MC dropout cannot run in ONNX (the exported network has no dropout); this bundle "
    "estimates uncertainty with test-time shifts instead, so its uncertainty and "
    "needs_review differ from the training run's"
)


def fixed_input_of(image: ScalarImage, plan: Plan) -> NDArray[np.float32]:
    """``image`` as the run's fixed-size input ``(C, *size)`` (the plan's ``input``).

    Raises:
        DatasetError: If the image does not fit the run (channels, dimensions, no
            non-zero voxel, NaN).
    """
    settings = plan.input
    return fixed_input(
        image,
        spatial_dims=settings.spatial_dims,
        spacing=settings.spacing,
        size=settings.size,
        crop_to_foreground=settings.crop_to_foreground,
        normalise=settings.normalise.value,
        channels=len(plan.channels),
    )


def rescale_logits(logits: NDArray[np.floating], source: Plan, target: Plan) -> NDArray[np.float32]:
    """Logits of a network trained with ``source`` as the logits that give the same
    outputs under ``target`` (:func:`medai.inference.outputs.outputs_from_logits`): the
    temperature ratio for classification, the target scaling for regression."""
    z = np.asarray(logits, dtype=np.float64)
    src, dst = source.target, target.target
    if source.task is TaskKind.REGRESSION:
        out = (z * src.std + src.mean - dst.mean) / dst.std
    else:
        out = z * (dst.temperature / src.temperature)
    return out.astype(np.float32)


@dataclass
class Classifier:
    """A loaded classification / regression bundle ready to predict, torch-free.

    Args:
        bundle: A :class:`Bundle` or the path of a bundle folder / zip.
        threads: ONNX Runtime intra-op threads (0: one per core).
        device: ``"cpu"``, ``"cuda"`` or ``None`` for the best available provider.
        batch_size: Inputs per network call.

    Raises:
        BundleError: If the bundle's task is segmentation (use :class:`Segmenter`).
    """

    bundle: Bundle | str | Path
    threads: int = 0
    device: str | None = None
    batch_size: int = 8
    network: OnnxNetwork = field(init=False, repr=False)
    networks: list[OnnxNetwork] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.bundle, Bundle):
            self.bundle = load_bundle(self.bundle)
        if self.bundle.plan.task is TaskKind.SEGMENTATION:
            raise BundleError(
                f"{self.bundle.name} is a segmentation bundle; run it with Segmenter "
                "(medai.runtime.load_predictor chooses by task)"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        self.networks = [
            OnnxNetwork(member.model, threads=self.threads, device=self.device)
            for member in self.bundle.members
        ]
        self.network = self.networks[0]
        if self.bundle.plan.target.uncertainty is UncertaintyMethod.MC_DROPOUT:
            log.warning("%s: %s", self.bundle.name, MC_DROPOUT_NOTE)

    @property
    def loaded(self) -> Bundle:
        """The bundle (always loaded after construction)."""
        if not isinstance(self.bundle, Bundle):  # pragma: no cover - set in __post_init__
            raise TypeError("bundle not loaded")
        return self.bundle

    @property
    def uncertainty(self) -> UncertaintyMethod:
        """The method this runtime uses: the plan's, with MC dropout run as TTA."""
        method = self.loaded.plan.target.uncertainty
        return UncertaintyMethod.TTA if method is UncertaintyMethod.MC_DROPOUT else method

    def read(self, path: str | Path) -> ScalarImage:
        """Read an image (NIfTI/NRRD/PNG/JPEG/TIFF file, DICOM file or series folder)."""
        from medai.io import read_image

        image: ScalarImage = read_image(path)
        image.meta.setdefault("case_id", Path(path).name)
        return image

    def preprocess(self, image: ScalarImage) -> NDArray[np.float32]:
        """The run's fixed-size input ``(C, *size)`` of ``image``.

        Raises:
            DatasetError: If the image does not fit the run (channels, dimensions,
                no non-zero voxel, NaN).
        """
        return fixed_input_of(image, self.loaded.plan)

    def logits(self, arrays: NDArray[np.float32], *, member: int = 0) -> NDArray[np.float32]:
        """Network logits ``(N, out)`` of preprocessed inputs ``(N, C, *size)`` (of the
        ensemble's ``member``, in its own terms)."""
        network = self.networks[member]
        out = [
            network(arrays[start : start + self.batch_size])
            for start in range(0, len(arrays), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def member_logits(self, arrays: NDArray[np.float32]) -> NDArray[np.float32]:
        """Logits ``(M, N, out)`` of the uncertainty passes (identity first), for an
        ensemble every member's passes in turn, in the lead plan's terms."""
        plan = self.loaded.plan
        if self.uncertainty is UncertaintyMethod.NONE:
            inputs = [arrays]
        else:
            passes = plan.target.uncertainty_passes
            inputs = shifted_inputs(arrays, plan.input.spatial_dims, passes)
        stacks = []
        for i, member in enumerate(self.loaded.members):
            logits = np.stack([self.logits(s, member=i) for s in inputs])
            stacks.append(logits if i == 0 else rescale_logits(logits, member.plan, plan))
        return np.concatenate(stacks)

    def predict_arrays(
        self, arrays: NDArray[np.float32], case_ids: Sequence[str]
    ) -> list[ImagePrediction]:
        """Predict preprocessed inputs ``(N, C, *size)``, one per case id."""
        arrays = np.asarray(arrays, dtype=np.float32)
        if len(arrays) != len(case_ids):
            raise ValueError(f"{len(arrays)} inputs but {len(case_ids)} case ids; give one each")
        members = self.member_logits(arrays)
        return image_predictions(members[0], members, self.loaded.plan, list(case_ids))

    def predict(
        self, image: ScalarImage | str | Path, *, case_id: str | None = None
    ) -> ImagePrediction:
        """Predict one image (or the path of one).

        Raises:
            ImageReadError: If the file cannot be read.
            DatasetError: If the image does not fit the run (see :meth:`preprocess`).
        """
        img = image if isinstance(image, ScalarImage) else self.read(image)
        name = case_id or str(img.meta.get("case_id") or "image")
        return self.predict_arrays(self.preprocess(img)[None], [name])[0]


def load_predictor(
    path: str | Path | Bundle, *, threads: int = 0, device: str | None = None
) -> Classifier | Segmenter:
    """The runtime predictor for a bundle's task: :class:`Segmenter` or :class:`Classifier`."""
    bundle = path if isinstance(path, Bundle) else load_bundle(path)
    if bundle.plan.task is TaskKind.SEGMENTATION:
        return Segmenter(bundle, threads=threads, device=device)
    return Classifier(bundle, threads=threads, device=device)
