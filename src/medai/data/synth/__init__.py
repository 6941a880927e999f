"""Synthetic BraTS-like glioma cohort: anatomy, tumours, MR contrasts, clinic, writers."""

from medai.data.synth.appearance import Appearance
from medai.data.synth.clinical import SurvivalModel, draw_survival, survival_covariates
from medai.data.synth.cohort import CohortInfo, SyntheticCase, generate_case, generate_cohort
from medai.data.synth.contrast import Site, SiteRanges, make_sites
from medai.data.synth.tumour import Grade

__all__ = [
    "Appearance",
    "CohortInfo",
    "Grade",
    "Site",
    "SiteRanges",
    "SurvivalModel",
    "SyntheticCase",
    "draw_survival",
    "generate_case",
    "generate_cohort",
    "make_sites",
    "survival_covariates",
]
