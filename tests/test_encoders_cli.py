"""``robustssl encoders list|inspect``, driven through the verb's own parser."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from robustssl import encoders
from robustssl.cli import encoders as encoders_cli


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="robustssl")
    encoders_cli.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_shows_every_builtin_with_its_description(capsys):
    assert run(["encoders", "list"]) == 0
    out = capsys.readouterr().out
    for name in encoders.names():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert encoders.ENCODERS.meta(name)["description"] in line
    assert "timm:<model>" in out


def test_list_pattern_and_details(capsys):
    assert run(["encoders", "list", "convnet*", "--details"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["name", "embed", "dense", "stride", "params"]
    params = sum(p.numel() for p in encoders.create("convnet_small").parameters())
    assert lines[1].split()[:5] == ["convnet_small", "256", "256", "8", f"{params / 1e6:.2f}M"]
    assert len(lines) == 2
    assert run(["encoders", "list", "nothing*"]) == 1


def test_inspect_a_checkpoint(tmp_path, capsys):
    enc = encoders.create("convnet_small", widths=(8, 16), strides=(1, 2))
    path = encoders.save(enc, tmp_path / "enc", method="simclr", epoch=7)
    assert run(["encoders", "inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "convnet_small"
    assert info["encoder_config"] == {"widths": [8, 16], "strides": [1, 2]}
    assert info["sha256_status"] == "verified" and len(info["sha256"]) == 64
    assert (info["embed_dim"], info["dense_dim"], info["stride"]) == (16, 16, 2)
    assert info["parameters"] == sum(p.numel() for p in enc.parameters())
    assert info["metadata"]["method"] == "simclr" and info["metadata"]["epoch"] == 7
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert run(["encoders", "inspect", str(tmp_path / "enc")]) == 0
    text = capsys.readouterr().out
    assert "sha256_status: verified" in text and "missing_keys: 0" in text


def test_inspect_a_foreign_file_reports_key_problems(tmp_path, capsys):
    state = encoders.create("convnet_small").state_dict()
    state.pop("blocks.0.conv.weight")
    state["fc.weight"] = torch.zeros(10, 256)
    state["extra.thing"] = torch.zeros(1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "f.pth")
    assert run(["encoders", "inspect", str(tmp_path / "f.pth"), "--name", "convnet_small", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "torch" and info["sha256_status"] == "not applicable"
    assert info["missing_keys"] == ["blocks.0.conv.weight"]
    assert info["unexpected_keys"] == ["extra.thing"] and info["dropped_head_keys"] == ["fc.weight"]


def test_inspect_a_name_with_arguments(capsys):
    assert run(["encoders", "inspect", "vit_tiny", "--arg", "img_size=32", "--arg", "patch_size=4",
                "--arg", "depth=1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stride"] == 4 and info["encoder_config"] == {"img_size": 32, "patch_size": 4, "depth": 1}
    assert info["normalization"]["mean"] == pytest.approx(list(encoders.IMAGENET_MEAN))


def test_inspect_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file nor an encoder.*convnet_small"):
        run(["encoders", "inspect", str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        run(["encoders", "inspect", "convnet_small", "--arg", "oops"])
