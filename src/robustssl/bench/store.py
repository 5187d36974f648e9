"""The result store: one SQLite file per run, ``runs/<name>/results.sqlite``.

Tables:

- ``results``: one row per (encoder, task, threat, metric), the columns of :data:`RESULT_FIELDS` (``value``,
  ``n`` samples, ``seconds``, ``fwd``/``bwd`` images through the model's forward/backward passes,
  ``config_hash`` of everything the value depends on, robustssl ``version``);
- ``cells``: one row per finished (encoder, task, threat) with its hash and the attempt that computed it, so
  a resumed run skips finished cells;
- ``threats``, ``tasks``, ``encoders``, ``heads``: what each label means (kind, eps, severity, data, fitted
  head summaries) for the report; ``attempts``: one row per start of the run; ``meta``: the spec.

Writes are transactions in WAL mode: a unit's rows and its cells are committed together or not at all, so a
run killed at any moment leaves a readable store whose finished cells are exactly the committed ones.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULT_FIELDS = (
    "run",
    "encoder",
    "task",
    "threat",
    "metric",
    "value",
    "n",
    "seconds",
    "fwd",
    "bwd",
    "config_hash",
    "version",
)
STORE_FILE = "results.sqlite"
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    run TEXT NOT NULL, encoder TEXT NOT NULL, task TEXT NOT NULL, threat TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, n INTEGER NOT NULL, seconds REAL NOT NULL, fwd INTEGER NOT NULL, bwd INTEGER NOT NULL,
    config_hash TEXT NOT NULL, version TEXT NOT NULL,
    PRIMARY KEY (encoder, task, threat, metric));
CREATE TABLE IF NOT EXISTS cells (
    encoder TEXT NOT NULL, task TEXT NOT NULL, threat TEXT NOT NULL, config_hash TEXT NOT NULL,
    attempt INTEGER NOT NULL, seconds REAL NOT NULL, finished_at TEXT NOT NULL,
    PRIMARY KEY (encoder, task, threat));
CREATE TABLE IF NOT EXISTS attempts (
    attempt INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, finished_at TEXT,
    status TEXT NOT NULL,
    spec_digest TEXT NOT NULL, world_size INTEGER NOT NULL, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS threats (
    threat TEXT PRIMARY KEY, kind TEXT NOT NULL, attack TEXT, norm TEXT, eps REAL, corruption TEXT,
    severity INTEGER, data TEXT, entry TEXT);
CREATE TABLE IF NOT EXISTS tasks (task TEXT PRIMARY KEY, kind TEXT NOT NULL, data TEXT, protocol TEXT);
CREATE TABLE IF NOT EXISTS encoders (encoder TEXT PRIMARY KEY, source TEXT NOT NULL, details TEXT);
CREATE TABLE IF NOT EXISTS heads (
    encoder TEXT NOT NULL, task TEXT NOT NULL, config_hash TEXT NOT NULL, info TEXT,
    PRIMARY KEY (encoder, task));
"""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _value(v: Any) -> float:
    """SQLite keeps NaN as NULL; read it back as NaN."""
    return float("nan") if v is None else float(v)


class Store:
    """A run's SQLite store; ``Store(path)`` creates it (and its folder) if missing. Only one process (rank
    0) writes; readers (the report) may open it at any time, even while a run writes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            with self.conn:
                self.conn.executescript(_SCHEMA)
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is not a readable result store ({exc})") from exc
        schema = self.meta().get("schema")
        if schema != SCHEMA_VERSION:
            raise ValueError(
                f"{self.path} has store schema {schema!r}; this robustssl reads {SCHEMA_VERSION!r}"
            )

    @classmethod
    def open(cls, run_dir_or_file: str | Path) -> Store:
        """An existing store: ``runs/<name>`` or the ``results.sqlite`` file itself."""
        path = Path(run_dir_or_file).expanduser()
        file = path / STORE_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no result store at {file}; run `robustssl bench SPEC.yaml` first")
        return cls(file)

    def close(self) -> None:
        """Fold the write-ahead log into the main file and close."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- run bookkeeping ------------------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, values: dict[str, str]) -> None:
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    def begin_attempt(self, spec_digest: str, world_size: int, version: str) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO attempts (started_at, status, spec_digest, world_size, version) "
                "VALUES (?, 'running', ?, ?, ?)",
                (_now(), spec_digest, world_size, version),
            )
        return int(cur.lastrowid)

    def finish_attempt(self, attempt: int, status: str) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE attempts SET finished_at = ?, status = ? WHERE attempt = ?", (_now(), status, attempt)
            )

    def attempts(self) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM attempts ORDER BY attempt")

    def describe(
        self,
        threats: Iterable[dict[str, Any]],
        tasks: Iterable[dict[str, Any]],
        encoders: Iterable[dict[str, Any]],
    ) -> None:
        """Record what the labels mean (replacing earlier descriptions of the same labels)."""
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO threats VALUES (:threat, :kind, :attack, :norm, :eps, :corruption, "
                ":severity, :data, :entry)",
                list(threats),
            )
            self.conn.executemany(
                "INSERT OR REPLACE INTO tasks VALUES (:task, :kind, :data, :protocol)", list(tasks)
            )
            self.conn.executemany(
                "INSERT OR REPLACE INTO encoders VALUES (:encoder, :source, :details)", list(encoders)
            )

    def record_head(self, encoder: str, task: str, config_hash: str, info: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?)",
                (encoder, task, config_hash, json.dumps(info, default=str)),
            )

    # --- cells and rows -------------------------------------------------------------------------------------
    def finished_cells(self) -> dict[tuple[str, str, str], str]:
        """``{(encoder, task, threat): config_hash}`` of every finished cell."""
        rows = self.conn.execute("SELECT encoder, task, threat, config_hash FROM cells").fetchall()
        return {(e, t, th): h for e, t, th, h in rows}

    def cells(self) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM cells ORDER BY encoder, task, threat")

    def write_unit(
        self,
        cells: Sequence[tuple[str, str, str, str]],
        rows: Sequence[dict[str, Any]],
        attempt: int,
        seconds: float,
    ) -> None:
        """Commit a unit: its result ``rows`` (dicts with :data:`RESULT_FIELDS`) and its ``cells``
        ``(encoder, task, threat, config_hash)`` as finished, in one transaction; earlier rows of these cells
        are replaced."""
        for row in rows:
            missing = [f for f in RESULT_FIELDS if f not in row]
            if missing:
                raise ValueError(f"result row lacks {', '.join(missing)}: {row}")
        finished = _now()
        with self.conn:
            self.conn.executemany(
                "DELETE FROM results WHERE encoder = ? AND task = ? AND threat = ?", [c[:3] for c in cells]
            )
            self.conn.executemany(
                f"INSERT OR REPLACE INTO results VALUES ({', '.join(':' + f for f in RESULT_FIELDS)})",
                [{**r, "value": None if math.isnan(r["value"]) else r["value"]} for r in rows],
            )
            self.conn.executemany(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*c, attempt, seconds, finished) for c in cells],
            )

    def prune(self, keep: set[tuple[str, str, str]]) -> int:
        """Delete cells (and their rows) not in ``keep`` (left over from an earlier version of the spec)."""
        stale = [k for k in self.finished_cells() if k not in keep]
        stale_rows = [
            tuple(r)
            for r in self.conn.execute("SELECT DISTINCT encoder, task, threat FROM results")
            if tuple(r) not in keep
        ]
        with self.conn:
            self.conn.executemany("DELETE FROM cells WHERE encoder = ? AND task = ? AND threat = ?", stale)
            self.conn.executemany(
                "DELETE FROM results WHERE encoder = ? AND task = ? AND threat = ?", stale_rows
            )
        return len(set(stale) | set(stale_rows))

    def rows(self) -> list[dict[str, Any]]:
        """Every result row as a dict of :data:`RESULT_FIELDS` (NaN for missing values)."""
        out = self._dicts(
            f"SELECT {', '.join(RESULT_FIELDS)} FROM results ORDER BY encoder, task, threat, metric"
        )
        for row in out:
            row["value"] = _value(row["value"])
        return out

    def table(self, name: str) -> list[dict[str, Any]]:
        """All rows of a description table (``threats``, ``tasks``, ``encoders``, ``heads``)."""
        if name not in ("threats", "tasks", "encoders", "heads"):
            raise ValueError(f"unknown table {name!r}; accepted: threats, tasks, encoders, heads")
        return self._dicts(f"SELECT * FROM {name}")

    def _dicts(self, query: str) -> list[dict[str, Any]]:
        cur = self.conn.execute(query)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # --- export ---------------------------------------------------------------------------------------------
    def export_csv(self, path: str | Path) -> Path:
        """Write every result row to ``path`` (header = :data:`RESULT_FIELDS`); written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=RESULT_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows())
        tmp.replace(path)
        return path

    def export_json(self, path: str | Path) -> Path:
        """Write ``{"meta", "results", "threats", "tasks", "encoders", "heads", "cells"}`` to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{**r, "value": None if math.isnan(r["value"]) else r["value"]} for r in self.rows()]
        body = {
            "meta": self.meta(),
            "results": rows,
            "cells": self.cells(),
            **{name: self.table(name) for name in ("threats", "tasks", "encoders", "heads")},
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=1, default=str))
        tmp.replace(path)
        return path
