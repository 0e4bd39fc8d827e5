import pytest

from tguide.loggers import make_csv_logger, wandb_mode


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, "offline"), ({"WANDB_API_KEY": "x" * 40}, "online"), ({"WANDB_MODE": "disabled"}, "disabled"),
     ({"WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40}, "offline")],
)
def test_wandb_mode_from_environment(monkeypatch, tmp_path, env, expected):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.delenv("NETRC", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert wandb_mode() == expected


def test_netrc_login_means_online(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    netrc.chmod(0o600)
    assert wandb_mode() == "online"


def test_csv_logger_writes_metrics(tmp_path):
    logger = make_csv_logger(str(tmp_path))
    logger.log_metrics({"val/acc": 0.5}, step=0)
    logger.save()
    assert "val/acc" in (tmp_path / "csv" / "metrics.csv").read_text()
