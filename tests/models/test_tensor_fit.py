"""fit_tensors: the studies' one loop on in-memory tensors (loss goes down, batch order, schedule, groups)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tguide.models.tensor_fit import fit_tensors


def _data(n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    return torch.randn(n, 4, generator=g) + 2.0 * nn.functional.one_hot(y, 4).float(), y


def test_loss_goes_down_and_log_has_every_step_and_pass():
    x, y = _data()
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    seen = []
    log = fit_tensors(net, x, y, lr=0.3, epochs=5, batch_size=16, optimizer="sgd", on_epoch=lambda *a: seen.append(a))
    assert len(log.step_losses) == 5 * 4 and len(log.epoch_losses) == 5 == len(seen)
    assert log.epoch_losses[-1] < 0.6 * log.epoch_losses[0]
    assert [s[0] for s in seen] == list(range(5)) and seen[2][1] == log.epoch_losses[2]


def test_steps_reshuffle_each_pass_with_the_seeded_generator():
    x, y = _data(10)
    order: list[torch.Tensor] = []

    class Spy(nn.Linear):
        def forward(self, inp):  # records which rows came in, by their first feature
            order.append(inp[:, 0].clone())
            return super().forward(inp)

    fit_tensors(Spy(4, 3), x, y, lr=0.0, steps=4, batch_size=4, seed=5)
    gen = torch.Generator().manual_seed(5)
    first, second = torch.randperm(10, generator=gen), torch.randperm(10, generator=gen)
    expected = [first[:4], first[4:8], first[8:], second[:4]]  # last partial batch kept, then a new pass
    assert len(order) == 4
    for got, idx in zip(order, expected):
        assert torch.equal(got, x[idx, 0])


def test_full_batch_equals_a_hand_written_adam_loop():
    x, y = _data()
    torch.manual_seed(1)
    a = nn.Linear(4, 3)
    b = nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    fit_tensors(a, x, y, lr=0.05, steps=7, weight_decay=1e-3)
    opt = torch.optim.Adam(b.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(7):
        opt.zero_grad()
        nn.functional.cross_entropy(b(x), y).backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_head_lr_multiplier_and_cosine_schedule():
    x, y = _data(32)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    lrs = []
    real_step = torch.optim.SGD.step

    def step(self, *a, **k):
        lrs.append([g["lr"] for g in self.param_groups])
        return real_step(self, *a, **k)

    torch.optim.SGD.step = step
    try:
        fit_tensors(
            net,
            x,
            y,
            lr=0.1,
            epochs=2,
            batch_size=8,
            optimizer="sgd",
            head=net[1],
            head_lr_mult=10.0,
            schedule="cosine",
        )
    finally:
        torch.optim.SGD.step = real_step
    total = 8
    for s, (body, head) in enumerate(lrs):
        assert body == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * s / total)))
        assert head == pytest.approx(10 * body)


def test_eval_mode_and_bad_options():
    x, y = _data(8)
    net = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    fit_tensors(net, x, y, lr=0.01, steps=1, train_mode=False)
    assert not net.training
    with pytest.raises(ValueError, match="exactly one of `epochs` and `steps`"):
        fit_tensors(net, x, y, lr=0.01)
    with pytest.raises(ValueError, match="`optimizer` must be one of"):
        fit_tensors(net, x, y, lr=0.01, steps=1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="same, non-zero number of rows"):
        fit_tensors(net, x, y[:3], lr=0.01, steps=1)
