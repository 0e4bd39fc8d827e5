"""FineTuner and the finetune recipe: one-epoch smoke runs on every candidate family, on tiny real data."""

import json
import os
from pathlib import Path

import pytest
import torch

from tguide.errors import TGuideError
from tguide.fit import compose, fit
from tguide.select.finetune import FineTuner
from tguide.select.target_data import source_samples, target_datamodule

REPO = Path(__file__).resolve().parents[2]
QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "trainer.accelerator=cpu", "logger=csv", "name=unit", "data.batch_size=16"]


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    if not os.environ.get("TGUIDE_MODELS"):
        monkeypatch.setenv("TGUIDE_MODELS", str(REPO.parent / "shared" / "models"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _link_split(files_by_class, dst):
    for c, files in files_by_class.items():
        for split, part in (("train", files[:10]), ("val", files[10:14]), ("test", files[14:20])):
            d = dst / split / c
            d.mkdir(parents=True, exist_ok=True)
            for f in part:
                (d / f.name).symlink_to(f)
    return dst


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    """3 CIFAR-10 classes, 10 / 4 / 6 JPEGs each (train / val / test), linked from the shared copy."""
    from tests.conftest import _data_root

    src = _data_root() / "cifar10" / "test"
    files = {c: sorted((src / c).glob("*.jpg"))[:20] for c in ("airplane", "cat", "ship")}
    return _link_split(files, tmp_path_factory.mktemp("tiny_cifar"))


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory):
    """3 MNIST digits (28×28 grey PNGs), 10 / 4 / 6 each: a target the MNIST LeNets read."""
    from PIL import Image

    from tests.conftest import _data_root
    from tguide.data.mnist import load_mnist_test

    images, labels = load_mnist_test(_data_root())
    raw = tmp_path_factory.mktemp("digits_raw")
    files = {}
    for d in (3, 5, 8):
        idx = torch.nonzero(labels == d).flatten()[:20]
        (raw / str(d)).mkdir()
        files[str(d)] = []
        for i in idx.tolist():
            path = raw / str(d) / f"{i:05d}.png"
            Image.fromarray(images[i].numpy(), mode="L").save(path)
            files[str(d)].append(path)
    return _link_split(files, tmp_path_factory.mktemp("tiny_digits"))


def _run(tmp_path, *overrides):
    cfg = compose(["recipe=finetune", *QUICK, f"paths.run_dir={tmp_path}", *overrides])
    metrics = fit(cfg)
    assert {"val/acc", "test/acc", "train/loss_epoch"} <= set(metrics)
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    return metrics


def test_zoo_cifar_resnet_with_otce_pretune(tmp_path, tiny_cifar):
    m = _run(tmp_path, f"data.root={tiny_cifar}", "finetune.candidate=zoo:resnet20_cifar10", "finetune.layer=layer3",
             "finetune.pretune=otce", "model.pretune_samples=40", "model.pretune_options.steps=3",
             "model.pretune_options.batch=20", "model.pretune_options.max_iter=30")
    rec = json.loads((tmp_path / "pretune.json").read_text())
    assert rec["source"] == "cifar10" and rec["source_samples"] == 40 and rec["target_shots"] == 30
    assert len(rec["w_t"]) == 4 and rec["w_t"][-1] < rec["w_t"][0]
    assert m["pretune/w_t_after"] == pytest.approx(rec["w_t"][-1], rel=1e-5)
    # the checkpoint rebuilds the model on its own (candidate spec, layer and class count are saved)
    model = FineTuner.load_from_checkpoint(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu")
    assert model.layer == "layer3" and model.head.out_features == 3 and model.backbone.feature_dim == 64
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_zoo_lenet_on_digits(tmp_path, tiny_digits):
    _run(tmp_path, f"data.root={tiny_digits}", "finetune.candidate=zoo:lenet5_mnist")
    cfg = json.loads(json.dumps(dict(torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False,
                                                map_location="cpu")["hyper_parameters"])))
    assert cfg["layer"] is None and cfg["num_classes"] == 3  # default layer: the candidate's penultimate


def test_torchvision_random_init(tmp_path, tiny_cifar):
    _run(tmp_path, f"data.root={tiny_cifar}", "finetune.candidate=torchvision:resnet18", "finetune.layer=layer1",
         "data.batch_size=8")


def test_ckpt_of_a_tguide_run(tmp_path, tiny_digits):
    src = tmp_path / "source"
    fit(compose(["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                 "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "callbacks=default",
                 "trainer.enable_model_summary=false", "logger=none", "name=unit", f"paths.run_dir={src}"]))
    _run(tmp_path / "ft", f"data.root={tiny_digits}", f"finetune.candidate=ckpt:{src / 'checkpoints' / 'best.ckpt'}",
         "finetune.layer=fc1")


def test_finetuner_parts(tiny_cifar):
    dm = target_datamodule(str(tiny_cifar), candidate="zoo:simplecnn_cifar10", batch_size=8)
    model = FineTuner("zoo:simplecnn_cifar10", "relu3", 3, lr_backbone=1e-4, lr_head=1e-2, weight_decay=0.0)
    opt = model.configure_optimizers()["optimizer"]
    (g_backbone, g_head) = opt.param_groups
    assert (g_backbone["lr"], g_head["lr"]) == (1e-4, 1e-2)
    ids = {id(p) for p in g_backbone["params"]}
    assert all(id(p) not in ids for p in model.backbone.network.fc3.parameters())  # after the cut: frozen
    assert id(model.backbone.network.conv1.weight) in ids
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and model(x).shape == (8, 3)
    probe = FineTuner("zoo:simplecnn_cifar10", "relu3", 3, freeze_backbone=True)
    assert len(probe.configure_optimizers()["optimizer"].param_groups) == 1
    with pytest.raises(TGuideError, match="pretune must be one of"):
        FineTuner("zoo:simplecnn_cifar10", pretune="sinkhorn")
    with pytest.raises(TGuideError, match="needs source samples"):
        FineTuner("torchvision:resnet18", pretune="otce")
    with pytest.raises(TGuideError, match="unknown pretune option"):
        FineTuner("zoo:simplecnn_cifar10", pretune="otce", pretune_options={"stepz": 3})


def test_source_samples_and_named_targets():
    x, y = source_samples("zoo:lenet5_mnist", max_samples=30)
    assert x.shape == (30, 1, 28, 28) and set(y.tolist()) == set(range(10))
    with pytest.raises(TGuideError, match="pretune_source"):
        source_samples("torchvision:resnet18")
    dm = target_datamodule("usps", candidate="zoo:lenet5_mnist", train_per_class=2, batch_size=100)
    x, y = next(iter(dm.train_dataloader()))
    assert dm.num_classes == 10 and x.shape == (20, 1, 28, 28) and sorted(y.tolist()) == sorted(list(range(10)) * 2)


def test_otce_pretune_is_a_callback_of_the_otce_path():
    from tguide.select.pretune_callback import OTCEPretune

    assert FineTuner("zoo:simplecnn_cifar10", "relu3", 3).configure_callbacks() == []
    (cb,) = FineTuner("zoo:simplecnn_cifar10", "relu3", 3, pretune="otce",
                      pretune_options={"steps": 2}).configure_callbacks()
    assert isinstance(cb, OTCEPretune) and cb.options["steps"] == 2 and cb.options["reg"] == 0.1
    with pytest.raises(TGuideError, match="unknown pretune option"):
        OTCEPretune("zoo:simplecnn_cifar10", options={"stepz": 3})


def test_finetune_function_learns_and_keeps_the_best_checkpoint(tmp_path, tiny_digits):
    from tguide.select.finetune import FineTuneResult, finetune

    res = finetune("zoo:lenet5_mnist", str(tiny_digits), epochs=2, lr=1e-3, seed=0, batch_size=8, out_dir=tmp_path)
    assert isinstance(res, FineTuneResult) and res.candidate == "lenet5_mnist"
    assert 0.0 <= res.test_acc <= 1.0 and 0.0 <= res.val_acc <= 1.0
    assert res.checkpoint is not None and res.checkpoint.is_file() and res.pretune_history == ()
    # 3 digit classes: the MNIST LeNet's features carry over, so one beats chance (1/3) clearly
    assert res.test_acc > 0.5
    with pytest.raises(TGuideError, match="epochs"):
        finetune("zoo:lenet5_mnist", str(tiny_digits), epochs=0)
