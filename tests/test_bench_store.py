"""The SQLite result store (atomic units, resume bookkeeping, export) and the chunked task metrics (adding
chunk statistics gives the metric of the whole set, whatever the chunking)."""

import csv
import json
import math
import sqlite3

import pytest
import torch

from robustssl.bench import scores
from robustssl.bench.store import RESULT_FIELDS, Store
from robustssl.metrics import DepthMeter, SegmentationMeter, embedding_drift


def _row(encoder, task, threat, metric, value, n=10):
    return {
        "run": "r",
        "encoder": encoder,
        "task": task,
        "threat": threat,
        "metric": metric,
        "value": value,
        "n": n,
        "seconds": 0.5,
        "fwd": 10,
        "bwd": 0,
        "config_hash": "h",
        "version": "0",
    }


def test_units_commit_whole_and_replace_earlier_rows(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        attempt = store.begin_attempt("d", 1, "0")
        cells = [("a", "cls", "clean", "h1"), ("a", "emb", "clean", "h2")]
        store.write_unit(
            cells,
            [_row("a", "cls", "clean", "top1", 0.5), _row("a", "emb", "clean", "cos", math.nan)],
            attempt,
            1.0,
        )
        assert store.finished_cells() == {("a", "cls", "clean"): "h1", ("a", "emb", "clean"): "h2"}
        rows = store.rows()
        assert [r["value"] for r in rows][0] == 0.5 and math.isnan(rows[1]["value"])  # NaN survives as NULL
        store.write_unit(cells[:1], [_row("a", "cls", "clean", "top1", 0.7)], attempt, 1.0)
        assert [r["value"] for r in store.rows() if r["task"] == "cls"] == [0.7]
        with pytest.raises(ValueError, match="lacks"):
            store.write_unit([("b", "cls", "clean", "h")], [{"run": "r"}], attempt, 1.0)
        assert ("b", "cls", "clean") not in store.finished_cells()
        assert store.prune({("a", "cls", "clean")}) == 1
        assert list(store.finished_cells()) == [("a", "cls", "clean")]


def test_a_failing_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    store = Store(tmp_path / "results.sqlite")
    attempt = store.begin_attempt("d", 1, "0")
    good = [_row("a", "cls", "clean", "top1", 0.5)]
    store.write_unit([("a", "cls", "clean", "h")], good, attempt, 1.0)
    # a cell without a hash violates NOT NULL: the transaction fails at its last statement, after the rows
    rows = [_row("b", "cls", "clean", "top1", 0.1)]
    broken = [("b", "cls", "clean", "h"), ("b", "cls", "clean", None)]
    with pytest.raises(sqlite3.IntegrityError):
        store.write_unit(broken, rows, attempt, 1.0)
    store.close()
    again = Store.open(tmp_path)
    assert again.finished_cells() == {("a", "cls", "clean"): "h"}
    assert [(r["encoder"], r["value"]) for r in again.rows()] == [("a", 0.5)]


def test_export_csv_and_json(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        attempt = store.begin_attempt("d", 1, "0")
        store.describe(
            [
                {
                    "threat": "fog-1",
                    "kind": "corruptions",
                    "attack": None,
                    "norm": None,
                    "eps": None,
                    "corruption": "fog",
                    "severity": 1,
                    "data": None,
                    "entry": "{}",
                }
            ],
            [{"task": "cls", "kind": "classification", "data": "scenes", "protocol": "slf"}],
            [{"encoder": "a", "source": "registry", "details": "{}"}],
        )
        store.write_unit(
            [("a", "cls", "fog-1", "h")], [_row("a", "cls", "fog-1", "top1", 0.25)], attempt, 1.0
        )
        csv_path = store.export_csv(tmp_path / "out" / "r.csv")
        json_path = store.export_json(tmp_path / "out" / "r.json")
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == RESULT_FIELDS and float(rows[0]["value"]) == 0.25
    body = json.loads(json_path.read_text())
    assert body["results"][0]["value"] == 0.25 and body["threats"][0]["severity"] == 1
    assert body["cells"][0]["attempt"] == attempt


def test_not_a_store(tmp_path):
    bad = tmp_path / "results.sqlite"
    bad.write_text("not sqlite at all " * 100)
    with pytest.raises(ValueError, match="not a readable result store"):
        Store(bad)
    with pytest.raises(FileNotFoundError, match="robustssl bench"):
        Store.open(tmp_path / "missing")


# --- chunked metrics ----------------------------------------------------------------------------------------
def _split(n, sizes):
    out, start = [], 0
    for s in sizes:
        out.append(slice(start, start + s))
        start += s
    assert start == n
    return out


@pytest.mark.parametrize("sizes", [[12], [5, 7], [1, 4, 4, 3]])
def test_chunk_statistics_add_up_to_the_whole_set(sizes):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(12, 5, generator=g), torch.randint(0, 5, (12,), generator=g)
    seg, masks = torch.randn(12, 4, 6, 6, generator=g), torch.randint(0, 4, (12, 6, 6), generator=g)
    masks[0, 0] = 255
    depth_pred, depth = torch.rand(12, 1, 6, 6, generator=g) * 5 + 0.5, torch.rand(12, 6, 6, generator=g) * 5
    clean, adv = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g)
    parts = {k: [] for k in ("classification", "segmentation", "depth", "embedding")}
    for s in _split(12, sizes):
        parts["classification"].append(scores.task_stats("classification", logits[s], labels[s]))
        parts["segmentation"].append(scores.task_stats("segmentation", seg[s], masks[s]))
        parts["depth"].append(scores.task_stats("depth", depth_pred[s], depth[s], (0.5, 6.0)))
        parts["embedding"].append(scores.drift_stats(clean[s], adv[s]))
    top1 = scores.combine("classification", parts["classification"])
    assert top1["top1"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()), abs=1e-12)
    assert top1["top1_ci_low"] <= top1["top1"] <= top1["top1_ci_high"]
    meter = SegmentationMeter(4)
    meter.update(seg, masks)
    assert scores.combine("segmentation", parts["segmentation"])["miou"] == pytest.approx(
        meter.compute()["miou"]
    )
    dm = DepthMeter(min_depth=0.5, max_depth=6.0)
    dm.update(depth_pred, depth)
    expected = dm.compute()
    got = scores.combine("depth", parts["depth"])
    assert got["rmse"] == pytest.approx(expected["rmse"]) and got["abs_rel"] == pytest.approx(
        expected["abs_rel"]
    )
    drift = embedding_drift(clean, adv)
    got = scores.combine("embedding", parts["embedding"])
    assert got["cosine_to_clean"] == pytest.approx(float(drift["cosine"].mean()))
    assert got["relative_l2"] == pytest.approx(float(drift["relative_l2"].mean()))
