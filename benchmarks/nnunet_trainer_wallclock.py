"""nnU-Net v2 trainer variant for medai's segmentation benchmark (installed into the peer
venv by ``nnunet_setup.sh`` as ``nnUNetTrainerWallClock``).

Everything is nnU-Net's default trainer (network, deep supervision, Dice + BCE on the
regions, SGD with Nesterov at 1e-2, its augmentation and foreground oversampling) except:

- it stops when the benchmark's wall clock (``MEDAI_BENCH_T0``: set before planning and
  preprocessing, so they count) reaches ``MEDAI_BENCH_BUDGET_S``, checked after every
  iteration with the last iteration's duration held in reserve;
- the poly learning-rate decay (``(1 - progress)^0.9``) follows that clock instead of
  1000 epochs of 250 iterations, which a CPU budget never reaches;
- it saves the network weights every ``MEDAI_BENCH_SNAP_EVERY_S`` seconds of the clock
  (the time-to-Dice curve) and writes ``trainer_record.json``;
- torch, numpy and Python are seeded from ``MEDAI_BENCH_SEED`` before the network is built
  (weights, patch sampling and augmentation), and torch uses one thread;
- the final full validation of the fold (sliding window with TTA on the validation
  cases) is skipped: the benchmark scores every arm itself.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f"{name} is not set; run this trainer from benchmarks/seg_benchmark.py")
    return value


class nnUNetTrainerWallClock(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        seed = int(_env("MEDAI_BENCH_SEED"))
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 - nnU-Net's sampling draws from it
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.bench_t0 = float(_env("MEDAI_BENCH_T0"))
        self.bench_budget = float(_env("MEDAI_BENCH_BUDGET_S"))
        self.bench_every = float(_env("MEDAI_BENCH_SNAP_EVERY_S"))
        self.bench_out = Path(_env("MEDAI_BENCH_OUT"))
        self.bench_seed = seed

    def _clock(self) -> float:
        return time.time() - self.bench_t0

    def _set_lr(self) -> None:
        progress = min(self._clock() / self.bench_budget, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.initial_lr * (1.0 - progress) ** 0.9

    def run_training(self) -> None:
        self.on_train_start()
        start_s = self._clock()
        snaps: list[dict] = []
        folder = self.bench_out / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        steps, step_time, last, done = 0, 0.0, 0.0, False
        while not done:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                t = time.perf_counter()
                self._set_lr()
                outputs.append(self.train_step(next(self.dataloader_train)))
                last = time.perf_counter() - t
                step_time += last
                steps += 1
                now = self._clock()
                index = int(now // self.bench_every)  # one snapshot per passed mark at most
                if index >= 1 and (not snaps or index > snaps[-1]["index"]):
                    path = folder / f"snap_{index:03d}.pt"
                    torch.save(self.network.state_dict(), path)
                    snaps.append(
                        {
                            "index": index,
                            "mark_s": index * self.bench_every,
                            "t_s": round(now, 2),
                            "step": steps,
                            "path": str(path),
                        }
                    )
                if self._clock() + last >= self.bench_budget:
                    done = True
                    break
            self.on_train_epoch_end(outputs)
            self.current_epoch += 1
        self.on_train_end()
        record = {
            "steps": steps,
            "samples": steps * self.batch_size,
            "samples_per_s": round(steps * self.batch_size / max(step_time, 1e-9), 3),
            "first_step_at_s": round(start_s, 2),
            "train_end_s": round(self._clock(), 2),
            "patch_size": [int(p) for p in self.configuration_manager.patch_size],
            "batch_size": self.batch_size,
            "snapshots": snaps,
        }
        (self.bench_out / "trainer_record.json").write_text(json.dumps(record, indent=1))

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file("benchmark variant: full validation skipped (scored outside)")
