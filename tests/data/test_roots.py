from pathlib import Path

import pytest

from tguide.data.roots import DEFAULT_ROOT, ENV_VAR, data_root, dataset_dir
from tguide.errors import DataNotFoundError


def test_env_var_and_argument(monkeypatch, tmp_path):
    (tmp_path / "a").mkdir()
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert data_root() == tmp_path.resolve()
    assert data_root(tmp_path / "a") == (tmp_path / "a").resolve()  # argument beats the variable


def test_default_when_unset(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=r"\.cache/tguide/data.*TGUIDE_DATA"):
        data_root()
    (tmp_path / ".cache/tguide/data").mkdir(parents=True)
    assert data_root() == Path(str(DEFAULT_ROOT).replace("~", str(tmp_path))).resolve()


def test_missing_root_names_path_and_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match=r"nope.*does not exist.*TGUIDE_DATA"):
        data_root()


def test_missing_dataset_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(DataNotFoundError, match=r"dataset 'mnist' not found.*mnist"):
        dataset_dir("mnist")
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DataNotFoundError, match=r"incomplete: missing x\.gz"):
        dataset_dir("mnist", required=("x.gz",))
