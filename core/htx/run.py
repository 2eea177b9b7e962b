"""A run: one config against one store, resumable, driven through an executor backend.

:class:`Run` owns the store and the run's row in it, decides which trials are left (``--resume``), loads
the workspace and hands the trials to the executor (:func:`htx.executors.driver.execute`); the driver
writes every record it gets back in its own transaction.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

from htx import __version__
from htx.builder import TrialBuilder
from htx.config import ExperimentConfig
from htx.executors.driver import ExecutorReport, execute, start_workers_early
from htx.grid import expand_grid
from htx.plugins import Registry
from htx.store import Store, TrialRecord
from htx.trial import trial_label
from htx.workspace import Workspace


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

    def finish_trial(self, rec: TrialRecord) -> None:
        """Commit one finished trial to the store (its own transaction) and report a status other than ok."""
        self.store.write_trial(rec)
        if rec.status != "ok":
            self.say(f"{rec.status}: {trial_label(rec)}: {rec.reason}")

    def execute(self, resume: str | None = None) -> str:
        """Run every trial of the grid (those not finished yet, with ``resume``); returns the run id."""
        specs = expand_grid(self.cfg)
        if resume:
            self.store.get_run(resume)
            self.run_id = resume
            done = self.store.finished_trial_ids(resume)
            self.store.update_run(resume, status="running")
        else:
            self.run_id = self.store.create_run(
                self.cfg.name, self.cfg.model_dump(mode="json"), self.config_path, __version__, platform.node()
            )
            done = set()
        self.builder.run_id = self.run_id
        todo = [s for s in specs if s.trial_id not in done]
        self.say(f"run {self.run_id}: {len(specs)} trials ({len(done)} already done)")
        try:
            modules = start_workers_early(self, todo)
            if todo:
                self.workspace.load()
                loaded = self.workspace.model
                self.store.update_run(self.run_id, model_source=loaded.source, model_hash=loaded.hash)
                execute(self, todo, len(done), len(specs), modules)
            self.on_progress("done", len(specs), len(specs))
        except KeyboardInterrupt:
            self.store.update_run(self.run_id, status="interrupted", finished_at=time.time())
            raise
        except BaseException:
            self.store.update_run(self.run_id, status="failed", finished_at=time.time())
            raise
        self.store.update_run(self.run_id, status="finished", finished_at=time.time())
        return self.run_id


__all__ = ["Run"]
