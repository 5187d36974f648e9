"""``robustssl data list|info``: every registered dataset is listed; info reports what a split holds."""

from __future__ import annotations

import argparse
import json

import pytest

from robustssl.cli import data as data_cli
from robustssl.cli.args import key_value
from robustssl.data import DATASETS


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="robustssl")
    data_cli.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_shows_every_dataset_with_targets_and_root(capsys):
    assert _run(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(DATASETS.names())
    assert rows["scenes"][1] == "label,mask,depth" and rows["scenes"][2] == "no"
    assert rows["cifar10"][1] == "label" and rows["cifar10"][2] == "yes"


def test_list_pattern_and_no_match(capsys):
    assert _run(["data", "list", "imagenet-*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == ["imagenet-a", "imagenet-c", "imagenet-r", "imagenet-sketch", "imagenet-v2"]
    with pytest.raises(ValueError, match="no dataset matches"):
        _run(["data", "list", "mnist*"])


def test_info_prints_size_shape_and_targets(capsys):
    assert _run(["data", "info", "scenes", "--split", "val", "--set", "n=7", "--set", "size=40"]) == 0
    out = capsys.readouterr().out
    assert "size         7" in out and "(3, 40, 40)" in out and "label, mask, depth" in out
    assert _run(["data", "info", "digits", "--json"]) == 0
    details = json.loads(capsys.readouterr().out)
    assert details["size"] == 359 and details["split"] == "test" and details["num_classes"] == 10


def test_info_of_a_rooted_dataset_without_root_shows_layout(capsys):
    assert _run(["data", "info", "stl10"]) == 0
    out = capsys.readouterr().out
    assert "train_X.bin" in out and "--root" in out


def test_set_values_parse_types():
    assert key_value("severity=3") == ("severity", 3)
    assert key_value("crop_fraction=0.5") == ("crop_fraction", 0.5)
    assert key_value("shift=true") == ("shift", True)
    assert key_value("corruption=fog") == ("corruption", "fog")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        key_value("severity")
