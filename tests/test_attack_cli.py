"""``robustssl attack``: fits the head, attacks, prints clean and robust metrics, saves safetensors."""

import argparse

import pytest
import torch
from safetensors.torch import load_file, safe_open

from robustssl import data
from robustssl.cli import attack as attack_cli
from robustssl.registry import UnknownNameError

SCENES = ["--data", "scenes", "--data-arg", "n=64", "--device", "cpu", "--batch-size", "32"]


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="robustssl")
    attack_cli.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["attack", *argv])
    return args.func(args)


def _table(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("eps"))
    return [line.split() for line in lines[start + 1 :] if line.strip() and not line.startswith("saved")]


def test_classification_sweep_prints_metrics_and_saves_adversarial_images(tmp_path, capsys):
    path = tmp_path / "adv.safetensors"
    code = _run(
        [
            "--encoder",
            "convnet_small",
            "--task",
            "classification",
            "--attack",
            "pgd",
            "--eps",
            "2/255,16/255",
            "--steps",
            "3",
            "--n",
            "12",
            "--save",
            str(path),
            *SCENES,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "clean top1" in out and "robust top1" in out
    rows = _table(out)
    assert [r[0] for r in rows] == ["2/255", "16/255"]
    clean, robust = [float(r[1]) for r in rows], [float(r[2]) for r in rows]
    assert clean[0] == clean[1] and robust[1] <= robust[0] <= clean[0]

    saved = load_file(str(path))
    assert set(saved) == {"x_adv_0", "x_adv_1"}
    x = torch.stack([data.load("scenes", split="test", n=64)[i]["image"] for i in range(12)])
    for key, eps in (("x_adv_0", 2 / 255), ("x_adv_1", 16 / 255)):
        assert saved[key].shape == x.shape
        assert float((saved[key] - x).abs().max()) <= eps + 1e-6
        assert saved[key].min() >= 0 and saved[key].max() <= 1
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["attack"] == "pgd" and meta["norm"] == "linf"


def test_embedding_attack_moves_the_embedding(capsys):
    assert (
        _run(
            [
                "--encoder",
                "convnet_small",
                "--task",
                "embedding",
                "--attack",
                "apgd",
                "--eps",
                "8/255",
                "--steps",
                "3",
                "--n",
                "8",
                *SCENES,
            ]
        )
        == 0
    )
    (row,) = _table(capsys.readouterr().out)
    assert float(row[1]) == pytest.approx(1.0) and float(row[2]) < 1.0


def test_depth_attack_raises_the_error(capsys):
    assert (
        _run(
            [
                "--encoder",
                "convnet_small",
                "--task",
                "depth",
                "--attack",
                "pgd",
                "--eps",
                "8/255",
                "--steps",
                "3",
                "--n",
                "8",
                "--head-epochs",
                "1",
                "--json",
                *SCENES,
            ]
        )
        == 0
    )
    import json

    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert row["robust"]["abs_rel"] > row["clean"]["abs_rel"] and row["n"] == 8


def test_segmentation_attack_with_segpgd_lowers_pixel_accuracy(capsys):
    argv = ["--encoder", "convnet_small", "--task", "segmentation", "--attack", "pgd",
            "--objective", "segpgd", "--eps", "16/255", "--steps", "3", "--n", "8", "--head-epochs", "1",
            "--json", *SCENES]
    assert _run(argv) == 0
    import json

    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert row["robust"]["pixel_accuracy"] < row["clean"]["pixel_accuracy"]


@pytest.mark.parametrize(
    "argv, error, match",
    [
        (["--attack", "pgdd"], UnknownNameError, "Valid attack names"),
        (["--eps=-1/255"], ValueError, "eps must be"),
        (["--save", "out.pt"], ValueError, "safetensors"),
        (["--attack", "square", "--steps", "3"], ValueError, "takes no --steps"),
        (["--n", "0"], ValueError, "--n must be"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, error, match):
    base = ["--encoder", "convnet_small", "--task", "classification", *SCENES]
    with pytest.raises(error, match=match):
        _run([*base, *argv])


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        _run(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(
        flag in out for flag in ("--encoder", "--data", "--task", "--attack", "--eps", "--norm", "--save")
    )
