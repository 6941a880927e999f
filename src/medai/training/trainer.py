"""One training loop for every task, with exact resume, DDP and a time budget.

The loop owns the schedule, checkpoints and budget; the plan's task
(:mod:`medai.training.tasks`) owns data, head, loss, validation and finalisation.
Every training sample is drawn from a seed made of ``(seed, epoch, index)``, so the
data order and every augmentation are functions of counters saved in the checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from medai.errors import PlanError
from medai.fsutil import atomic_path
from medai.networks import build_plan_network
from medai.preprocess.plan import Plan, TaskKind, save_plan
from medai.training.callbacks import (
    RunResult,
    StepInfo,
    StopReason,
    TrainCallback,
    ValidationInfo,
)
from medai.training.data import epoch_batches
from medai.training.distributed import (
    DistInfo,
    all_ranks_agree,
    init_distributed,
    shutdown_distributed,
)
from medai.training.recipe import lr_at, rng_state, seed_all, set_rng_state
from medai.training.records import peak_memory_mb, plot_curve, write_json, write_metrics
from medai.training.state import TrainState
from medai.training.tasks import Task, Validation, task_for

__all__ = ["split_train_val", "train"]

log = logging.getLogger(__name__)


def split_train_val(
    ids: Sequence[str], *, fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Deterministic hold-out: ``fraction`` of ``ids`` (at least one when 0 < fraction)."""
    ordered = sorted(ids)
    if fraction <= 0 or len(ordered) < 2:
        return ordered, []
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_val = min(len(ordered) - 1, max(1, round(fraction * len(ordered))))
    val = sorted(ordered[i] for i in perm[:n_val])
    return [i for i in ordered if i not in val], val


class _Trainer:
    """Holds one run's state; :func:`train` is the public entry point."""

    def __init__(
        self,
        task: Task,
        plan: Plan,
        out_dir: Path,
        callbacks: Sequence[TrainCallback],
        dist: DistInfo,
        case_ids: Sequence[str] | None,
        cache_dir: Path | None,
    ) -> None:
        self.task, self.plan, self.out, self.callbacks = task, plan, out_dir, list(callbacks)
        self.dist = dist
        self.tp = plan.train
        seed_all(self.tp.seed)
        if case_ids is None and task.train_ids and task.val_ids:
            ids = task.train_ids + task.val_ids  # the dataset's own validation split
            self.train_ids, self.val_ids = list(task.train_ids), list(task.val_ids)
        else:
            ids = list(case_ids) if case_ids else (task.train_ids or task.ids())
            self.train_ids, self.val_ids = split_train_val(
                ids, fraction=self.tp.val_fraction, seed=self.tp.seed
            )
        task.require_targets(ids)
        t0 = time.perf_counter()
        paths = self._preprocess(ids, cache_dir or out_dir / "cache")
        self.time_to_preprocess = time.perf_counter() - t0
        self.train_cases = task.load({i: paths[i] for i in self.train_ids}, plan)
        self.val_cases = task.load({i: paths[i] for i in self.val_ids}, plan)
        task.fit_training(plan, self.train_cases)
        length = self.tp.steps_per_epoch * self.tp.batch_size * dist.world_size
        self.dataset = task.dataset(
            self.train_cases, self.tp, seed=self.tp.seed, length=length, full=plan
        )
        self.net = build_plan_network(plan).to(dist.device)
        self.model: nn.Module = DistributedDataParallel(self.net) if dist.distributed else self.net
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=self.tp.lr, weight_decay=self.tp.weight_decay
        )
        self.amp = self.tp.amp and dist.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=self.amp)
        self.loss_fn = task.loss(plan)
        self.state = TrainState()
        self.best: Validation | None = None
        self.last_val_s = 0.0
        self.last_step_s = 0.0

    def _preprocess(self, ids: list[str], cache: Path) -> dict[str, Path]:
        if self.dist.is_main:
            paths = self.task.preprocess(ids, self.plan, cache)
        if self.dist.distributed:
            torch.distributed.barrier()
        if not self.dist.is_main:
            paths = self.task.preprocess(ids, self.plan, cache)
        return paths

    # -- checkpoints -------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        payload = {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": {"kind": "warmup_cosine", "progress": self.progress()},
            "state": self.state.as_dict(),
            "rng": rng_state(),
            "plan": self.plan.model_dump(mode="json"),
        }
        with atomic_path(self.ckpt_dir / "last.pt") as tmp:
            torch.save(payload, tmp)

    def load_checkpoint(self, path: Path) -> None:
        payload = torch.load(path, map_location=self.dist.device, weights_only=False)
        saved = Plan.model_validate(payload["plan"])
        budget = {"epochs", "time_budget_s", "early_stop_patience", "num_workers"}
        for section in ("preprocess", "network", "train"):
            before = getattr(saved, section).model_dump(exclude=budget)
            if before != getattr(self.plan, section).model_dump(exclude=budget):
                raise PlanError(
                    f"cannot resume {path}: its plan's {section!r} section differs from the "
                    "plan given now; resume with the run's own plan.yaml"
                )
        self.net.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState.from_dict(payload["state"])
        set_rng_state(payload["rng"])
        log.info(
            "resumed from %s at epoch %d step %d", path, self.state.epoch, self.state.global_step
        )

    def _save_model(self, name: str) -> None:
        if not self.dist.is_main:
            return
        payload = {"model": self.net.state_dict(), "plan": self.plan.model_dump(mode="json")}
        with atomic_path(self.out / name) as tmp:
            torch.save(payload, tmp)

    # -- schedule ------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.state.elapsed_s + (time.perf_counter() - self.session_start)

    def progress(self) -> float:
        parts = []
        if self.tp.epochs:
            parts.append(self.state.global_step / (self.tp.epochs * self.tp.steps_per_epoch))
        if self.tp.time_budget_s:
            parts.append(self.elapsed() / self.tp.time_budget_s)
        return min(max(parts, default=0.0), 1.0)

    def out_of_time(self) -> bool:
        if not self.tp.time_budget_s:
            return False
        reserve = 1.1 * self.last_val_s + self.last_step_s
        return self.elapsed() + reserve >= self.tp.time_budget_s

    # -- one step / one epoch ----------------------------------------------------
    def step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        x = batch["image"].to(self.dist.device, non_blocking=True)
        y = batch["label"].to(self.dist.device, non_blocking=True)
        lr = lr_at(self.progress(), base=self.tp.lr, warmup=self.tp.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.dist.device.type, enabled=self.amp):
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), y)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.net.parameters(), self.tp.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), lr

    def run_epoch(self) -> tuple[float, bool]:
        """Train the rest of the current epoch; returns (mean loss, stopped early)."""
        st = self.state
        batches = list(
            epoch_batches(
                len(self.dataset),  # type: ignore[arg-type]
                batch_size=self.tp.batch_size,
                epoch=st.epoch,
                seed=self.tp.seed,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                skip=st.step_in_epoch,
            )
        )
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.tp.num_workers)
        for batch in loader:
            t = time.perf_counter()
            loss, lr = self.step(batch)
            self.last_step_s = time.perf_counter() - t
            st.step_time_s += self.last_step_s
            st.samples += int(batch["image"].shape[0]) * self.dist.world_size
            st.global_step += 1
            st.step_in_epoch += 1
            st.epoch_loss.append(loss)
            every = self.tp.checkpoint_every_steps
            if every and st.global_step % every == 0 and st.step_in_epoch < self.tp.steps_per_epoch:
                self.save_checkpoint()
            self._emit_step(loss, lr)
            if all_ranks_agree(self.out_of_time(), self.dist):
                return float(np.mean(st.epoch_loss)), True
        return float(np.mean(st.epoch_loss)), False

    def _emit_step(self, loss: float, lr: float) -> None:
        st = self.state
        info = StepInfo(
            epoch=st.epoch,
            global_step=st.global_step,
            total_steps=self.tp.epochs * self.tp.steps_per_epoch if self.tp.epochs else None,
            loss=loss,
            lr=lr,
            samples_per_s=st.samples / max(st.step_time_s, 1e-9),
            elapsed_s=self.elapsed(),
            progress=self.progress(),
            best_score=st.best_score,
        )
        for cb in self.callbacks:
            cb.on_step(info)

    # -- validation ----------------------------------------------------------------
    def run_validation(self) -> Validation | None:
        if not self.val_cases:
            return None
        t = time.perf_counter()
        result = self.task.validate(self.net, self.val_cases, self.plan, device=self.dist.device)
        self.last_val_s = time.perf_counter() - t
        st = self.state
        st.last_val_end_s = self.elapsed()
        is_best = st.best_score is None or result.score > st.best_score
        if is_best:
            st.best_score, st.best_epoch, st.best_metrics = result.score, st.epoch, result.metrics
            st.bad_validations = 0
            st.best_elapsed_s = self.elapsed()
            st.best_cases = result.cases
            self._save_model("model.pt")
        else:
            st.bad_validations += 1
        info = ValidationInfo(st.epoch, result.metrics, result.score, is_best, self.elapsed())
        for cb in self.callbacks:
            cb.on_validation(info)
        return result

    # -- the whole run -------------------------------------------------------------
    def finished(self) -> StopReason | None:
        st = self.state
        if self.tp.epochs and st.epoch >= self.tp.epochs:
            return StopReason.EPOCHS
        patience = self.tp.early_stop_patience
        if patience and st.bad_validations >= patience:
            return StopReason.EARLY_STOP
        return None

    def end_epoch(self, loss: float, *, complete: bool, force_val: bool) -> None:
        st = self.state
        if complete:
            st.epoch += 1
            st.step_in_epoch = 0
        due = complete and st.epoch % self.tp.val_every == 0 and self._val_affordable()
        due = all_ranks_agree(due, self.dist)  # ranks' clocks differ; decide together
        result = self.run_validation() if (due or force_val) else None
        row: dict[str, Any] = {
            "epoch": st.epoch,
            "global_step": st.global_step,
            "train_loss": round(loss, 5),
            "lr": lr_at(self.progress(), base=self.tp.lr, warmup=self.tp.warmup_fraction),
            "samples_per_s": round(st.samples / max(st.step_time_s, 1e-9), 3),
            "elapsed_s": round(self.elapsed(), 2),
        }
        if result is not None:
            prefix = "_".join(filter(None, ("val", self.task.metric))) + "_"
            row.update({prefix + k: round(v, 4) for k, v in result.metrics.items()})
            row[prefix + self.task.score_name] = round(result.score, 4)
        st.history.append(row)
        st.epoch_loss = []
        st.validated_at = st.epoch if result is not None else st.validated_at
        self.save_checkpoint()
        if self.dist.is_main:
            write_metrics(self.out, st.history)

    def _val_affordable(self) -> bool:
        """With a time budget, keep validation under ``max_val_share`` of the time."""
        if not self.tp.time_budget_s or not self.last_val_s:
            return True
        since = self.elapsed() - self.state.last_val_end_s
        return self.last_val_s <= self.tp.max_val_share * (since + self.last_val_s)

    def run(self, *, resume: bool) -> RunResult:
        last = self.ckpt_dir / "last.pt"
        if resume and last.is_file():
            self.load_checkpoint(last)
        self.session_start = time.perf_counter()
        if self.dist.is_main:
            save_plan(self.plan, self.out / "plan.yaml")
            write_json(
                self.out / "split.json", {"train": self.train_ids, "validation": self.val_ids}
            )
        start = {
            "task": self.plan.task.value,
            "train_cases": len(self.train_ids),
            "val_cases": len(self.val_ids),
            "device": str(self.dist.device),
            "world_size": self.dist.world_size,
            "network": self.plan.network.architecture,
            "epochs": self.tp.epochs,
            "time_budget_s": self.tp.time_budget_s,
        }
        for cb in self.callbacks:
            cb.on_start(start)
        stopped = self.finished()
        while stopped is None:
            loss, out_of_time = self.run_epoch()
            complete = self.state.step_in_epoch >= self.tp.steps_per_epoch
            self.end_epoch(loss, complete=complete, force_val=out_of_time)
            stopped = StopReason.TIME_BUDGET if out_of_time else self.finished()
        if self.val_cases and self.state.validated_at != self.state.epoch:
            self.run_validation()
        return self.finish(stopped)

    def finish(self, stopped: StopReason) -> RunResult:
        st = self.state
        if st.best_score is None:
            self._save_model("model.pt")
        best = (
            Validation(st.best_score, st.best_metrics, st.best_cases)
            if st.best_score is not None
            else None
        )
        if self.dist.distributed:  # rank 0 has written model.pt before anyone reads it
            torch.distributed.barrier()
        if best is not None:  # finalise with the best weights
            payload = torch.load(self.out / "model.pt", map_location="cpu", weights_only=False)
            self.net.load_state_dict(payload["model"])
        final = self.task.finalise(
            self.plan, best, net=self.net, items=self.val_cases, device=self.dist.device
        )
        kpis = {
            "time_to_preprocess_s": round(self.time_to_preprocess, 2),
            "time_to_train_s": round(self.elapsed(), 2),
            "time_to_best_validation_s": st.best_elapsed_s,
            "samples_per_s": round(st.samples / max(st.step_time_s, 1e-9), 3),
            "samples": st.samples,
            "steps": st.global_step,
            "epochs": st.epoch,
            "device": str(self.dist.device),
            "world_size": self.dist.world_size,
            "seed": self.tp.seed,
            "stopped": stopped.value,
            **peak_memory_mb(self.dist.device),
        }
        if self.dist.is_main:
            save_plan(self.plan, self.out / "plan.yaml")
            self._patch_model_plan()
            write_json(self.out / "kpis.json", kpis)
            record = {"task": self.plan.task.value, "best_epoch": st.best_epoch, **final.record}
            write_json(self.out / "validation.json", record)
            if st.history:
                plot_curve(self.out, st.history)
        metrics = final.metrics
        score = float(np.mean(list(metrics.values()))) if metrics else float("nan")
        if self.plan.task is not TaskKind.SEGMENTATION and st.best_score is not None:
            score = st.best_score
        result = RunResult(
            run_dir=self.out,
            best_score=score,
            best_epoch=st.best_epoch,
            best_metrics=metrics,
            epochs=st.epoch,
            steps=st.global_step,
            stopped=stopped,
            kpis=kpis,
            best_tuned=final.tuned,
            task=self.plan.task.value,
        )
        for cb in self.callbacks:
            cb.on_end(result)
        return result

    def _patch_model_plan(self) -> None:
        """Store the final plan (with what finalisation learnt) inside ``model.pt``."""
        payload = torch.load(self.out / "model.pt", map_location="cpu", weights_only=False)
        payload["plan"] = self.plan.model_dump(mode="json")
        with atomic_path(self.out / "model.pt") as tmp:
            torch.save(payload, tmp)


def train(
    source: Any,
    plan: Plan,
    out_dir: str | Path,
    *,
    callbacks: Sequence[TrainCallback] = (),
    case_ids: Sequence[str] | None = None,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    device: str | None = None,
) -> RunResult:
    """Train the model ``plan.task`` names; run under ``torchrun`` for DDP.

    Args:
        source: Segmentation: MSD folder, ``medai.data.Dataset`` or :class:`SegCohort`.
            Classification and regression: a ``Dataset`` or its manifest (any folder
            or file the data layer imports).
        plan: The run's plan (see :func:`medai.training.make_plan`).
        out_dir: Run folder: plan.yaml, model.pt, checkpoints/, metrics, curve, kpis.
        callbacks: Progress receivers (the library itself never prints).
        case_ids: Cases to use for training + validation (default: the dataset's
            training split, else all cases).
        resume: Continue from ``out_dir/checkpoints/last.pt`` when it exists.
        cache_dir: Preprocessing cache (default ``out_dir/cache``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; default CUDA when available.

    Returns:
        The :class:`RunResult`; every rank returns the same figures.
    """
    out = Path(out_dir)
    task = task_for(source, plan)
    dist = init_distributed(device)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(source, str | Path):  # lets `medai evaluate RUN` find the data
            write_json(out / "run.json", {"dataset": str(Path(source).resolve())})
    plan = plan.model_copy(deep=True)
    ok = False
    try:
        trainer = _Trainer(
            task, plan, out, callbacks, dist, case_ids, Path(cache_dir) if cache_dir else None
        )
        result = trainer.run(resume=resume)
        ok = True
        return result
    finally:
        if ok:
            shutdown_distributed(dist)
