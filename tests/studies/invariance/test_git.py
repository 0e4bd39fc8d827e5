"""GIT: the batch rule replaces only below-threshold classes; the transformation CVAE learns."""

import pytest
import torch

from tguide.studies.invariance.transforms import rotate
from tguide.studies.invariance.git import GITGenerator, TransformationCVAE, diagnose, fit_git, git_batch, small_class_mask


def test_small_class_mask_is_at_most_threshold():
    assert small_class_mask(torch.tensor([500, 20, 21, 5]), 20).tolist() == [False, True, False, True]


def test_git_batch_replaces_only_small_classes():
    x = torch.randn(12, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 3] * 3)
    small = small_class_mask(torch.tensor([100, 5, 50, 20]), threshold=20)  # classes 1 and 3
    out, y2, replaced = git_batch(x, y, small, lambda v: v + 100.0)
    assert torch.equal(y2, y)
    assert replaced.tolist() == [c in (1, 3) for c in y.tolist()]
    torch.testing.assert_close(out[replaced], x[replaced] + 100.0)
    assert torch.equal(out[~replaced], x[~replaced])
    assert not torch.equal(x[replaced], out[replaced])  # the input is not modified in place
    # no small class in the batch: nothing generated
    calls = []
    git_batch(x[y % 2 == 0], y[y % 2 == 0], small, lambda v: calls.append(v) or v)
    assert calls == []


def test_git_batch_probability():
    x, y = torch.zeros(4000, 1, 2, 2), torch.zeros(4000, dtype=torch.long)
    _, _, replaced = git_batch(x, y, torch.tensor([True]), lambda v: v + 1, prob=0.3,
                               generator=torch.Generator().manual_seed(0))
    assert 0.27 < float(replaced.float().mean()) < 0.33
    with pytest.raises(ValueError, match="prob"):
        git_batch(x, y, torch.tensor([True]), lambda v: v, prob=1.5)


def _rotated_bars(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    base = torch.zeros(n, 1, 28, 28)
    base[:, 0, 12:16, 5:23] = 1.0
    t = (torch.rand(n, generator=gen) * 2 - 1) * 60
    return rotate(base, t), t


def test_cvae_loss_decreases_and_generator_keeps_shape():
    gen = torch.Generator().manual_seed(0)
    px, t = _rotated_bars(64, gen)
    x = (px - 0.1307) / 0.3081
    y = torch.zeros(64, dtype=torch.long)
    y[:4] = 1  # a tail class with 4 images
    counts = torch.bincount(y)

    def reconstruction(model: TransformationCVAE) -> float:
        torch.manual_seed(123)  # the same z noise before and after training
        with torch.no_grad():
            return float(model.loss(px[4:34], px[34:64], beta=1.0)[1])

    torch.manual_seed(0)  # fit_git seeds the same way, so `before` is its initial network
    before = reconstruction(TransformationCVAE("rotation"))
    g = fit_git(x, y, counts, threshold=4, fam="rotation", steps=60, batch=16, seed=0)
    assert g.info["trained_on_classes"] == [0] and g.info["trained_on_images"] == 60
    assert reconstruction(g.model) < 0.9 * before
    out = g(x[:4], torch.Generator().manual_seed(1))
    assert out.shape == x[:4].shape and not torch.allclose(out, x[:4])
    d = diagnose(g, x, t, samples=2)
    assert d["std_theta"] > 0 and -1 <= d["corr_t_after"] <= 1


def test_fit_git_needs_a_big_class():
    x = torch.zeros(10, 1, 28, 28)
    with pytest.raises(ValueError, match="lower the threshold"):
        fit_git(x, torch.zeros(10, dtype=torch.long), torch.tensor([10]), threshold=10, fam="rotation", steps=1)


def test_generator_is_seeded():
    torch.manual_seed(0)
    g = GITGenerator(TransformationCVAE("scale"))
    x = torch.randn(3, 1, 28, 28)
    a = g(x, torch.Generator().manual_seed(7))
    b = g(x, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
