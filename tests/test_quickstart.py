"""The demo pipeline end to end on a tiny budget: the table's rows are complete result records, and PGD
hurts every task it attacks."""

import csv

import pytest

from robustssl.bench.quickstart import RESULT_FIELDS, QuickstartConfig, run


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = QuickstartConfig(
        name="tiny",
        out_root=str(out),
        n_train=256,
        n_val=64,
        n_test=64,
        attack_n=64,
        pretrain_steps=3,
        pretrain_batch=32,
        head_epochs=2,
        pgd_steps=3,
        batch_size=64,
        encoder_kwargs={"widths": (8, 16, 16, 32)},
        device="cpu",
    )
    path = run(cfg)
    assert (out / "tiny" / "simclr" / "encoder.safetensors").exists()
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _value(rows, encoder, task, metric, clean):
    hits = [
        r
        for r in rows
        if r["encoder"] == encoder
        and r["task"] == task
        and r["metric"] == metric
        and (r["threat"] == "clean") == clean
    ]
    assert len(hits) == 1, (encoder, task, metric, clean)
    return float(hits[0]["value"])


def test_rows_are_result_records(rows):
    assert rows and all(tuple(r.keys()) == RESULT_FIELDS for r in rows)
    assert {r["encoder"] for r in rows} == {"random-init", "simclr"}
    assert {r["task"] for r in rows} == {"classification", "segmentation", "depth", "embedding"}
    assert all(int(r["n"]) == 64 for r in rows)
    attacked = [r for r in rows if r["threat"] != "clean"]
    assert all(int(r["fwd"]) > 0 and int(r["bwd"]) > 0 for r in attacked)


@pytest.mark.parametrize("encoder", ["random-init", "simclr"])
def test_pgd_hurts_every_task(rows, encoder):
    assert _value(rows, encoder, "classification", "top1", False) <= _value(
        rows, encoder, "classification", "top1", True
    )
    assert _value(rows, encoder, "segmentation", "miou", False) <= _value(
        rows, encoder, "segmentation", "miou", True
    )
    assert _value(rows, encoder, "depth", "rmse", False) >= _value(rows, encoder, "depth", "rmse", True)
    assert _value(rows, encoder, "embedding", "cosine_to_clean", False) < 0.999
