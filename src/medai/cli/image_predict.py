"""``medai predict BUNDLE INPUT… --out DIR`` for a classification / regression bundle:
one ``DIR/<input>.json`` per input and ``DIR/predictions.csv`` with a row each."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from medai.cli.console import console, progress
from medai.fsutil import atomic_write_text
from medai.inference.outputs import ImagePrediction
from medai.runtime.classify import Classifier

__all__ = ["predict_images_cmd", "prediction_document"]


def prediction_document(
    pred: ImagePrediction, classifier: Classifier, source: Path
) -> dict[str, Any]:
    """The JSON written for one input."""
    bundle = classifier.loaded
    plan = bundle.plan
    doc: dict[str, Any] = {
        "input": str(source),
        "bundle": {"name": bundle.name, "version": bundle.version, "digest": bundle.digest},
        "task": plan.task.value,
        "output": pred.output
        if not isinstance(pred.output, tuple)
        else dict(zip(plan.classes, pred.output, strict=True)),
        "decision": pred.decision,
        "decision_label": plan.classes[pred.decision] if pred.decision >= 0 else None,
        "uncertainty": pred.uncertainty if pred.uncertainty == pred.uncertainty else None,
        "uncertainty_method": classifier.uncertainty.value,
        "needs_review": pred.needs_review,
        "logits": list(pred.logits),
    }
    return doc


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def predict_images_cmd(
    classifier: Classifier, inputs: list[Path], names: list[str], out: Path
) -> list[Path]:
    """Predict every input; write its JSON and the CSV summary; return the JSON paths."""
    out.mkdir(parents=True, exist_ok=True)
    rows, paths = [], []
    with progress() as bar:
        task = bar.add_task(f"predicting with {classifier.loaded.name}", total=len(inputs))
        for path, name in zip(inputs, names, strict=True):
            pred = classifier.predict(path, case_id=name)
            doc = prediction_document(pred, classifier, path)
            target = out / f"{name}.json"
            atomic_write_text(target, json.dumps(doc, indent=2) + "\n")
            paths.append(target)
            value = doc["output"]
            flat = value if isinstance(value, dict) else {"output": value}
            rows.append(
                {
                    "name": name,
                    "input": str(path),
                    **flat,
                    "decision": doc["decision_label"] or "",
                    "uncertainty": doc["uncertainty"],
                    "needs_review": doc["needs_review"],
                }
            )
            shown = doc["decision_label"] or f"{value:.4g}"
            bar.console.print(f"{name}: {shown} → {target}")
            bar.advance(task)
    atomic_write_text(out / "predictions.csv", _csv(rows))
    console.print(f"summary → {out / 'predictions.csv'}")
    return paths
