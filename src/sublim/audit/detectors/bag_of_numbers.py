"""Bag of numbers: can a classifier tell the dataset from the reference by which numbers occur?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from sublim.audit.data import Sample
from sublim.audit.detectors.base import DETECTORS, AuditContext, Detector, DetectorResult, Params
from sublim.audit.numbers import number_counts


class BagOfNumbers:
    """A classifier of dataset vs reference samples on which numbers they contain (logistic
    regression, stratified k-fold): out-of-fold probabilities are the sample scores, their AUROC
    the statistic, and a Mann–Whitney test of dataset vs reference scores the p-value."""

    name = "bag_of_numbers"

    def __init__(self, reference: Sequence[Sample], folds: int = 5, seed: int = 0) -> None:
        self.ref = number_counts(reference)
        self.folds, self.seed = folds, seed

    def score(self, samples: Sequence[Sample]) -> DetectorResult:
        data = number_counts(samples)
        x = np.vstack([data, self.ref])
        x = np.hstack([x > 0, np.log1p(x.sum(1, keepdims=True))]).astype(float)
        y = np.r_[np.ones(len(data)), np.zeros(len(self.ref))]
        oof = np.zeros(len(y))
        folds = max(2, min(self.folds, int(min(y.sum(), (1 - y).sum()))))
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=self.seed).split(x, y):
            clf = LogisticRegression(C=0.5, max_iter=2000)
            clf.fit(x[train], y[train])
            oof[test] = clf.predict_proba(x[test])[:, 1]
        auroc = float(roc_auc_score(y, oof))
        p = float(mannwhitneyu(oof[y == 1], oof[y == 0], alternative="greater").pvalue)
        return DetectorResult(self.name, oof[: len(data)], auroc, p, {"auroc": auroc, "folds": folds})


class BagOfNumbersParams(Params):
    folds: int = Field(5, ge=2)
    """Cross-validation folds (fewer where a side has fewer samples)."""


def _run(ctx: AuditContext, params: BagOfNumbersParams) -> DetectorResult:
    return BagOfNumbers(ctx.data.reference, params.folds, ctx.seed).score(ctx.data.samples)


DETECTORS.add("bag_of_numbers", Detector(
    "bag_of_numbers", _run, "cross-validated logistic classifier of data vs reference on the numbers used (AUROC)",
    needs_numbers=True, params=BagOfNumbersParams))
