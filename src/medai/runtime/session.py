"""An ONNX Runtime session around an exported network: the runtime's only engine.

CPU always works; the CUDA and TensorRT providers are used when the installed
onnxruntime build offers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from medai.errors import BundleError

__all__ = ["OnnxNetwork", "available_providers"]

_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers(device: str | None = None) -> list[str]:
    """Execution providers to use, fastest first.

    Args:
        device: ``"cpu"`` to stay on the CPU; ``None`` (or ``"cuda"``) for every
            accelerated provider this onnxruntime build has, then the CPU.
    """
    have = set(ort.get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    return [p for p in _PREFERRED if p in have]


@dataclass
class OnnxNetwork:
    """A callable network: ``(B, C, *window)`` float32 → ``(B, R, *window)`` logits.

    Args:
        model: The ONNX model, serialised.
        threads: Intra-op threads (0: onnxruntime's default, one per core).
        device: ``"cpu"``, ``"cuda"`` or ``None`` for the best available.
    """

    model: bytes
    threads: int = 0
    device: str | None = None
    session: ort.InferenceSession = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0; got {self.threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                self.model, sess_options=options, providers=available_providers(self.device)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"model.onnx cannot be loaded by onnxruntime: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BundleError(f"model.onnx must take one input; it takes {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_shape: list[Any] = list(inputs[0].shape)

    @property
    def providers(self) -> list[str]:
        """The providers the session actually runs on."""
        return list(self.session.get_providers())

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        (logits,) = self.session.run(None, {self.input_name: np.asarray(batch, np.float32)})
        return np.asarray(logits, dtype=np.float32)
