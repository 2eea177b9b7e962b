"""The results store: SQLite with runs, trials and metrics tables and a schema version.

Each finished trial is written in one transaction, so an interrupted run loses nothing and
``htx run --resume RUN_ID`` continues it. The leaderboard reads only this store.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from htx.axes import axis_names
from htx.errors import HtxError

SCHEMA_VERSION = 1


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (another user's process counts: signal 0 is refused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def schema() -> str:
    """The tables, with one ``trials`` column per axis of :data:`htx.axes.AXES`."""
    axis_cols = "".join(f"    {name} TEXT NOT NULL,\n" for name in axis_names())
    return f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config_path TEXT,
    config_json TEXT NOT NULL,
    model_source TEXT,
    model_hash TEXT,
    status TEXT NOT NULL,            -- running | finished | interrupted | failed
    htx_version TEXT,
    host TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    n_trials INTEGER NOT NULL DEFAULT 0,
    current_trial TEXT,              -- the trial an in-process serial run is running (crash marker)
    driver_pid INTEGER               -- the process driving a running run (on ``host``)
);
CREATE TABLE IF NOT EXISTS trials (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    trial_id TEXT NOT NULL,          -- stable key of the combination within the run
    idx INTEGER NOT NULL,
{axis_cols}    fixture TEXT NOT NULL,
    runtime TEXT,                    -- e.g. torch:cpu, coreml:emulated, coreml:native
    status TEXT NOT NULL,            -- ok | failed | unavailable
    reason TEXT,
    started_at REAL,
    finished_at REAL,
    duration_s REAL,
    info_json TEXT,
    PRIMARY KEY (run_id, trial_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    trial_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, trial_id, key),
    FOREIGN KEY (run_id, trial_id) REFERENCES trials(run_id, trial_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS trials_by_run ON trials(run_id, idx);
"""


class TrialRecord:
    """One finished trial as stored: its axis entry keys (``rec.surgery``, ``rec.axes``), fixture, status,
    metrics and info."""

    def __init__(
        self, run_id: str, trial_id: str, idx: int, fixture: str = "", status: str = "failed", *,
        axes: dict[str, str] | None = None, reason: str | None = None, runtime: str | None = None,
        started_at: float | None = None, finished_at: float | None = None, duration_s: float | None = None,
        metrics: dict[str, Any] | None = None, info: dict[str, Any] | None = None, **axis_keys: str,
    ) -> None:
        unknown = set(axis_keys) - set(axis_names())
        if unknown:
            raise TypeError(f"TrialRecord: unknown field(s) {sorted(unknown)}")
        self.run_id, self.trial_id, self.idx, self.fixture, self.status = run_id, trial_id, idx, fixture, status
        self.axes: dict[str, str] = {**(axes or {}), **axis_keys}
        self.reason, self.runtime = reason, runtime
        self.started_at, self.finished_at, self.duration_s = started_at, finished_at, duration_s
        self.metrics: dict[str, Any] = metrics if metrics is not None else {}
        self.info: dict[str, Any] = info if info is not None else {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "axes":
            raise AttributeError(name)
        axes = self.__dict__.get("axes", {})
        if name in axes:
            return axes[name]
        raise AttributeError(f"TrialRecord has no field or axis {name!r}")

    def __repr__(self) -> str:
        return f"<TrialRecord {self.run_id}/{self.trial_id} {self.status} {self.axes} {self.fixture}>"


def _encode(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    v = float(value)
    return v


class StoreWriteError(HtxError):
    """A write to the store failed (disk full, file-size limit, I/O error); nothing committed before is lost."""


class Store:
    """A SQLite results store. Opening creates the schema or checks its version.

    Safe with several processes: a 30 s busy timeout, idempotent initialisation (``CREATE ... IF NOT
    EXISTS``, ``INSERT OR IGNORE``) in one ``BEGIN IMMEDIATE`` transaction, and one transaction per trial.
    A store in a place this process cannot write (a read-only mount) opens read-only: reading works, and a
    write says that the store is read-only.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.read_only = False
        self._make_parent()
        if self.path.is_file() and self.path.stat().st_size > 0:
            with self.path.open("rb") as f:
                if f.read(16) != b"SQLite format 3\x00":  # never let SQLite turn someone's file into a store
                    raise HtxError(f"{self.path} is not an htx results database (not an SQLite file); "
                                   "pass another path with --db")
        writable = os.access(self.path.parent, os.W_OK) and (not self.path.exists() or os.access(self.path, os.W_OK))
        if not writable:
            if not self.path.exists():
                raise HtxError(f"cannot create the results database {self.path}: {self.path.parent} is read-only. "
                               "Pass a writable path with --db (or set store.path in the config).")
            self.read_only = True
        try:
            if self.read_only:
                self.conn = sqlite3.connect(f"file:{self.path.absolute()}?mode=ro&immutable=1", uri=True, timeout=30.0)
            else:
                self.conn = sqlite3.connect(str(self.path), timeout=30.0)
            self.conn.execute("PRAGMA busy_timeout = 30000")
            self.conn.execute("PRAGMA foreign_keys = ON")
            if not self.read_only:
                self._initialise()
        except sqlite3.OperationalError as exc:
            raise HtxError(f"cannot open the results database {self.path}: {exc}. Pass another path with --db.") from None
        except sqlite3.DatabaseError as exc:
            raise HtxError(f"{self.path} is not a usable htx results database ({exc}); pass another path with --db") from None
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise HtxError(f"{self.path} is not an htx results database ({exc}); pass another path with --db") from None
        if row is None:
            raise HtxError(f"{self.path} is not an htx results database (no schema version); pass another path with --db")
        if int(row[0]) != SCHEMA_VERSION:
            raise HtxError(
                f"{self.path} has schema version {row[0]}, this htx writes version {SCHEMA_VERSION}; "
                "use a new database path (--db) or an htx version that matches"
            )

    def _make_parent(self) -> None:
        parent = self.path.parent
        if self.path.is_dir():
            raise HtxError(f"--db {self.path} is a directory; pass a file path such as {self.path / 'htx.sqlite'}")
        for p in [parent, *parent.parents]:
            if p.exists():
                if not p.is_dir():
                    raise HtxError(f"cannot create the results database {self.path}: {p} is a file, not a folder. "
                                   "Pass another path with --db.")
                break
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HtxError(f"cannot create the folder {parent} for the results database {self.path}: "
                           f"{exc.strerror or exc}. Pass another path with --db.") from None

    def _initialise(self) -> None:
        """Create the schema and the version row once, whichever process gets there first."""
        for attempt in range(50):
            try:
                self.conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                time.sleep(0.05 * (attempt + 1))
        self.conn.isolation_level = None
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for stmt in schema().split(";"):
                if stmt.strip():
                    self.conn.execute(stmt)
            run_cols = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
            if "current_trial" not in run_cols:
                self.conn.execute("ALTER TABLE runs ADD COLUMN current_trial TEXT")  # a store from before it
            if "driver_pid" not in run_cols:
                self.conn.execute("ALTER TABLE runs ADD COLUMN driver_pid INTEGER")
            cols = {r[1] for r in self.conn.execute("PRAGMA table_info(trials)")}
            for name in axis_names():  # an axis added since this store was made
                if name not in cols:
                    self.conn.execute(f"ALTER TABLE trials ADD COLUMN {name} TEXT NOT NULL DEFAULT ''")
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        finally:
            self.conn.isolation_level = "DEFERRED"  # sqlite3's default ("" means the same)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise HtxError(f"the results database {self.path} is read-only here; copy it somewhere writable or pass --db")
        try:
            with self.conn:
                yield self.conn
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc).replace(" ", "").lower():
                raise HtxError(f"the results database {self.path} is read-only ({exc}); pass a writable --db") from None
            raise StoreWriteError(
                f"cannot write to the results database {self.path}: {exc} (a full disk, a file-size limit, or an I/O "
                "error). What was stored before is kept (each trial is its own transaction); free space, then "
                "continue the run with `htx run --resume`") from None

    # runs -------------------------------------------------------------------------------------------

    def create_run(self, name: str, config: dict[str, Any], config_path: str | None, htx_version: str, host: str) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        with self._tx() as c:
            c.execute(
                "INSERT INTO runs (run_id, name, config_path, config_json, status, htx_version, host, created_at, driver_pid) "
                "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (run_id, name, config_path, json.dumps(config, sort_keys=True), htx_version, host, time.time(), os.getpid()),
            )
        return run_id

    def update_run(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as c:
            c.execute(f"UPDATE runs SET {cols} WHERE run_id = ?", (*fields.values(), run_id))

    def get_run(self, run_id: str) -> dict[str, Any]:
        cur = self.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        row = cur.fetchone()
        if row is None:
            known = [r["run_id"] for r in self.list_runs()][:5]
            hint = f" Recent runs: {', '.join(known)}." if known else f" No runs in {self.path}; run `htx run CONFIG` first."
            raise HtxError(f"no run {run_id!r} in {self.path}.{hint}")
        return self._settled(dict(zip([d[0] for d in cur.description], row)))

    def list_runs(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM runs ORDER BY created_at DESC")
        cols = [d[0] for d in cur.description]
        return [self._settled(dict(zip(cols, r))) for r in cur.fetchall()]

    def _settled(self, run: dict[str, Any]) -> dict[str, Any]:
        """A ``running`` run whose driver process is gone (on this host) is ``interrupted``: its driver stopped
        without saying so (killed, or the store could not be written then). Marked so in the store where it
        can be written; said in ``status_note`` either way."""
        pid = run.get("driver_pid")
        note = (f"its driver (pid {pid}) stopped without marking the run (killed, or the store could not be "
                f"written); htx run --resume {run['run_id']} --db {self.path} continues it")
        if run.get("status") == "interrupted" and pid and run.get("finished_at") is None:
            run["status_note"] = note  # marked by an earlier open (a Ctrl-C marks finished_at)
            return run
        if run.get("status") != "running" or not pid or run.get("host") != platform.node() or _alive(int(pid)):
            return run
        run["status"], run["status_note"] = "interrupted", note
        try:
            with self._tx() as c:
                c.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ? AND status = 'running'", (run["run_id"],))
        except HtxError:
            pass  # a read-only or full store: the note says it all the same
        return run

    def latest_run_id(self) -> str | None:
        row = self.conn.execute("SELECT run_id FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()
        return row[0] if row else None

    # trials -----------------------------------------------------------------------------------------

    def trial_statuses(self, run_id: str) -> dict[str, str]:
        """``{trial_id: status}`` of the run's recorded trials."""
        return dict(self.conn.execute("SELECT trial_id, status FROM trials WHERE run_id = ?", (run_id,)).fetchall())

    def write_trial(self, rec: TrialRecord) -> None:
        """Write one trial and its metrics atomically (replacing an earlier attempt of the same trial)."""
        axes = axis_names()
        cols = ["run_id", "trial_id", "idx", *axes, "fixture", "runtime", "status", "reason", "started_at",
                "finished_at", "duration_s", "info_json"]
        values = [
            rec.run_id, rec.trial_id, rec.idx, *(rec.axes.get(a, "") for a in axes), rec.fixture, rec.runtime,
            rec.status, rec.reason, rec.started_at, rec.finished_at, rec.duration_s,
            json.dumps(rec.info, sort_keys=True, default=str),
        ]
        with self._tx() as c:
            c.execute("DELETE FROM metrics WHERE run_id = ? AND trial_id = ?", (rec.run_id, rec.trial_id))
            c.execute("DELETE FROM trials WHERE run_id = ? AND trial_id = ?", (rec.run_id, rec.trial_id))
            c.execute(f"INSERT INTO trials ({', '.join(cols)}) VALUES ({','.join('?' * len(cols))})", values)
            c.executemany(
                "INSERT INTO metrics (run_id, trial_id, key, value) VALUES (?, ?, ?, ?)",
                [(rec.run_id, rec.trial_id, k, _encode(v)) for k, v in sorted(rec.metrics.items())],
            )
            c.execute(
                "UPDATE runs SET n_trials = (SELECT COUNT(*) FROM trials WHERE run_id = ?), "
                "current_trial = CASE WHEN current_trial = ? THEN NULL ELSE current_trial END WHERE run_id = ?",
                (rec.run_id, rec.trial_id, rec.run_id),
            )

    def trials(self, run_ids: list[str] | None = None) -> list[TrialRecord]:
        """Trials (with metrics) of the given runs, or of every run."""
        q = "SELECT * FROM trials"
        args: tuple[Any, ...] = ()
        if run_ids is not None:
            if not run_ids:
                return []
            q += f" WHERE run_id IN ({','.join('?' * len(run_ids))})"
            args = tuple(run_ids)
        q += " ORDER BY run_id, idx"
        cur = self.conn.execute(q, args)
        cols = [d[0] for d in cur.description]
        recs: dict[tuple[str, str], TrialRecord] = {}
        axes = axis_names()
        for row in cur.fetchall():
            d = dict(zip(cols, row))
            info = json.loads(d.pop("info_json") or "{}")
            keys = {a: d.pop(a) for a in axes if a in d}
            d = {k: v for k, v in d.items() if k in _RECORD_FIELDS}
            recs[(d["run_id"], d["trial_id"])] = TrialRecord(**d, axes=keys, info=info)
        mq = "SELECT run_id, trial_id, key, value FROM metrics"
        if run_ids is not None:
            mq += f" WHERE run_id IN ({','.join('?' * len(run_ids))})"
        for run_id, trial_id, key, value in self.conn.execute(mq, args):
            rec = recs.get((run_id, trial_id))
            if rec is not None:
                rec.metrics[key] = value
        return list(recs.values())


_RECORD_FIELDS = {"run_id", "trial_id", "idx", "fixture", "status", "reason", "runtime", "started_at", "finished_at", "duration_s"}


def clean_float(v: Any) -> Any:
    """JSON-safe numbers: NaN becomes None, infinities stay as strings."""
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v
