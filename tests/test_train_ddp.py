"""DDP through torchrun (gloo, 2 CPU processes): identical weights, only rank 0 writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from _seg_cohort import make_msd
from medai.preprocess import Plan, apply_overrides, as_cohort, save_plan

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, tempfile
    from pathlib import Path
    import torch
    from medai.preprocess import load_plan
    from medai.training import trainer as T

    msd, plan_path, out, probe = (Path(a) for a in sys.argv[1:5])
    rank = int(os.environ["RANK"])
    writes = []
    if rank != 0:  # record any file this rank would create or rename
        real_mkstemp, real_replace = tempfile.mkstemp, os.replace
        def mkstemp(*a, **k):
            writes.append(str(k.get("dir")))
            return real_mkstemp(*a, **k)
        tempfile.mkstemp = mkstemp
        os.replace = lambda a, b: (writes.append(str(b)), real_replace(a, b))[1]
    real_finish = T._Trainer.finish

    def finish(self, stopped):
        weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        torch.save(weights, probe / f"rank{rank}.pt")  # the test's own instrumentation
        return real_finish(self, stopped)

    T._Trainer.finish = finish
    result = T.train(msd, load_plan(plan_path), out, device="cpu")
    (probe / f"rank{rank}.json").write_text(json.dumps({"writes": writes, "steps": result.steps}))
    """
)


@pytest.mark.slow
def test_torchrun_two_ranks_gloo(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    msd = make_msd(tmp_path / "msd", cases=4)
    cohort = as_cohort(msd)
    plan = Plan(channels=cohort.channels, labels=cohort.labels, regions=cohort.regions)
    plan = apply_overrides(plan, [
        "train.patch_size=[16,16,16]", "train.epochs=1", "train.time_budget_s=null",
        "train.steps_per_epoch=2", "network.depth=3", "network.base_channels=4",
    ])  # fmt: skip
    save_plan(plan, tmp_path / "plan.yaml")
    # preprocess once up front so neither rank has a cache to write
    from medai.preprocess import preprocess_cohort

    preprocess_cohort(cohort.cases, plan.preprocess, tmp_path / "run" / "cache")
    probe = tmp_path / "probe"
    probe.mkdir()
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(script), str(msd),
           str(tmp_path / "plan.yaml"), str(tmp_path / "run"), str(probe)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(probe / "rank0.pt")
    w1 = torch.load(probe / "rank1.pt")
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    r0 = json.loads((probe / "rank0.json").read_text())
    r1 = json.loads((probe / "rank1.json").read_text())
    assert r0["steps"] == r1["steps"] == 2
    assert r1["writes"] == []
    assert (tmp_path / "run" / "model.pt").is_file()
    assert (tmp_path / "run" / "kpis.json").is_file()
    kpis = json.loads((tmp_path / "run" / "kpis.json").read_text())
    assert kpis["world_size"] == 2
