"""Run inside the nnU-Net venv: trained (and snapshot) weights → TorchScript files.

Usage: ``/tmp/peer_nnunet/bin/python benchmarks/nnunet_export.py MODEL_DIR [SNAPSHOT.pt ...]``

Builds fold 0's network the way ``nnUNetPredictor`` does (deep supervision off), loads
the final checkpoint or each snapshot's weights, traces it on one patch, checks the
traced module against the eager one at batch 2, and writes ``MODEL_DIR/export.json``
with the preprocessing facts the shared scorer needs (spacing, patch, normalisation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor


def main(argv: list[str]) -> None:
    model_dir, snapshots = Path(argv[0]), [Path(p) for p in argv[1:]]
    torch.set_num_threads(1)
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(model_dir), use_folds=(0,), checkpoint_name="checkpoint_final.pth"
    )
    net = predictor.network.eval()
    cm, pm = predictor.configuration_manager, predictor.plans_manager
    patch = [int(p) for p in cm.patch_size]
    channels = len(predictor.dataset_json["channel_names"])
    example = torch.randn(1, channels, *patch, generator=torch.Generator().manual_seed(0))
    check = torch.randn(2, channels, *patch, generator=torch.Generator().manual_seed(1))
    jobs = [("final", predictor.list_of_parameters[0])]
    jobs += [(p.stem, torch.load(p, map_location="cpu", weights_only=True)) for p in snapshots]
    files = {}
    for name, state in jobs:
        net.load_state_dict(state)
        with torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)
            if name == "final":  # the same graph for every snapshot: check it once
                gap = float((traced(check) - net(check)).abs().max())
                if gap > 1e-3:
                    raise SystemExit(f"traced network differs from eager by {gap}")
        out = model_dir / f"{name}.ts"
        traced.save(str(out))
        files[name] = str(out)
    info = {
        "patch_size_zyx": patch,
        "spacing": [float(s) for s in cm.spacing],
        "transpose_forward": list(pm.transpose_forward),
        "normalization_schemes": list(cm.normalization_schemes),
        "use_mask_for_norm": [bool(u) for u in cm.use_mask_for_norm],
        "files": files,
    }
    if info["transpose_forward"] != [0, 1, 2]:
        raise SystemExit(
            f"transpose_forward {info['transpose_forward']}: not handled by the scorer"
        )
    if any(s != "ZScoreNormalization" for s in info["normalization_schemes"]):
        raise SystemExit(
            f"normalisation {info['normalization_schemes']}: not handled by the scorer"
        )
    (model_dir / "export.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    main(sys.argv[1:])
