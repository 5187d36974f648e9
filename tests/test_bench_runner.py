"""The benchmark runner on the shipped ``tiny`` spec (2 encoders x 3 tasks x every threat kind, 77 cells):

- an uninterrupted run fills every cell, and its values obey known invariants;
- a run that crashes mid-way leaves a readable store; resumed, it computes only the missing units and ends
  with exactly the values of the uninterrupted run;
- a run killed with SIGKILL in the middle of a store write leaves no half-written unit and resumes alike;
- two ranks under torchrun (gloo) give exactly the values of one process.

Every comparison runs at one thread (the reference in this process, the subprocesses with OMP_NUM_THREADS=1),
so the floating-point work is the same.
"""

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import torch

from robustssl.bench.runner import Runner, run
from robustssl.bench.scores import METRICS
from robustssl.bench.store import Store

SPEC = "tiny"


@contextlib.contextmanager
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _values(run_dir):
    with Store.open(run_dir) as store:
        return {
            (r["encoder"], r["task"], r["threat"], r["metric"]): (
                r["value"],
                r["n"],
                r["fwd"],
                r["bwd"],
                r["config_hash"],
            )
            for r in store.rows()
        }


def _same(a, b):
    assert a.keys() == b.keys()
    diff = [
        k
        for k in a
        if a[k] != b[k] and not (a[k][0] != a[k][0] and b[k][0] != b[k][0] and a[k][1:] == b[k][1:])
    ]
    assert not diff, f"{len(diff)} rows differ, e.g. {diff[0]}: {a[diff[0]]} vs {b[diff[0]]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    with one_thread():
        summary = run(SPEC, out)
    return out / SPEC, summary, _values(out / SPEC)


def test_every_cell_is_filled_and_values_obey_invariants(reference):
    run_dir, summary, values = reference
    assert summary.cells == 77 and summary.computed == summary.units
    with Store.open(run_dir) as store:
        cells = store.cells()
        tasks = {t["task"]: t["kind"] for t in store.table("tasks")}
    assert len(cells) == 77
    for cell in cells:
        metrics = {k[3] for k in values if k[:3] == (cell["encoder"], cell["task"], cell["threat"])}
        assert metrics == set(METRICS[tasks[cell["task"]]])
    assert {v[1] for v in values.values()} == {32}
    attack_work = {}
    for (enc, task, threat, _), (_, n, fwd, bwd, _) in values.items():
        assert fwd >= n
        if threat.startswith(("pgd", "embed", "autoattack")):
            group = (enc, task, threat.rsplit("-linf-", 1)[0])
            attack_work[group] = attack_work.get(group, 0) + bwd
        else:
            assert bwd == 0  # clean, corrupted and shifted images only go forward
    # a sweep spends no backward pass at a radius where every sample already fell at a smaller one
    assert attack_work and all(v > 0 for v in attack_work.values())
    for enc in ("net-a", "net-b"):
        clean, pgd2, pgd8 = (
            values[enc, "classification", t, "top1"][0] for t in ("clean", "pgd-linf-2/255", "pgd-linf-8/255")
        )
        assert pgd8 <= pgd2 <= clean  # one sweep: robust accuracy never rises with eps
        assert values[enc, "classification", "autoattack-linf-8/255", "top1"][0] <= clean
        for threat in ("embed-pgd-linf-8/255", "fog-3"):
            assert -1 <= values[enc, "embedding", threat, "cosine_to_clean"][0] < 1
    assert (
        "net-a",
        "depth",
        "pgd-from-net-a-linf-8/255",
        "rmse",
    ) not in values  # no transfer onto the surrogate
    report = (run_dir / "report.html").read_text()
    plots = sorted(p.stem for p in (run_dir / "plots").glob("*.png"))
    assert report.count('src="data:image/png;base64,') == len(plots) >= 6
    assert "| net-a |" in (run_dir / "summary.md").read_text()
    assert len(list((run_dir / "heads").glob("*/*/done"))) == 6


def test_crash_leaves_a_readable_store_and_resume_matches(reference, tmp_path, monkeypatch):
    _, summary, expected = reference
    computed = []
    original = Runner.compute

    def crash_on_eighth(self, unit):
        if len(computed) == 7:
            raise RuntimeError("simulated crash")
        computed.append(unit.key)
        return original(self, unit)

    monkeypatch.setattr(Runner, "compute", crash_on_eighth)
    with one_thread(), pytest.raises(RuntimeError, match="simulated crash"):
        run(SPEC, tmp_path, report=False)
    with Store.open(tmp_path / SPEC) as store:
        first = {(c["encoder"], c["task"], c["threat"]): c["attempt"] for c in store.cells()}
        assert store.attempts()[-1]["status"] == "failed"
        partial = store.rows()
    assert first and len(first) < 77
    assert {(r["encoder"], r["task"], r["threat"]) for r in partial} == set(first)
    with pytest.raises(ValueError, match="--resume"):
        run(SPEC, tmp_path, report=False)

    resumed = []

    def counting(self, unit):
        resumed.append(unit.key)
        return original(self, unit)

    monkeypatch.setattr(Runner, "compute", counting)
    with one_thread():
        again = run(SPEC, tmp_path, resume=True)
    assert not set(resumed) & set(computed) and len(resumed) == summary.units - 7 == again.computed
    _same(_values(tmp_path / SPEC), expected)
    with Store.open(tmp_path / SPEC) as store:
        after = {(c["encoder"], c["task"], c["threat"]): c["attempt"] for c in store.cells()}
        assert [a["status"] for a in store.attempts()] == ["failed", "finished"]
    assert all(after[k] == first[k] for k in first)  # finished cells were not recomputed
    assert {after[k] for k in after if k not in first} == {first[next(iter(first))] + 1}


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from robustssl.bench import store as store_mod
    from robustssl.bench.runner import run

    KILL_AT = int(sys.argv[3])
    writes = [0]

    class DyingConnection:
        # commits the first KILL_AT - 1 units, then dies after writing the next unit's rows, before its cells
        def __init__(self, conn):
            self._conn = conn
        def __getattr__(self, name):
            return getattr(self._conn, name)
        def __enter__(self):
            return self._conn.__enter__()
        def __exit__(self, *exc):
            return self._conn.__exit__(*exc)
        def executemany(self, sql, params):
            if "INTO cells" in sql:
                writes[0] += 1
                if writes[0] == KILL_AT:
                    os.kill(os.getpid(), signal.SIGKILL)
            return self._conn.executemany(sql, params)

    original_init = store_mod.Store.__init__
    def init(self, path):
        original_init(self, path)
        self.conn = DyingConnection(self.conn)
    store_mod.Store.__init__ = init
    run(sys.argv[1], sys.argv[2], report=False)
""")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTSSL_PROGRESS": "0"}


@pytest.mark.slow
def test_sigkill_during_a_write_then_resume_matches(reference, tmp_path):
    _, _, expected = reference
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), SPEC, str(tmp_path), "6"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    file = tmp_path / SPEC / "results.sqlite"
    conn = sqlite3.connect(file)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    with Store.open(tmp_path / SPEC) as store:
        finished = store.finished_cells()
        rows = store.rows()
        assert store.attempts()[-1]["status"] == "running"  # killed: never marked finished
    assert {(r["encoder"], r["task"], r["threat"]) for r in rows} == set(finished)  # no half-written unit
    with one_thread():
        run(SPEC, tmp_path, resume=True, report=False)
    _same(_values(tmp_path / SPEC), expected)


TORCHRUN_SCRIPT = textwrap.dedent("""
    import sys
    from robustssl.bench.runner import run
    from robustssl.runtime import distributed

    run(sys.argv[1], sys.argv[2], report=False)
    distributed.shutdown()
""")


@pytest.mark.slow
def test_two_ranks_match_one(reference, tmp_path):
    _, _, expected = reference
    script = tmp_path / "bench_ddp.py"
    script.write_text(TORCHRUN_SCRIPT)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            SPEC,
            str(tmp_path),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Store.open(tmp_path / SPEC) as store:
        assert [a["world_size"] for a in store.attempts()] == [2]
    _same(_values(tmp_path / SPEC), expected)
