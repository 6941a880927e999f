"""Region-based segmentation training with exact resume, DDP and a time budget.

Outputs are the declared regions (WT/TC/ET sigmoids for BraTS), the loss is Dice +
binary cross-entropy on those channels, patches are foreground-biased and augmented
by MONAI transforms seeded per sample from ``(seed, epoch, index)``, so the data
order and every augmentation are functions of counters saved in the checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from medai.errors import PlanError
from medai.fsutil import atomic_path
from medai.networks import build_network
from medai.preprocess.cases import SegCohort, as_cohort
from medai.preprocess.pipeline import preprocess_cohort
from medai.preprocess.plan import Plan, save_plan
from medai.training.callbacks import (
    RunResult,
    StepInfo,
    StopReason,
    TrainCallback,
    ValidationInfo,
)
from medai.training.data import PatchDataset, epoch_batches, load_case_arrays
from medai.training.distributed import (
    DistInfo,
    all_ranks_agree,
    init_distributed,
    shutdown_distributed,
)
from medai.training.recipe import build_loss, lr_at, rng_state, seed_all, set_rng_state
from medai.training.records import peak_memory_mb, plot_curve, write_json, write_metrics
from medai.training.validation import DICE_PROTOCOL, CaseScore, fit_inner_threshold, validate

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
        cohort: SegCohort,
        plan: Plan,
        out_dir: Path,
        callbacks: Sequence[TrainCallback],
        dist: DistInfo,
        case_ids: Sequence[str] | None,
        cache_dir: Path | None,
    ) -> None:
        self.plan, self.out, self.callbacks, self.dist = plan, out_dir, list(callbacks), dist
        self.tp = plan.train
        seed_all(self.tp.seed)
        if case_ids is None and cohort.train_ids and cohort.val_ids:
            ids = cohort.train_ids + cohort.val_ids  # the dataset's own validation split
            self.train_ids, self.val_ids = list(cohort.train_ids), list(cohort.val_ids)
        else:
            ids = list(case_ids) if case_ids else (cohort.train_ids or cohort.ids())
            self.train_ids, self.val_ids = split_train_val(
                ids, fraction=self.tp.val_fraction, seed=self.tp.seed
            )
        cohort.require_labels(ids)
        t0 = time.perf_counter()
        cache = cache_dir or out_dir / "cache"
        paths = self._preprocess(cohort, ids, cache)
        self.time_to_preprocess = time.perf_counter() - t0
        self.train_cases = load_case_arrays({i: paths[i] for i in self.train_ids}, plan.regions)
        self.val_cases = load_case_arrays({i: paths[i] for i in self.val_ids}, plan.regions)
        length = self.tp.steps_per_epoch * self.tp.batch_size * dist.world_size
        self.dataset = PatchDataset(self.train_cases, self.tp, seed=self.tp.seed, length=length)
        self.net = build_network(
            plan.network, in_channels=len(plan.channels), out_channels=len(plan.regions)
        ).to(dist.device)
        self.model: nn.Module = DistributedDataParallel(self.net) if dist.distributed else self.net
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=self.tp.lr, weight_decay=self.tp.weight_decay
        )
        self.amp = self.tp.amp and dist.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=self.amp)
        self.loss_fn = build_loss(self.tp.loss)
        self.state: dict[str, Any] = {
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "elapsed_s": 0.0,
            "best_score": None,
            "best_epoch": -1,
            "best_dice": {},
            "best_elapsed_s": None,
            "bad_validations": 0,
            "history": [],
            "best_scores": [],
            "samples": 0,
            "step_time_s": 0.0,
        }
        self.last_val_s = 0.0
        self.last_step_s = 0.0

    def _preprocess(self, cohort: SegCohort, ids: list[str], cache: Path) -> dict[str, Path]:
        cases = cohort.subset(ids)
        if self.dist.is_main:
            paths = preprocess_cohort(cases, self.plan.preprocess, cache)
        if self.dist.distributed:
            torch.distributed.barrier()
        if not self.dist.is_main:
            paths = preprocess_cohort(cases, self.plan.preprocess, cache)
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
            "state": self.state,
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
        self.state = payload["state"]
        set_rng_state(payload["rng"])
        log.info(
            "resumed from %s at epoch %d step %d",
            path,
            self.state["epoch"],
            self.state["global_step"],
        )

    def _save_model(self, name: str) -> None:
        if not self.dist.is_main:
            return
        payload = {"model": self.net.state_dict(), "plan": self.plan.model_dump(mode="json")}
        with atomic_path(self.out / name) as tmp:
            torch.save(payload, tmp)

    # -- schedule ------------------------------------------------------------------
    def elapsed(self) -> float:
        return float(self.state["elapsed_s"]) + (time.perf_counter() - self.session_start)

    def progress(self) -> float:
        parts = []
        if self.tp.epochs:
            parts.append(self.state["global_step"] / (self.tp.epochs * self.tp.steps_per_epoch))
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
                len(self.dataset),
                batch_size=self.tp.batch_size,
                epoch=st["epoch"],
                seed=self.tp.seed,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                skip=st["step_in_epoch"],
            )
        )
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.tp.num_workers)
        st.setdefault("epoch_loss", [])
        for batch in loader:
            t = time.perf_counter()
            loss, lr = self.step(batch)
            self.last_step_s = time.perf_counter() - t
            st["step_time_s"] += self.last_step_s
            st["samples"] += int(batch["image"].shape[0]) * self.dist.world_size
            st["global_step"] += 1
            st["step_in_epoch"] += 1
            st["epoch_loss"].append(loss)
            every = self.tp.checkpoint_every_steps
            if (
                every
                and st["global_step"] % every == 0
                and st["step_in_epoch"] < self.tp.steps_per_epoch
            ):
                self.save_checkpoint()
            self._emit_step(loss, lr)
            if all_ranks_agree(self.out_of_time(), self.dist):
                return float(np.mean(st["epoch_loss"])), True
        return float(np.mean(st["epoch_loss"])), False

    def _emit_step(self, loss: float, lr: float) -> None:
        st = self.state
        info = StepInfo(
            epoch=st["epoch"],
            global_step=st["global_step"],
            total_steps=self.tp.epochs * self.tp.steps_per_epoch if self.tp.epochs else None,
            loss=loss,
            lr=lr,
            samples_per_s=st["samples"] / max(st["step_time_s"], 1e-9),
            elapsed_s=self.elapsed(),
            progress=self.progress(),
            best_score=st["best_score"],
        )
        for cb in self.callbacks:
            cb.on_step(info)

    # -- validation ----------------------------------------------------------------
    def run_validation(self) -> dict[str, float]:
        if not self.val_cases:
            return {}
        t = time.perf_counter()
        scores = validate(self.net, self.val_cases, self.plan, device=self.dist.device)
        self.last_val_s = time.perf_counter() - t
        self.state["last_val_end_s"] = self.elapsed()
        dice = {n: float(np.mean([s.dice[n] for s in scores])) for n in self.plan.regions}
        mean = float(np.mean(list(dice.values())))
        st = self.state
        is_best = st["best_score"] is None or mean > st["best_score"]
        if is_best:
            st.update(best_score=mean, best_epoch=st["epoch"], best_dice=dice, bad_validations=0)
            st["best_elapsed_s"] = self.elapsed()
            st["best_scores"] = [asdict(s) for s in scores]
            self._save_model("model.pt")
        else:
            st["bad_validations"] += 1
        for cb in self.callbacks:
            cb.on_validation(ValidationInfo(st["epoch"], dice, mean, is_best, self.elapsed()))
        return dice

    # -- the whole run -------------------------------------------------------------
    def finished(self) -> StopReason | None:
        st = self.state
        if self.tp.epochs and st["epoch"] >= self.tp.epochs:
            return StopReason.EPOCHS
        patience = self.tp.early_stop_patience
        if patience and st["bad_validations"] >= patience:
            return StopReason.EARLY_STOP
        return None

    def end_epoch(self, loss: float, *, complete: bool, force_val: bool) -> None:
        st = self.state
        if complete:
            st["epoch"] += 1
            st["step_in_epoch"] = 0
        due = complete and st["epoch"] % self.tp.val_every == 0 and self._val_affordable()
        due = all_ranks_agree(due, self.dist)  # ranks' clocks differ; decide together
        dice = self.run_validation() if (due or force_val) else {}
        row: dict[str, Any] = {
            "epoch": st["epoch"],
            "global_step": st["global_step"],
            "train_loss": round(loss, 5),
            "lr": lr_at(self.progress(), base=self.tp.lr, warmup=self.tp.warmup_fraction),
            "samples_per_s": round(st["samples"] / max(st["step_time_s"], 1e-9), 3),
            "elapsed_s": round(self.elapsed(), 2),
        }
        row.update({f"val_dice_{k}": round(v, 4) for k, v in dice.items()})
        if dice:
            row["val_dice_mean"] = round(float(np.mean(list(dice.values()))), 4)
        st["history"].append(row)
        st["epoch_loss"] = []
        st["validated_at"] = st["epoch"] if dice else st.get("validated_at", -1)
        self.save_checkpoint()
        if self.dist.is_main:
            write_metrics(self.out, st["history"])

    def _val_affordable(self) -> bool:
        """With a time budget, keep validation under ``max_val_share`` of the time."""
        if not self.tp.time_budget_s or not self.last_val_s:
            return True
        since = self.elapsed() - float(self.state.get("last_val_end_s", 0.0))
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
            complete = self.state["step_in_epoch"] >= self.tp.steps_per_epoch
            self.end_epoch(loss, complete=complete, force_val=out_of_time)
            stopped = StopReason.TIME_BUDGET if out_of_time else self.finished()
        if self.val_cases and self.state.get("validated_at") != self.state["epoch"]:
            self.run_validation()
        return self.finish(stopped)

    def finish(self, stopped: StopReason) -> RunResult:
        st = self.state
        if st["best_score"] is None:
            self._save_model("model.pt")
        best_dice, tuned_dice, validation = self._fit_inner_threshold()
        kpis = {
            "time_to_preprocess_s": round(self.time_to_preprocess, 2),
            "time_to_train_s": round(self.elapsed(), 2),
            "time_to_best_validation_s": st["best_elapsed_s"],
            "samples_per_s": round(st["samples"] / max(st["step_time_s"], 1e-9), 3),
            "samples": st["samples"],
            "steps": st["global_step"],
            "epochs": st["epoch"],
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
            write_json(self.out / "validation.json", validation)
            if st["history"]:
                plot_curve(self.out, st["history"])
        best = float(np.mean(list(best_dice.values()))) if best_dice else float("nan")
        result = RunResult(
            run_dir=self.out,
            best_score=best,
            best_epoch=st["best_epoch"],
            best_dice=best_dice,
            epochs=st["epoch"],
            steps=st["global_step"],
            stopped=stopped,
            kpis=kpis,
            best_dice_tuned=tuned_dice,
        )
        for cb in self.callbacks:
            cb.on_end(result)
        return result

    def _fit_inner_threshold(self) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
        """Choose the innermost-region (ET) threshold on the best validation's cases.

        Returns the best Dice with that region cross-fitted (leave-one-out: honest), its
        Dice tuned on the cases it is scored on (optimistic; empty when nothing was
        tuned), and the ``validation.json`` record.
        """
        st = self.state
        best, cases = dict(st["best_dice"]), st["best_scores"]
        fit = fit_inner_threshold([CaseScore(**s) for s in cases], self.plan.regions)
        if fit is None:
            return best, {}, {"best_epoch": st["best_epoch"], "best_dice": best, "cases": cases}
        self.plan.inference.et_min_volume_ml = fit.min_volume_ml
        self.plan.notes["learned_inner_threshold"] = {
            "region": fit.region,
            "min_volume_ml": fit.min_volume_ml,
            "validation_cases": len(cases),
        }
        tuned = {fit.region: fit.tuned_dice}
        best[fit.region] = fit.cross_fitted_dice
        record = {
            "best_epoch": st["best_epoch"],
            "best_dice": best,
            "best_dice_tuned": tuned,
            "protocol": DICE_PROTOCOL.format(inner=fit.region),
            "inner_threshold": asdict(fit),
            "cases": cases,
        }
        return best, tuned, record

    def _patch_model_plan(self) -> None:
        """Store the final plan (with the learnt threshold) inside ``model.pt``."""
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
    """Train a region segmentation model; run under ``torchrun`` for DDP.

    Args:
        source: MSD folder, ``medai.data.Dataset`` or :class:`SegCohort`.
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
    cohort = as_cohort(source)
    if len(plan.channels) != len(cohort.channels):
        raise PlanError(
            f"plan has {len(plan.channels)} channels, dataset {len(cohort.channels)}; "
            "make the plan from this dataset (medai plan)"
        )
    dist = init_distributed(device)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(source, str | Path):  # lets `medai evaluate RUN` find the data
            write_json(out / "run.json", {"dataset": str(Path(source).resolve())})
    plan = plan.model_copy(deep=True)
    ok = False
    try:
        trainer = _Trainer(
            cohort, plan, out, callbacks, dist, case_ids, Path(cache_dir) if cache_dir else None
        )
        result = trainer.run(resume=resume)
        ok = True
        return result
    finally:
        if ok:
            shutdown_distributed(dist)
