import numpy as np
import pytest
import torch

import torchvision

from tguide.metrics.functional.otce import otce_coupling, squared_euclidean, task_distance
from tguide.nets.lenet import LeNet5
from tguide.select.backbone import Backbone
from tguide.select.pretune import accuracy, finetune, otce_pretune, otce_task_loss, trainable_parameters


def _np_sinkhorn_wt(xs, ys, xt, yt, reg, iters=5000):
    """Independent float64 numpy reference: log-domain Sinkhorn with ε = reg·mean(C), then H(Y_t|Y_s)."""
    c = ((xs[:, None, :] - xt[None, :, :]) ** 2).sum(-1)
    eps = reg * c.mean()
    ns, nt = c.shape
    loga, logb = np.full(ns, -np.log(ns)), np.full(nt, -np.log(nt))
    f, g = np.zeros(ns), np.zeros(nt)
    for _ in range(iters):
        m = (g[None, :] - c) / eps
        f = eps * (loga - np.log(np.exp(m - m.max(1, keepdims=True)).sum(1)) - m.max(1))
        m = (f[:, None] - c) / eps
        g = eps * (logb - np.log(np.exp(m - m.max(0, keepdims=True)).sum(0)) - m.max(0))
    pi = np.exp((f[:, None] + g[None, :] - c) / eps)
    sc, tc = np.unique(ys), np.unique(yt)
    joint = np.array([[pi[np.ix_(ys == a, yt == b)].sum() for b in tc] for a in sc])
    marg = joint.sum(1, keepdims=True)
    nz = joint > 0
    return -(joint[nz] * np.log((joint / marg)[nz])).sum()


def test_task_loss_matches_numpy_reference():
    rng = np.random.default_rng(0)
    xs, xt = rng.normal(size=(30, 4)), rng.normal(size=(12, 4)) + 0.3
    ys, yt = rng.integers(0, 5, 30) + 10, np.repeat([3, 1, 7], 4)
    got = otce_task_loss(torch.tensor(xs), torch.tensor(ys), torch.tensor(xt), torch.tensor(yt), reg=0.2, max_iter=5000)
    assert float(got) == pytest.approx(_np_sinkhorn_wt(xs, ys, xt, yt, 0.2), rel=1e-6, abs=1e-9)


def test_gradient_flows_through_coupling_and_is_zero_when_detached():
    torch.manual_seed(0)
    xs = torch.randn(20, 3, dtype=torch.float64)
    xt = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    ys, yt = torch.arange(20) % 4, torch.arange(9) % 3
    loss = otce_task_loss(xs, ys, xt, yt, reg=0.1)
    (grad,) = torch.autograd.grad(loss, xt)
    assert torch.isfinite(grad).all() and grad.abs().max() > 1e-6
    # finite-difference check of one coordinate (the gradient is that of W_T, not of a surrogate)
    h = 1e-5
    bump = torch.zeros_like(xt)
    bump[2, 1] = h
    with torch.no_grad():
        fd = (otce_task_loss(xs, ys, xt + bump, yt, reg=0.1, max_iter=2000)
              - otce_task_loss(xs, ys, xt - bump, yt, reg=0.1, max_iter=2000)) / (2 * h)
    ref = torch.autograd.grad(otce_task_loss(xs, ys, xt, yt, reg=0.1, max_iter=2000), xt)[0][2, 1]
    assert float(ref) == pytest.approx(float(fd), rel=1e-3, abs=1e-7)
    # the same W_T from a detached coupling carries no gradient to the features
    plan = otce_coupling(squared_euclidean(xs, xt), solver="sinkhorn", reg=0.1).detach()
    detached = task_distance(plan, ys, 4, yt, 3)
    assert not detached.requires_grad


def test_pretune_lowers_task_distance_and_changes_only_the_extractor():
    torch.manual_seed(0)
    net = LeNet5(num_classes=10)
    head = net.fc3.weight.detach().clone()
    conv = net.conv1.weight.detach().clone()
    src_x, src_y = torch.randn(64, 1, 28, 28), torch.arange(64) % 4
    tgt_x, tgt_y = torch.randn(9, 1, 28, 28), torch.arange(9) % 3
    hist = otce_pretune(net, src_x, src_y, tgt_x, tgt_y, steps=15, lr=3e-3, batch=64, max_iter=50)
    assert len(hist) == 16
    assert hist[-1] < 0.7 * hist[0]
    assert torch.equal(net.fc3.weight, head) and not torch.equal(net.conv1.weight, conv)


def test_pretune_rejects_bad_options():
    net = LeNet5()
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(ValueError, match="batch ≥ 2"):
        otce_pretune(net, x, torch.arange(4), x, torch.tensor([0, 0, 1, 1]), batch=1)
    with pytest.raises(ValueError, match="last:K"):
        otce_pretune(net, x, torch.arange(4), x, torch.tensor([0, 0, 1, 1]), trainable="last:0")
    with pytest.raises(ValueError, match="selects no trainable"):
        otce_pretune(net, x, torch.arange(4), x, torch.tensor([0, 0, 1, 1]), trainable=["nope"])
    with pytest.raises(ValueError, match="`normalise` must be one of"):
        otce_task_loss(torch.randn(4, 2), torch.arange(4), torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), normalise="z")
    with pytest.raises(ValueError, match="target_labels"):
        otce_task_loss(torch.randn(4, 2), torch.arange(4), torch.randn(4, 2), torch.zeros(4))


def test_finetune_new_head_freeze_and_source_untouched():
    torch.manual_seed(0)
    src = LeNet5(num_classes=10)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    x = torch.randn(12, 1, 28, 28)
    y = torch.arange(12) % 3
    a = finetune(src, x, y, 3, steps=60, lr=1e-2, freeze=["conv1"], seed=5)
    b = finetune(src, x, y, 3, steps=0, seed=5)
    assert a.fc3.out_features == 3 and accuracy(a, x, y) == 1.0  # memorises 12 shots
    assert torch.equal(a.conv1.weight, src.conv1.weight) and not torch.equal(a.conv2.weight, src.conv2.weight)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in before.items())
    assert torch.equal(b.fc3.weight, finetune(src, x, y, 3, steps=0, seed=5).fc3.weight)  # head init is seeded


class _Identity(torch.nn.Module):
    """embed = identity on 2-D points, fc3 = a 3-class source head."""

    def __init__(self):
        super().__init__()
        self.fc3 = torch.nn.Linear(2, 3)

    def embed(self, x):
        return x


def test_otce_head_copies_the_matched_source_rows():
    from tguide.select.pretune import otce_head

    torch.manual_seed(0)
    net = _Identity()
    src_x = torch.tensor([[10.0, 0.0], [10.2, 0.1], [0.0, 10.0], [0.1, 10.2]])
    src_y = torch.tensor([1, 1, 2, 2])  # source classes = indices of fc3's outputs
    tgt_x = torch.tensor([[0.2, 9.9], [0.0, 10.1], [9.8, 0.2], [10.1, -0.1]])
    tgt_y = torch.tensor([0, 0, 1, 1])  # target 0 sits on source 2, target 1 on source 1
    head = otce_head(net, src_x, src_y, tgt_x, tgt_y, 2, reg=0.01, max_iter=2000)
    torch.testing.assert_close(head.weight[0], net.fc3.weight[2], atol=1e-4, rtol=0)
    torch.testing.assert_close(head.weight[1], net.fc3.weight[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(head.bias, net.fc3.bias[[2, 1]], atol=1e-4, rtol=0)


class _SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(torch.nn.functional.max_pool2d(x, 2)))
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def _resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)


@pytest.mark.parametrize("make, layer", [(_SmallCNN, "conv2"), (_resnet18, "layer2")], ids=["small_cnn", "resnet18"])
def test_pretune_lowers_task_distance_for_any_backbone(make, layer):
    torch.manual_seed(0)
    net = make()
    bb = Backbone(net, layer, input_shape=(3, 32, 32))
    after_cut = {n: p.detach().clone() for n, p in bb.named_parameters() if n in bb.unused_parameters}
    assert after_cut and all(not p.requires_grad for n, p in bb.named_parameters() if n in after_cut)
    src_x, src_y = torch.randn(48, 3, 32, 32), torch.arange(48) % 4
    tgt_x, tgt_y = torch.randn(9, 3, 32, 32), torch.arange(9) % 3
    bn_before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    hist = otce_pretune(bb, src_x, src_y, tgt_x, tgt_y, steps=10, lr=3e-3, batch=48, max_iter=50, normalise="l2")
    assert len(hist) == 11 and hist[-1] < 0.8 * hist[0]
    assert all(torch.equal(p, after_cut[n]) for n, p in bb.named_parameters() if n in after_cut)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in bn_before.items())  # eval mode: BN stats kept
    assert net.training  # modes restored


def test_trainable_last_k_moves_only_the_last_modules():
    torch.manual_seed(0)
    net = _SmallCNN()
    bb = Backbone(net, "conv3", input_shape=(3, 16, 16))
    names = [n for n, _ in trainable_parameters(bb, "last:1")]
    assert names == ["network.conv3.weight", "network.conv3.bias"]
    assert [n for n, _ in trainable_parameters(bb, lambda n, p: "conv1" in n)] == ["network.conv1.weight",
                                                                                 "network.conv1.bias"]
    before = {n: p.detach().clone() for n, p in bb.named_parameters()}
    x, y = torch.randn(12, 3, 16, 16), torch.arange(12) % 3
    otce_pretune(bb, x, y, x[:6], torch.arange(6) % 2, steps=2, batch=12, max_iter=20, trainable="last:1")
    changed = {n for n, p in bb.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"network.conv3.weight", "network.conv3.bias"}
