"""Per-study latency and peak memory of ``medai predict``: the bundle on ONNX Runtime
(numpy sliding window, no torch) against PyTorch + MONAI ``sliding_window_inference``.

Both engines run the same network (one set of weights; ``--run`` for a trained run,
else the plan's network with seeded random weights, output prior 0.5 by default so that
the label maps are not empty), the same preprocessing and
post-processing, the same window, overlap (the plan's), Gaussian blending, windows per
call (2) and thread count (``--threads``, also exported as ``OMP_NUM_THREADS``).

The study is a 4-channel phantom of ``--size`` voxels at 1 mm (default 240 × 240 × 155,
BraTS), written as NIfTI (or, with ``--input dicom``, one DICOM series per channel).

- **warm**: one process per engine loads the model once, predicts once untimed, then
  times ``--repeats`` studies (read → predict → write the label map).
- **cold**: one fresh process per study, timed from the parent's spawn to the child's
  exit: interpreter start, imports, model load, read, predict, write.

Peak memory is each child's own peak RSS (``VmHWM``). The label maps of the two
engines are compared voxel for voxel. Figures for the notes need a dedicated core::

    flock /tmp/medai_bench.lock taskset -c 1 .venv/bin/python benchmarks/predict_latency.py \\
        --threads 1 --json predict_latency.json

A quick check of the script on a small study::

    taskset -c 0 .venv/bin/python benchmarks/predict_latency.py --size 96 96 64 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ENGINES = ("onnx", "torch")


def make_study(folder: Path, size: tuple[int, int, int], kind: str) -> Path:
    """A 1 mm, 4-channel brain phantom with a nested tumour; NIfTI file or DICOM folder."""
    from medai.image import ScalarImage
    from medai.io import write_dicom_series, write_nifti

    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(size) - 1) / 2.0
    grid = np.indices(size).astype(np.float32)
    centre = (np.asarray(size, dtype=np.float32) - 1) / 2.0
    semi = np.asarray(size, dtype=np.float32) * 0.4
    brain = sum(((grid[i] - centre[i]) / semi[i]) ** 2 for i in range(3)) <= 1.0
    r = np.sqrt(sum((grid[i] - centre[i] - semi[i] * 0.3) ** 2 for i in range(3)))
    label = np.zeros(size, np.uint8)
    label[(r <= 0.25 * semi.min()) & brain] = 1
    label[r <= 0.15 * semi.min()] = 2
    label[(r <= 0.15 * semi.min()) & (r > 0.09 * semi.min())] = 3
    rng = np.random.default_rng(0)
    bumps = {1: (80, -10, 0, 90), 2: (30, -40, 10, 50), 3: (20, 0, 120, 30)}
    image = np.zeros((4, *size), np.float32)
    for c, base in enumerate((100, 80, 90, 110)):
        chan = base + 2.0 * rng.standard_normal(size, dtype=np.float32)
        for lab, deltas in bumps.items():
            chan[label == lab] += deltas[c]
        image[c] = np.where(brain, np.round(chan), 0.0)
    study = ScalarImage(image, affine)
    if kind == "nifti":
        return write_nifti(study, folder / "study.nii.gz")
    root = folder / "study"
    for c, name in enumerate(("FLAIR", "T1w", "t1gd", "T2w")):
        write_dicom_series(
            study.channel(c),
            root / name,
            patient_id="BENCH",
            patient_name="Bench^P",
            study_uid="1.2.826.0.1.3680043.8.498.77",
            series_number=c + 1,
            series_description=name,
        )
    return root


def make_models(folder: Path, plan_path: Path | None, run: Path | None) -> tuple[Path, Path]:
    """A run folder (``model.pt``) and its bundle, exported with medai's parity check."""
    import torch

    from medai.export import export_bundle
    from medai.inference import LoadedRun, load_run
    from medai.networks import build_network
    from medai.preprocess import Plan, load_plan

    if run is None:
        plan = (
            load_plan(plan_path)
            if plan_path
            else Plan(
                channels=["FLAIR", "T1w", "t1gd", "T2w"],
                labels={
                    0: "background",
                    1: "edema",
                    2: "non-enhancing tumor",
                    3: "enhancing tumour",
                },
                regions={"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]},
            )
        )
        if not plan_path:  # untrained logits near 0, so that the label maps are not empty
            plan.network.output_prior = 0.5
        torch.manual_seed(0)
        net = build_network(
            plan.network, in_channels=len(plan.channels), out_channels=len(plan.regions)
        )
        run = folder / "run"
        run.mkdir()
        payload = {"model": net.state_dict(), "plan": plan.model_dump(mode="json")}
        torch.save(payload, run / "model.pt")
    loaded: LoadedRun = load_run(run, device="cpu")
    bundle = folder / "bundle"
    parity_study = make_study(folder / "parity", (64, 64, 48), "nifti")
    from medai.io import read_image

    export_bundle(loaded, bundle, parity_cases=[read_image(parity_study)], run_dir=run)
    return run, bundle


def worker(engine: str, model: Path, study: Path, out: Path, repeats: int, threads: int) -> None:
    """Child process: load, predict ``repeats`` + 1 studies, print timings as JSON."""
    t_start = time.perf_counter()
    if engine == "onnx":
        from medai.inference.study import read_study, write_prediction
        from medai.runtime import Segmenter

        segmenter = Segmenter(model, threads=threads, device="cpu")

        def predict(path: Path) -> Any:
            return segmenter.predict(read_study(path, segmenter.loaded.channels))
    else:
        import torch

        from medai.inference import load_run, predict_case, read_study, write_prediction

        torch.set_num_threads(max(threads, 1) if threads else torch.get_num_threads())
        loaded = load_run(model, device="cpu")

        def predict(path: Path) -> Any:
            return predict_case(loaded, read_study(path, loaded.plan.channels))

    t_loaded = time.perf_counter()
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        write_prediction(predict(study), out / f"{engine}_{i}.nii.gz")
        times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "load_s": t_loaded - t_start,
                "first_s": times[0],
                "warm_s": times[1:],
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ``ru_maxrss``, not inherited
    from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def spawn(
    engine: str, model: Path, study: Path, out: Path, repeats: int, threads: int
) -> dict[str, Any]:
    """Run a worker; its JSON and the wall time from spawn to exit."""
    env = dict(os.environ)
    if threads:
        env.update(
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            OPENBLAS_NUM_THREADS=str(threads),
        )
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--model",
        str(model),
        "--study",
        str(study),
        "--out",
        str(out),
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(wall_s=wall, child_peak_rss_mb=result["peak_rss_mb"])
    return result


def _median_iqr(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f} s" if values else "-"
    q = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.2f} s [{q[0]:.2f}–{q[2]:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=(240, 240, 155))
    parser.add_argument("--input", choices=("nifti", "dicom"), default="nifti")
    parser.add_argument("--repeats", type=int, default=5, help="warm studies per engine")
    parser.add_argument("--cold-repeats", type=int, default=3, help="cold processes per engine")
    parser.add_argument("--threads", type=int, default=1, help="0: each library's default")
    parser.add_argument("--plan", type=Path, help="plan.yaml whose network to use")
    parser.add_argument("--run", type=Path, help="a trained run folder instead")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--study", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.study, args.out, args.repeats, args.threads)
        return
    with tempfile.TemporaryDirectory(prefix="medai-latency-") as tmp:
        root = Path(tmp)
        study = make_study(root, tuple(args.size), args.input)
        run, bundle = make_models(root, args.plan, args.run)
        models = {"onnx": bundle, "torch": run}
        figures: dict[str, Any] = {}
        for engine in ENGINES:  # warm: one process, model loaded once
            out = root / f"warm_{engine}"
            out.mkdir()
            figures[engine] = {
                "warm": spawn(engine, models[engine], study, out, args.repeats, args.threads)
            }
        for engine in ENGINES:  # cold: a fresh process per study, alternating engines
            figures[engine]["cold"] = []
        for i in range(args.cold_repeats):
            for engine in ENGINES:
                out = root / f"cold_{engine}_{i}"
                out.mkdir()
                figures[engine]["cold"].append(
                    spawn(engine, models[engine], study, out, 0, args.threads)
                )
        from medai.io import read_nifti

        a = read_nifti(root / "warm_onnx" / "onnx_0.nii.gz").array
        b = read_nifti(root / "warm_torch" / "torch_0.nii.gz").array
        agreement = float(np.mean(a == b))
    report(args, figures, agreement, int(np.count_nonzero(a)))


def report(
    args: argparse.Namespace, figures: dict[str, Any], agreement: float, nonzero: int
) -> None:
    """Print the table and ratios; write ``--json``."""
    rows = {}
    for engine in ENGINES:
        warm = figures[engine]["warm"]
        cold = [c["wall_s"] for c in figures[engine]["cold"]]
        rows[engine] = {
            "warm_median_s": statistics.median(warm["warm_s"]) if warm["warm_s"] else None,
            "warm_s": warm["warm_s"],
            "warm_peak_rss_mb": warm["child_peak_rss_mb"],
            "load_s": warm["load_s"],
            "cold_median_s": statistics.median(cold) if cold else None,
            "cold_s": cold,
            "cold_peak_rss_mb": max(
                (c["child_peak_rss_mb"] for c in figures[engine]["cold"]), default=None
            ),
        }
        print(
            f"{engine:5s} warm {_median_iqr(warm['warm_s'])} · cold {_median_iqr(cold)} · "
            f"model load {warm['load_s']:.2f} s · "
            f"peak RSS warm {warm['child_peak_rss_mb']:.0f} MiB, "
            f"cold {rows[engine]['cold_peak_rss_mb'] or 0:.0f} MiB"
        )
    ratios = {}
    for key in ("warm_median_s", "cold_median_s"):
        o, t = rows["onnx"][key], rows["torch"][key]
        if o and t:
            ratios[key.replace("_median_s", "_speedup")] = t / o
    print(" · ".join(f"{k}: torch/onnx {v:.2f}×" for k, v in ratios.items()))
    print(
        f"label maps: {agreement * 100:.3f} % of voxels equal ({nonzero} labelled by ONNX Runtime)"
    )
    if args.json:
        doc = {
            "size": list(args.size),
            "input": args.input,
            "threads": args.threads,
            "repeats": args.repeats,
            "cold_repeats": args.cold_repeats,
            "machine": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "engines": rows,
            "ratios": ratios,
            "label_agreement": agreement,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
