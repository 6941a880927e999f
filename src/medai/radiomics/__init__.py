"""medai.radiomics: IBSI chapter 1 features from an image and a mask.

Feature definitions, names and codes follow the Image Biomarker Standardisation
Initiative (Zwanenburg et al., Radiology 2020;295:328–338); values are validated on the
IBSI digital phantom (CC BY 4.0).
"""

from medai.radiomics.batch import (
    MaskSource,
    extract_dataset,
    find_prediction,
    wide_table,
    write_features_csv,
)
from medai.radiomics.catalogue import FeatureInfo, feature_catalogue
from medai.radiomics.extract import extract_features, features_table
from medai.radiomics.roi import Roi, prepare_roi
from medai.radiomics.settings import Aggregation, Discretisation, Family, RadiomicsSettings
from medai.radiomics.survival import SurvivalResult, fit_survival
from medai.radiomics.survival_metrics import (
    LogRankResult,
    compute_c_index,
    compute_time_dependent_auc,
    logrank_risk_groups,
)
from medai.radiomics.survival_pipeline import SurvivalModel, SurvivalPipeline, SurvivalSettings

__all__ = [
    "Aggregation",
    "Discretisation",
    "Family",
    "FeatureInfo",
    "LogRankResult",
    "MaskSource",
    "RadiomicsSettings",
    "Roi",
    "SurvivalModel",
    "SurvivalPipeline",
    "SurvivalResult",
    "SurvivalSettings",
    "compute_c_index",
    "compute_time_dependent_auc",
    "extract_dataset",
    "extract_features",
    "feature_catalogue",
    "features_table",
    "find_prediction",
    "fit_survival",
    "logrank_risk_groups",
    "prepare_roi",
    "wide_table",
    "write_features_csv",
]
