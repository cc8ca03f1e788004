"""Checkpoints and model files that cannot be read: one clear message, nothing lost."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mr2unet import cli
from mr2unet.models import build_model
from mr2unet.models.checkpoint import save_model
from mr2unet.training.checkpoint import load_training_state, save_training_state


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def state(epoch: int) -> dict:
    return {"fingerprint": "f", "epoch": epoch, "model": {"w": torch.full((3,), epoch)}}


def test_the_previous_checkpoint_is_kept_until_the_new_one_reads_back(tmp_path: Path) -> None:
    save_training_state(tmp_path, state(1))
    save_training_state(tmp_path, state(2))
    assert load_training_state(tmp_path, "f")["epoch"] == 2
    assert torch.load(tmp_path / "previous.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "last.pt.tmp").exists()


def test_a_cut_off_checkpoint_falls_back_to_the_previous_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_training_state(tmp_path, state(1))
    save_training_state(tmp_path, state(2))
    cut_in_half(tmp_path / "last.pt")
    with caplog.at_level(logging.WARNING):
        resumed = load_training_state(tmp_path, "f")
    assert resumed is not None and resumed["epoch"] == 1
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "last.pt cannot be read" in warning and "falling back to" in warning
    assert "previous.pt" in warning
    # The unreadable file is moved aside: the next save does not keep it as "previous".
    save_training_state(tmp_path, state(2))
    assert torch.load(tmp_path / "previous.pt", weights_only=True)["epoch"] == 1


def test_no_readable_checkpoint_starts_fresh_saying_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_training_state(tmp_path, state(1))
    cut_in_half(tmp_path / "last.pt")
    with caplog.at_level(logging.WARNING):
        assert load_training_state(tmp_path, "f") is None
    assert "starting fresh from epoch 0" in caplog.text


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_truncated_model_file_is_one_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture, command: str) -> None:
    model = tmp_path / "unet.pt"
    save_model(model, build_model("unet", base_width=2), "unet", {"base_width": 2},
               image_size=32)
    cut_in_half(model)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    args = {"predict": ["predict", "--model", str(model), "--out", str(tmp_path / "o"),
                        str(image)],
            "export": ["export", "--model", str(model), "--out", str(tmp_path / "m.onnx")]}
    assert cli.main(args[command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {model} cannot be read: the file is cut off or corrupt")
    assert f"dvc checkout {model}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
