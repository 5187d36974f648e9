"""The command line: every verb answers --help, fractions parse, errors are one clear line."""

import argparse
import subprocess
import sys

import pytest

from robustssl.cli.args import fraction, fraction_list
from robustssl.cli.main import VERBS, build_parser, main


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert verb in capsys.readouterr().out


def test_top_level_help_lists_every_verb():
    text = build_parser().format_help()
    assert all(v in text for v in VERBS)


def test_console_entry_point_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "robustssl", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "robustssl" in out.stdout


@pytest.mark.parametrize(
    "text, value", [("8/255", 8 / 255), ("0.5", 0.5), ("1e-3", 1e-3), (" 2/255 ", 2 / 255)]
)
def test_fraction_parses(text, value):
    assert fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["eight", "1/0", "8//255", ""])
def test_fraction_rejects_garbage(text):
    with pytest.raises(argparse.ArgumentTypeError, match="fraction"):
        fraction(text)


def test_fraction_list():
    assert fraction_list("2/255,4/255, 8/255") == pytest.approx([2 / 255, 4 / 255, 8 / 255])


def test_user_errors_are_one_line_exit_2(capsys):
    code = main(["pretrain", "--method", "no-such-method", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown pretraining method 'no-such-method'" in err and "simclr" in err
