"""htx's public API: the one module a plugin imports from the core.

Built-in plugins use nothing else (a test enforces it), so whatever a built-in does, an outside plugin can do
with the same imports.

- **Interfaces** (one module per kind under :mod:`htx.interfaces`): :class:`Surgery` / :class:`InnerModel`,
  :class:`StaticPolicy` / :class:`SearchPolicy`, :class:`STFTBackend`, :class:`ComputeUnit`; :class:`Params`
  for options; :data:`hookimpl` to register.
- **Values and typed results**: :class:`OpInfo`, :class:`Assignment`, :class:`OpStats`, :class:`Placement`,
  :class:`Evaluation` (with :data:`EVALUATION_METRICS`), :class:`SearchResult`, :class:`SearchStep`,
  :class:`FrontierPoint`, :class:`FirstOrder`; :class:`Criterion`, the one definition of "passes".
- **Search machinery**: :class:`SearchContext` (budget, memo, log, progress, best set, Ctrl-C through
  :func:`run_search`), :class:`SearchStopped`.
- **Op-identity kit**: :data:`ATEN_TO_MIL` and :func:`mil_type_for_aten` (the aten -> MIL table),
  :func:`is_compute` (the compute / non-compute rule), :func:`module_stack` (the module-path lister),
  :func:`portable_module`, :func:`model_prefix`, :func:`number_ops` (portable keys), :func:`placement_runs`,
  :func:`transfer` / :func:`transfer_scores`, and :func:`key_mismatches` / :func:`check_unit_keys` (what
  ``htx check-unit`` runs).
- **Errors**: :class:`HtxError` and its kinds; raise them with a message that says how to fix the problem.
- **Services** for commands and benchmarks: :class:`Session` (builds a config's combinations),
  :func:`parse_config` / :func:`load_config`, :func:`load_registry`, :class:`Store`, the consoles and
  :func:`handle_errors`, :func:`write_record`, models, fixtures, metrics, separation and the STFT reference.
"""

from __future__ import annotations

from htx.cache import content_key
from htx.calls import call_plugin
from htx.config import ExperimentConfig, ModelConfig, PluginEntry, load_config, parse_config
from htx.console import err, handle_errors, out
from htx.criteria import DEFAULT_SNR_DB, Criterion
from htx.errors import AudioError, ConfigError, HtxError, ModelError, PluginError, UnavailableError
from htx.fixtures import BUILTINS as BUILTIN_FIXTURES
from htx.fixtures import load_musicgen
from htx.hookspecs import hookimpl
from htx.identity import (
    KeyCheck,
    Transfer,
    check_unit_keys,
    key_mismatches,
    stored_assignment,
    transfer,
    transfer_scores,
)
from htx.interfaces import (
    ComputeUnit,
    Forward,
    InnerModel,
    Params,
    Plugin,
    PrecisionPolicy,
    SearchPolicy,
    StaticPolicy,
    STFTBackend,
    Surgery,
)
from htx.interfaces.compute import NativeOrEmulated, macos_runtime_available
from htx.metrics import accuracy, percentiles
from htx.models import LoadedModel, load_model, model_hash, random_htdemucs
from htx.noise import project_noise
from htx.opmap import (
    ATEN_TO_MIL,
    is_compute,
    mil_type_for_aten,
    model_prefix,
    module_stack,
    number_ops,
    placement_runs,
    portable_module,
    squares_input,
)
from htx.pipeline import Pipeline
from htx.plugins import Registry, build_registry, get_plugin_manager, load_registry, module_plugin
from htx.records import write_record
from htx.reference import compute_reference
from htx.results import (
    EVALUATION_METRICS,
    Evaluation,
    FirstOrder,
    FrontierPoint,
    Placement,
    SearchResult,
    SearchStep,
)
from htx.search import CostKind, SearchContext, SearchStopped, run_search
from htx.separation import separate
from htx.session import Session
from htx.spectrogram import cac_to_spec, demucs_ispec, demucs_spec, spec_shape, spec_to_cac
from htx.store import Store, TrialRecord
from htx.types import Assignment, OpInfo, OpStats

__all__ = [
    # interfaces
    "ComputeUnit", "Forward", "InnerModel", "Params", "Plugin", "PrecisionPolicy", "STFTBackend", "SearchPolicy",
    "NativeOrEmulated", "macos_runtime_available", "StaticPolicy", "Surgery", "hookimpl",
    # values and typed results
    "Assignment", "Criterion", "DEFAULT_SNR_DB", "EVALUATION_METRICS", "Evaluation", "FirstOrder", "FrontierPoint",
    "OpInfo", "OpStats", "Placement", "SearchResult", "SearchStep",
    # search machinery
    "CostKind", "SearchContext", "SearchStopped", "run_search",
    # op-identity kit
    "ATEN_TO_MIL", "KeyCheck", "Transfer", "check_unit_keys", "is_compute", "key_mismatches", "mil_type_for_aten",
    "model_prefix", "module_stack", "number_ops", "placement_runs", "portable_module", "squares_input",
    "stored_assignment", "transfer", "transfer_scores",
    # errors
    "AudioError", "ConfigError", "HtxError", "ModelError", "PluginError", "UnavailableError",
    # services
    "BUILTIN_FIXTURES", "ExperimentConfig", "LoadedModel", "ModelConfig", "Pipeline", "PluginEntry", "Registry",
    "Session", "Store", "TrialRecord", "accuracy", "build_registry", "call_plugin", "compute_reference", "err",
    "get_plugin_manager", "handle_errors", "load_config", "load_model", "load_musicgen", "load_registry",
    "model_hash", "module_plugin", "out", "parse_config", "percentiles", "project_noise", "random_htdemucs",
    "separate", "spec_shape", "spec_to_cac", "cac_to_spec", "content_key", "demucs_ispec", "demucs_spec", "write_record",
]
