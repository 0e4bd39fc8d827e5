import numpy as np
import pytest
import torch

from tguide.studies.fewshot.episodes import EpisodeSampler
from tguide.errors import TGuideError

LABELS = torch.arange(12).repeat_interleave(20)  # 12 classes × 20 samples


def test_reproducible_and_seed_dependent():
    a = EpisodeSampler(LABELS, 5, 5, 15, seed=3)
    b = EpisodeSampler(LABELS, 5, 5, 15, seed=3)
    e1, e2 = a.episode(7), b.episode(7)
    assert torch.equal(e1.support, e2.support) and torch.equal(e1.query, e2.query)
    assert torch.equal(e1.classes, e2.classes)
    # an episode does not depend on which others were drawn before
    assert torch.equal(a.take(8)[7].support, b.episode(7).support)
    other = EpisodeSampler(LABELS, 5, 5, 15, seed=4).episode(7)
    assert not torch.equal(e1.support, other.support)
    assert not torch.equal(a.episode(0).support, a.episode(1).support)


def test_episode_structure():
    ep = EpisodeSampler(LABELS, 5, 5, 15, seed=0).episode(0)
    assert ep.support.shape == (25,) and ep.query.shape == (75,)
    assert not set(ep.support.tolist()) & set(ep.query.tolist())  # support and query disjoint
    assert len(set(ep.classes.tolist())) == 5
    # episode label k means original class classes[k]
    assert torch.equal(LABELS[ep.support], ep.classes[ep.support_labels])
    assert torch.equal(LABELS[ep.query], ep.classes[ep.query_labels])
    assert torch.bincount(ep.support_labels).tolist() == [5] * 5


def test_class_pool_disjointness():
    val, test = [0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]
    sv = EpisodeSampler(LABELS, 5, 1, 5, classes=val, seed=0)
    st = EpisodeSampler(LABELS, 5, 1, 5, classes=test, seed=0)
    seen_v = {c for e in sv.take(20) for c in e.classes.tolist()}
    seen_t = {c for e in st.take(20) for c in e.classes.tolist()}
    assert seen_v <= set(val) and seen_t <= set(test) and not seen_v & seen_t


def test_errors():
    with pytest.raises(TGuideError, match="only 12 qualify"):
        EpisodeSampler(LABELS, 13, 1, 1)
    with pytest.raises(TGuideError, match="Lower fewshot.n_way or fewshot.n_query"):
        EpisodeSampler(LABELS, 5, 5, 16)  # 21 > 20 samples per class
    with pytest.raises(TGuideError, match="do not occur"):
        EpisodeSampler(LABELS, 2, 1, 1, classes=[0, 99])
    with pytest.raises(TGuideError, match="k_shot must be"):
        EpisodeSampler(np.zeros(5, dtype=int), 1, 0, 1)
