"""Every `robustssl ...` line in the README's command-line block runs and exits 0 (in a scratch folder)."""

import re
import shlex
from pathlib import Path

import pytest

from robustssl.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_commands() -> list[list[str]]:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("robustssl ")]


def test_readme_has_cli_examples():
    verbs = {argv[0] for argv in _readme_commands()}
    assert {"data", "encoders", "pretrain", "attack", "corrupt"} <= verbs


def test_readme_commands_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv in _readme_commands():
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, (argv, out.err[-2000:])
    assert (tmp_path / "runs" / "simclr" / "encoder.safetensors").exists()
    assert (tmp_path / "runs" / "digits-c" / "labels.npy").exists()


@pytest.mark.parametrize("argv", [["attack", "--encoder", "convnet_small", "--data", "scenes", "--task",
                                   "classification", "--attack", "no-such-attack", "--n", "8"],
                                  ["data", "info", "no-such-data"]])
def test_cli_bad_names_list_the_valid_ones(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and "Valid" in err
