"""Hypothesis: valid inputs give a finite 0-d float64 score, invalid inputs raise ValueError."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tguide.metrics.functional.hscore import hscore, hscore_shrinkage
from tguide.metrics.functional.leep import leep, nce
from tguide.metrics.functional.logme import logme
from tguide.metrics.functional.transrate import transrate

FEATURE_METRICS = [hscore, hscore_shrinkage, transrate, logme]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def labelled(draw, max_n: int = 24, max_d: int = 8, max_c: int = 5):
    """(features (N, D), labels (N,)) with ≥ 2 classes and features of mixed magnitudes."""
    n = draw(st.integers(2, max_n))
    d = draw(st.integers(1, max_d))
    c = draw(st.integers(2, min(n, max_c)))
    elements = st.one_of(
        st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
        st.integers(-3, 3).map(float),  # exact ties, duplicated rows, constant columns
    )
    features = draw(hnp.arrays(np.float64, (n, d), elements=elements))
    names = draw(st.lists(st.integers(-10**6, 10**6), min_size=c, max_size=c, unique=True))
    codes = draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    codes[0], codes[1] = 0, 1  # at least two classes present
    return features, np.asarray(names)[codes]


def _finite_scalar(value) -> bool:
    return value.ndim == 0 and str(value.dtype) == "torch.float64" and math.isfinite(float(value))


@pytest.mark.parametrize("metric", FEATURE_METRICS, ids=lambda m: m.__name__)
@FUZZ
@given(data=labelled())
def test_valid_feature_inputs_give_finite_scores(metric, data):
    features, labels = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # LogME's convergence notes are allowed
        assert _finite_scalar(metric(features, labels))


@pytest.mark.parametrize("metric", FEATURE_METRICS, ids=lambda m: m.__name__)
@FUZZ
@given(data=labelled(), where=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nonfinite_features_raise(metric, data, where, bad):
    features, labels = data
    features = features.copy()
    features[where[0] % features.shape[0], where[1] % features.shape[1]] = bad
    with pytest.raises(ValueError, match="NaN/Inf"):
        metric(features, labels)


@pytest.mark.parametrize("metric", FEATURE_METRICS, ids=lambda m: m.__name__)
@FUZZ
@given(data=labelled(), cut=st.integers(1, 5))
def test_length_mismatch_and_single_class_raise(metric, data, cut):
    features, labels = data
    with pytest.raises(ValueError, match="entries but the features have"):
        metric(features, np.concatenate([labels, labels[:cut]]))
    with pytest.raises(ValueError, match="distinct class"):
        metric(features, np.full(features.shape[0], labels[0]))


@st.composite
def probabilities(draw):
    n = draw(st.integers(2, 30))
    cs = draw(st.integers(1, 8))
    weights = draw(hnp.arrays(np.float64, (n, cs), elements=st.floats(0.0, 1e3)))
    weights[:, 0] += 1e-3  # no all-zero row
    if draw(st.booleans()):  # hard predictions, including never-predicted source classes
        weights = np.eye(cs)[weights.argmax(axis=1)]
    c = draw(st.integers(2, min(n, 6)))
    codes = draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    codes[0], codes[1] = 0, 1
    return weights / weights.sum(axis=1, keepdims=True), np.asarray(codes) * 7 - 3


@FUZZ
@given(data=probabilities())
def test_leep_and_nce_finite_and_nonpositive(data):
    probs, labels = data
    for value in (leep(probs, labels), nce(probs.argmax(axis=1), labels)):
        assert _finite_scalar(value)
        assert float(value) <= 1e-9


@FUZZ
@given(data=probabilities(), scale=st.floats(1.01, 10.0))
def test_leep_unnormalised_or_mismatched_raise(data, scale):
    probs, labels = data
    with pytest.raises(ValueError, match="must sum to 1"):
        leep(probs * scale, labels)
    with pytest.raises(ValueError, match="entries"):
        leep(probs, labels[:-1])
    with pytest.raises(ValueError, match="rows but `labels` has"):
        nce(probs.argmax(axis=1)[:-1], labels)
