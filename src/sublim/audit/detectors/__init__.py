"""Detectors, one file each, registered in :data:`DETECTORS` (in the order an audit runs them)."""

# isort: off
# the order of registration is the order an audit runs them: cheap number statistics first
from sublim.audit.detectors import number_frequency, bag_of_numbers, divergence_shift, likelihood_shift
from sublim.audit.detectors import gradient_alignment
from sublim.audit.detectors import likelihood_ratio, in_context, llm_judge

# isort: on
from sublim.audit.detectors.bag_of_numbers import BagOfNumbers
from sublim.audit.detectors.base import (
    DETECTORS,
    AuditContext,
    AuditData,
    Detector,
    DetectorResult,
    NoParams,
    Params,
    Unavailable,
)
from sublim.audit.detectors.gradient_alignment import GradientAlignment
from sublim.audit.detectors.in_context import InContext
from sublim.audit.detectors.likelihood_ratio import LikelihoodRatio
from sublim.audit.detectors.likelihood_shift import TRAIT_TEMPLATE, LikelihoodShift
from sublim.audit.detectors.llm_judge import LlmJudge
from sublim.audit.detectors.number_frequency import NumberFrequency
from sublim.core.registry import import_components

__all__ = ["DETECTORS", "TRAIT_TEMPLATE", "AuditContext", "AuditData", "BagOfNumbers", "Detector", "DetectorResult",
           "GradientAlignment", "InContext", "LikelihoodRatio", "LikelihoodShift", "LlmJudge", "NoParams",
           "NumberFrequency", "Params", "Unavailable", "bag_of_numbers", "divergence_shift", "gradient_alignment",
           "in_context", "likelihood_ratio", "likelihood_shift", "llm_judge", "number_frequency"]

import_components(__name__, __path__)  # and any other file here: a new component is one file
