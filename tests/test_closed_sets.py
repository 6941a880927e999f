"""Closed sets are StrEnums coerced with ``Enum(value)``; what is saved stays a plain string."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monai.losses import DiceFocalLoss

from medai.data import Split
from medai.errors import ConfigError
from medai.evaluation import (
    Average,
    CIMethod,
    ClassificationAccumulator,
    bootstrap_mean_ci,
    compute_ppv,
    compute_roc_auc,
    delong_test,
    paired_bootstrap_mean,
)
from medai.preprocess import LossKind
from medai.training import StopReason, build_loss

Y_TRUE = np.array([0, 1, 2, 2, 1, 0, 2])
Y_PRED = np.array([0, 2, 2, 1, 1, 0, 2])


def test_bootstrap_method_is_coerced_and_saved_as_text() -> None:
    values = np.linspace(0.5, 0.9, 20)
    ci = bootstrap_mean_ci(values, method="percentile", n_resamples=200)
    assert ci.method is CIMethod.PERCENTILE
    assert bootstrap_mean_ci(values, n_resamples=200).method is CIMethod.BCA
    assert json.dumps({"method": ci.method}) == '{"method": "percentile"}'
    paired = paired_bootstrap_mean(values, values[::-1], method=CIMethod.BCA, n_resamples=200)
    assert paired.method is CIMethod.BCA
    for bad in ("delong", CIMethod.DELONG, "basic"):
        with pytest.raises(ValueError, match=r"method must be one of \('percentile', 'bca'\)"):
            bootstrap_mean_ci(values, method=bad, n_resamples=200)


def test_delong_comparison_says_delong() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    a = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert delong_test(y, a, a[::-1]).method is CIMethod.DELONG


def test_average_strings_and_members_agree() -> None:
    # class 0: 2/2 predicted right; class 1: 1 of 2 predictions right; class 2: 2 of 3
    assert compute_ppv(Y_TRUE, Y_PRED, average="macro") == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert compute_ppv(Y_TRUE, Y_PRED, average=Average.MACRO) == compute_ppv(
        Y_TRUE, Y_PRED, average="macro"
    )
    assert compute_ppv(Y_TRUE, Y_PRED, average=Average.MICRO) == pytest.approx(5 / 7)
    scores = np.eye(3)[Y_PRED] * 0.8 + 0.1
    assert compute_roc_auc(Y_TRUE, scores, average=Average.MICRO) == compute_roc_auc(
        Y_TRUE, scores, average="micro"
    )
    with pytest.raises(ValueError, match=r"average must be one of \('macro', 'micro'\)"):
        compute_roc_auc(Y_TRUE, scores, average="binary")
    assert ClassificationAccumulator(average="micro").average is Average.MICRO
    with pytest.raises(ValueError, match="average must be one of"):
        ClassificationAccumulator(average="weighted")


def test_loss_kind() -> None:
    assert isinstance(build_loss("dice_focal"), DiceFocalLoss)
    assert not isinstance(build_loss(LossKind.DICE_CE), DiceFocalLoss)
    with pytest.raises(ValueError, match="loss must be 'dice_ce' or 'dice_focal'; got 'focal'"):
        build_loss("focal")


def test_stop_reason_and_split_values() -> None:
    assert [s.value for s in StopReason] == ["epochs", "early_stop", "time_budget"]
    assert json.dumps({"stopped": StopReason.TIME_BUDGET}) == '{"stopped": "time_budget"}'
    assert Split.parse("external") is Split.EXTERNAL
    with pytest.raises(ConfigError, match="split must be one of train, validation, test"):
        Split.parse("holdout")
