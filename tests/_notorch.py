"""Run Python in a subprocess where ``import torch`` and ``import monai`` fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("torch", "monai"):
                raise ImportError(f"{name} is blocked in this process")
            return None

    sys.meta_path.insert(0, _NoTorch())
    """
)


def run_without_torch(code: str, *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``code`` after the blocking hook; the result's stdout/stderr as text."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
