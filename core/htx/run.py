"""A run: one config against one store, resumable, driven through an executor backend.

:class:`Run` owns the store and the run's row in it, decides which trials are left (``--resume``), loads
the workspace and hands the trials to the executor (:func:`htx.executors.driver.execute`); the driver
writes every record it gets back in its own transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

from htx import __version__
from htx.builder import TrialBuilder
from htx.config import ExperimentConfig, parse_config
from htx.errors import ConfigError, HtxError
from htx.executors.driver import ExecutorReport, execute, start_workers_early
from htx.grid import TrialSpec, expand_grid
from htx.plugins import Registry
from htx.store import Store, TrialRecord
from htx.trial import new_record, trial_label
from htx.workspace import Workspace

#: Config keys that may change on ``--resume``: where results go and how trials are executed.
RESUMABLE_CHANGES = ("store", "executor")
#: The reason stored for the trial an in-process run was running when its process died.
DIED = "the process died during this trial (it aborted, crashed or was killed)"


def config_fingerprint(data: dict[str, Any]) -> str:
    """A content hash of a config's grid-defining part (everything but store and executor)."""
    core = {k: v for k, v in data.items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_differences(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """One line per top-level key (axis, fixtures, model, targets, ...) whose value differs."""
    lines = []
    for key in sorted(set(stored) | set(given)):
        if key in RESUMABLE_CHANGES or stored.get(key) == given.get(key):
            continue
        lines.append(f"{key}: the run has {_short(stored.get(key))}, this config {_short(given.get(key))}")
    return lines


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_entry(v) for v in value) + "]"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _entry(v: Any) -> str:
    if isinstance(v, dict) and set(v) <= {"name", "params", "path"}:
        name = v.get("name") or v.get("path")
        return f"{name}{v['params']}" if v.get("params") else str(name)
    return json.dumps(v, sort_keys=True, default=str)


class Run:
    """Runs an experiment config against a store. One instance per run.

    ``on_progress(label, done, total)`` is called as trials start and finish; ``on_message(text)`` gets
    log lines (model loading, references, failures).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        registry: Registry,
        store: Store,
        config_path: str | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.store = store
        self.config_path = config_path
        self.on_progress = on_progress or (lambda desc, done, total: None)
        self.say = on_message or (lambda msg: None)
        self.workspace = Workspace(cfg, registry, self.say)
        self.builder = TrialBuilder(self.workspace, registry)
        self.run_id: str | None = None
        self.executor_report: ExecutorReport | None = None

    def mark_running(self, trial_id: str | None) -> None:
        """Note the trial an in-process run is about to run (cleared when its record is written)."""
        if self.run_id is not None:
            self.store.update_run(self.run_id, current_trial=trial_id)

    def finish_trial(self, rec: TrialRecord) -> None:
        """Commit one finished trial to the store (its own transaction) and report a status other than ok."""
        self.store.write_trial(rec)
        if rec.status != "ok":
            self.say(f"{rec.status}: {trial_label(rec)}: {rec.reason}")

    def check_resumable(self, run: dict[str, Any]) -> None:
        """Refuse to resume ``run`` with a config whose grid differs from the one it was made with."""
        try:
            stored = parse_config(json.loads(run["config_json"]), f"run {run['run_id']}", self.registry,
                                  check_model=False, check_files=False).model_dump(mode="json")
        except ConfigError:
            stored = json.loads(run["config_json"])  # plugins it used are gone: compare as stored
        given = self.cfg.model_dump(mode="json")
        if config_fingerprint(stored) != config_fingerprint(given):
            diffs = config_differences(stored, given)
            raise HtxError(
                f"cannot resume run {run['run_id']} with this config: it differs from the run's own config, so "
                "the two grids would mix in one run:\n" + "\n".join(f"  - {d}" for d in diffs)
                + f"\nStart a new run (leave out --resume), or resume with the run's stored config: "
                f"htx run --resume {run['run_id']} --db {self.store.path}"
            )

    def _record_died(self, run: dict[str, Any], specs: list[TrialSpec], done: set[str]) -> None:
        """An in-process run died during ``current_trial``: record that trial as failed, not run it again."""
        current = run.get("current_trial")
        spec = next((s for s in specs if s.trial_id == current), None)
        if spec is None or current in done:
            return
        rec = new_record(run["run_id"], spec, "failed", f"{DIED}; `--retry-failed` runs it again")
        rec.finished_at = rec.started_at
        self.finish_trial(rec)
        done.add(spec.trial_id)

    def execute(self, resume: str | None = None, retry_failed: bool = False) -> str:
        """Run every trial of the grid and return the run id.

        ``resume``: continue that run, skipping the trials it has recorded (failed ones too, unless
        ``retry_failed``); the config must define the same grid (store and executor may differ).
        """
        specs = expand_grid(self.cfg)
        if resume:
            run = self.store.get_run(resume)
            self.check_resumable(run)
            self.run_id = resume
            self.builder.run_id = resume
            statuses = self.store.trial_statuses(resume)
            # an interrupted search is run again; failed trials only with --retry-failed
            done = {t for t, st in statuses.items() if st != "interrupted" and not (retry_failed and st == "failed")}
            self._record_died(run, specs, done)
            self.store.update_run(resume, status="running", current_trial=None, driver_pid=os.getpid(), host=platform.node())
        else:
            self.run_id = self.store.create_run(
                self.cfg.name, self.cfg.model_dump(mode="json"), self.config_path, __version__, platform.node()
            )
            done = set()
        self.builder.run_id = self.run_id
        todo = [s for s in specs if s.trial_id not in done]
        retried = f", {sum(st == 'failed' for st in self.store.trial_statuses(self.run_id).values())} failed ones to retry" if resume and retry_failed else ""
        self.say(f"run {self.run_id}: {len(specs)} trials ({len(done)} already done{retried})")
        try:
            modules = start_workers_early(self, todo)
            if todo:
                self.workspace.load()
                loaded = self.workspace.model
                self.store.update_run(self.run_id, model_source=loaded.source, model_hash=loaded.hash)
                execute(self, todo, len(done), len(specs), modules)
            self.on_progress("done", len(specs), len(specs))
        except KeyboardInterrupt:  # the user stopped it: the running trial is not to blame, it runs on resume
            self.store.update_run(self.run_id, status="interrupted", finished_at=time.time(), current_trial=None)
            raise
        except BaseException:
            try:  # best effort: the failure may be the store itself (a full disk)
                self.store.update_run(self.run_id, status="failed", finished_at=time.time(), current_trial=None)
            except HtxError:
                pass
            raise
        self.store.update_run(self.run_id, status="finished", finished_at=time.time())
        return self.run_id


__all__ = ["Run"]
