"""The report of a benchmark run, from a store filled with known values: the numbers it derives (relative
degradation, corruption means), its files, its CLI and exports, and the page in headless Chromium (no console
errors, every plot image decodes; the check itself fails on a broken image or a console error).

The browser tests skip when Chromium is missing, unless ROBUSTSSL_REQUIRE_BROWSER is set (CI sets it).
"""

import argparse
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from robustssl.bench.report import ReportData, write_report
from robustssl.bench.store import Store
from robustssl.cli import report as report_cli

ENCODERS = ("enc-a", "enc-b")
TASKS = {"classification": ("top1", 0.8), "segmentation": ("miou", 0.5), "depth": ("rmse", 2.0)}
CORRUPTIONS = ("fog", "gaussian_noise")


def _threat(label, kind, **kw):
    entry = json.dumps({"name": kw.pop("name", label)})
    return {
        "threat": label,
        "kind": kind,
        "attack": kw.get("attack"),
        "norm": kw.get("norm"),
        "eps": kw.get("eps"),
        "corruption": kw.get("corruption"),
        "severity": kw.get("severity"),
        "data": kw.get("data"),
        "entry": entry,
    }


def _value(task, clean, step, higher=True):
    """Known values: each step of damage costs 10% of the clean value (adds 10% for RMSE)."""
    return clean * (1 - 0.1 * step) if higher else clean * (1 + 0.1 * step)


def fill_store(run_dir: Path) -> Path:
    """A store with every threat kind: clean, task PGD at 2 and 8/255, embedding PGD, AutoAttack, transfer,
    two corruptions at severities 1-3, a shift set; damage grows with eps and severity (see ``_value``)."""
    threats = [_threat("clean", "clean")]
    threats += [
        _threat(f"pgd-linf-{e}/255", "attack", attack="pgd", norm="linf", eps=e / 255, name="pgd")
        for e in (2, 8)
    ]
    threats += [
        _threat(
            f"embed-pgd-linf-{e}/255", "embedding", attack="pgd", norm="linf", eps=e / 255, name="embed-pgd"
        )
        for e in (2, 8)
    ]
    threats.append(
        _threat(
            "autoattack-linf-8/255",
            "attack",
            attack="autoattack",
            norm="linf",
            eps=8 / 255,
            name="autoattack",
        )
    )
    threats.append(
        _threat(
            "pgd-from-enc-a-linf-8/255",
            "transfer",
            attack="pgd",
            norm="linf",
            eps=8 / 255,
            name="pgd-from-enc-a",
        )
    )
    threats += [
        _threat(f"{c}-{s}", "corruptions", corruption=c, severity=s) for c in CORRUPTIONS for s in (1, 2, 3)
    ]
    threats.append(_threat("scenes-shift", "shift", data="scenes-shift"))
    damage = {
        "clean": 0,
        "pgd-linf-2/255": 3,
        "pgd-linf-8/255": 6,
        "embed-pgd-linf-2/255": 1,
        "embed-pgd-linf-8/255": 2,
        "autoattack-linf-8/255": 7,
        "pgd-from-enc-a-linf-8/255": 4,
        "scenes-shift": 2,
    }
    damage.update({f"{c}-{s}": s * (1 + i) for i, c in enumerate(CORRUPTIONS) for s in (1, 2, 3)})
    rows, cells = [], []

    def add(enc, task, threat, metric, value):
        rows.append(
            {
                "run": "synthetic",
                "encoder": enc,
                "task": task,
                "threat": threat,
                "metric": metric,
                "value": value,
                "n": 100,
                "seconds": 1.0,
                "fwd": 100,
                "bwd": 0,
                "config_hash": "h",
                "version": "0",
            }
        )
        cells.append((enc, task, threat, "h"))

    for enc_index, enc in enumerate(ENCODERS):
        for task, (metric, clean) in TASKS.items():
            for threat, steps in damage.items():
                if threat == "autoattack-linf-8/255" and task != "classification":
                    continue
                if threat.startswith("pgd-from") and enc == "enc-a":
                    continue
                add(enc, task, threat, metric, _value(task, clean, steps + enc_index, metric != "rmse"))
        for threat in [t["threat"] for t in threats if t["kind"] in ("embedding", "corruptions")]:
            add(enc, "embedding", threat, "cosine_to_clean", 1 - 0.05 * damage[threat])
    with Store(run_dir / "results.sqlite") as store:
        attempt = store.begin_attempt("digest", 1, "0")
        store.set_meta(
            {"run": "synthetic", "spec": "name: synthetic\n", "spec_digest": "digest", "version": "0"}
        )
        store.describe(
            threats,
            [{"task": t, "kind": t, "data": "scenes", "protocol": "slf"} for t in TASKS]
            + [{"task": "embedding", "kind": "embedding", "data": "scenes", "protocol": None}],
            [{"encoder": e, "source": "registry", "details": "{}"} for e in ENCODERS],
        )
        store.record_head(
            "enc-a",
            "classification",
            "h",
            {
                "protocol": "slf",
                "val_metric": "top1",
                "val_score": 0.75,
                "n_train": 10,
                "n_val": 5,
                "seconds": 1.5,
            },
        )
        for i in range(len(rows)):
            store.write_unit([cells[i]], [rows[i]], attempt, 1.0)
        store.finish_attempt(attempt, "finished")
    return run_dir


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = fill_store(tmp_path_factory.mktemp("synthetic"))
    return run_dir, write_report(run_dir)


def test_derived_numbers(report):
    run_dir, _ = report
    with Store.open(run_dir) as store:
        data = ReportData.load(store)
    # classification: clean 0.8, pgd 8/255 six steps -> 0.8 * 0.4 = 0.32: degradation (0.8 - 0.32) / 0.8 = 0.6
    assert data.degradation("enc-a", "classification", "pgd-linf-8/255") == pytest.approx(0.6)
    # depth (lower is better): clean 2.0, fog-3 three steps -> 2.6: degradation 0.3
    assert data.degradation("enc-a", "depth", "fog-3") == pytest.approx(0.3)
    assert data.corruption_error("enc-a", "classification", "fog-1") == pytest.approx(1 - 0.72)
    groups = {(g.kind, g.name): g.labels for g in data.groups("classification")}
    assert groups["attack", "pgd"] == ["pgd-linf-2/255", "pgd-linf-8/255"]
    assert len(groups["corruptions", "corruptions"]) == 6


def test_files_tables_and_summary(report):
    run_dir, page_path = report
    pngs = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert pngs == sorted(
        [
            "clean_vs_robust.png",
            "metric_vs_eps.png",
            "corruptions_classification.png",
            "corruptions_segmentation.png",
            "corruptions_depth.png",
            "corruptions_embedding.png",
            "heatmap.png",
            "embedding_drift.png",
        ]
    )
    page = page_path.read_text()
    assert page.count('src="data:image/png;base64,') == len(pngs)
    # self-contained: every src/href is inline data
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith("data:") for link in links)
    summary = (run_dir / "summary.md").read_text()
    # enc-a classification: clean 0.8; corruption mean over fog 1-3 (1, 2, 3 steps) and gaussian_noise 1-3
    # (2, 4, 6 steps): 0.8 * (1 - 0.1 * 18 / 6) = 0.56
    line = next(row for row in summary.splitlines() if row.startswith("| enc-a | 0.8000"))
    assert "0.5600" in line
    assert "| enc-b | 2.2000 |" in summary  # enc-b depth clean: one step worse than enc-a


def test_cli_exports(report, tmp_path, capsys):
    run_dir, _ = report
    args = argparse.Namespace(run=str(run_dir), out=None, csv=str(tmp_path / "r.csv"), json="", no_html=True)
    assert report_cli.run(args) == 0
    out = capsys.readouterr().out
    assert f"csv: {tmp_path / 'r.csv'}" in out and "report:" not in out
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("run,encoder,task,threat,metric,value")
    assert json.loads((run_dir / "results.json").read_text())["meta"]["run"] == "synthetic"


def test_empty_store_is_a_clear_error(tmp_path):
    Store(tmp_path / "results.sqlite").close()
    with pytest.raises(ValueError, match="holds no results yet"):
        write_report(tmp_path)


# --- headless Chromium --------------------------------------------------------------------------------------
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Injected first into <head>: records console errors, uncaught exceptions, failed resource loads and unhandled
# rejections, then on load writes them and every image's decoded size into the DOM for --dump-dom.
PROBE = """<script>(function () {
  var errors = [];
  console.error = function () { errors.push("console.error: " + Array.prototype.join.call(arguments, " ")); };
  window.addEventListener("error", function (e) {
    errors.push("error: " + (e.message || (e.target && (e.target.src || "").slice(0, 60)) || "resource"));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("rejection: " + e.reason); });
  window.addEventListener("load", function () {
    var images = Array.prototype.map.call(document.images, function (img) {
      return {id: img.id, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight};
    });
    var out = document.createElement("pre");
    out.id = "robustssl-browser-check";
    out.textContent = JSON.stringify({errors: errors, images: images});
    document.body.appendChild(out);
  });
})();</script>"""


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("ROBUSTSSL_REQUIRE_BROWSER"):
            pytest.fail(
                "ROBUSTSSL_REQUIRE_BROWSER is set but chromium is not installed (apt-get install -y chromium)"
            )
        pytest.skip(
            "chromium not installed (apt-get install -y chromium); set ROBUSTSSL_REQUIRE_BROWSER=1 to fail"
        )
    return path


def browser_check(chromium: str, page: Path, workdir: Path) -> dict:
    """Load ``page`` in headless Chromium; returns ``{"errors": [...], "images": [...], "ok": bool}``."""
    probed = workdir / f"probed-{page.name}"
    text = page.read_text()
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1))
    proc = subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={workdir / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="robustssl-browser-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page did not finish loading in chromium (rc {proc.returncode}): {proc.stderr[-1500:]}"
    result = json.loads(html.unescape(found.group(1)))
    # errors thrown before the probe ran (or inside it) reach only Chromium's log
    result["errors"] += [
        line for line in proc.stderr.splitlines() if ":CONSOLE" in line and "Uncaught" in line
    ]
    result["ok"] = (
        not result["errors"]
        and bool(result["images"])
        and all(img["complete"] and img["width"] > 0 and img["height"] > 0 for img in result["images"])
    )
    return result


def test_report_renders_in_chromium(report, chromium, tmp_path):
    run_dir, page = report
    result = browser_check(chromium, page, tmp_path)
    assert result["errors"] == []
    assert len(result["images"]) == len(list((run_dir / "plots").glob("*.png")))
    assert result["ok"], result["images"]


def test_browser_check_catches_a_broken_image_and_console_errors(report, chromium, tmp_path):
    _, page = report
    text = page.read_text()
    first = re.search(r'src="data:image/png;base64,([^"]+)"', text)
    broken = tmp_path / "broken.html"
    broken.write_text(text[: first.start(1)] + "iVBORw0KGgoAAAANSUhEUgAA" + text[first.end(1) :])
    result = browser_check(chromium, broken, tmp_path)
    assert not result["ok"]
    assert [img["width"] for img in result["images"]].count(0) == 1
    noisy = tmp_path / "noisy.html"
    noisy.write_text(
        text.replace("</body>", "<script>console.error('boom'); undefinedFunction();</script></body>")
    )
    result = browser_check(chromium, noisy, tmp_path)
    assert not result["ok"]
    assert any("boom" in e for e in result["errors"]) and any(
        "undefinedFunction" in e for e in result["errors"]
    )
