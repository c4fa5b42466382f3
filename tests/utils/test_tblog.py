"""TBLogger: off unless the config asks; without the tensorboard package, a no-op with one warning."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from utils import tblog  # noqa: E402


def _cfg(on: bool) -> dict:
    return {"training": {"tensorboard": on}}


def test_disabled_by_config_writes_nothing(tmp_path):
    log = tblog.TBLogger(tmp_path, _cfg(False))
    assert not log.active
    log.add_scalars({"loss": 1.0}, 1)
    log.close()
    assert not (tmp_path / "tensorboard").exists()


def test_missing_package_warns_once_and_does_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tblog, "tensorboard_available", lambda: False)
    monkeypatch.setattr(tblog, "_warned", False)
    with pytest.warns(UserWarning, match="tensorboard package is not installed"):
        log = tblog.TBLogger(tmp_path, _cfg(True))
    tblog.TBLogger(tmp_path, _cfg(True))  # second logger: no second warning
    assert capsys.readouterr().out.count("warning:") == 1
    fig = plt.figure()
    log.add_scalars({"loss": 1.0}, 1)
    log.add_figure("samples", fig, 1)
    plt.close(fig)
    log.close()
    assert not log.active and not (tmp_path / "tensorboard").exists()


@pytest.mark.skipif(not tblog.tensorboard_available(), reason="tensorboard package not installed")
def test_writes_event_files_when_installed(tmp_path):
    log = tblog.TBLogger(tmp_path, _cfg(True))
    log.add_scalars({"loss": 1.0, "bad": float("nan"), "flag": True}, 1)
    fig = plt.figure()
    log.add_figure("samples", fig, 1)
    plt.close(fig)
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
