"""Conversion to a Core ML ``mlprogram``, the on-disk conversion cache, and typed (FP16) conversions.

``prepare`` converts each inner model once, in FP32, and keeps the ``.mlpackage`` under
``<cache_dir>/coreml/<content hash>/``; the MIL program is loaded back from it with coremltools' own
milproto frontend (a loaded program is the exact program that would ship). Precision assignments are
applied through coremltools' ``FP16ComputePrecision(op_selector=...)``, either to the traced model
(``htx convert``) or to a fresh copy of the cached program (the native runtime).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import logging
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from htx.api import HtxError, content_key

#: Bump when the conversion recipe changes, so stale cache entries are not reused.
CACHE_VERSION = "1"
TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18")
OUTPUT_NAMES = ("spec_out", "wave_out")


class ConversionError(HtxError):
    """coremltools could not trace or convert the inner model."""


def coremltools() -> Any:
    """Import coremltools with its import-time chatter (no native runtime on Linux, untested torch) muted."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct

    return ct


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence coremltools' progress bars, its logger and torch's tracer warnings during a conversion."""
    ct = coremltools()
    from coremltools.converters.mil.frontend.torch import ops as torch_ops
    from coremltools.converters.mil.mil.passes import pass_pipeline

    patched = [(pass_pipeline, "tqdm"), (torch_ops, "_tqdm")]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr in patched if hasattr(mod, attr)]
    logger = logging.getLogger("coremltools")
    level = logger.level
    try:
        for mod, attr, orig in saved:
            setattr(mod, attr, functools.partial(orig, disable=True))
        logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for mod, attr, orig in saved:
            setattr(mod, attr, orig)
        logger.setLevel(level)
        del ct


def target_of(name: str) -> Any:
    return getattr(coremltools().target, name)


# --------------------------------------------------------------------------------------------------
# inputs, outputs and the traced wrapper


def input_names(inner: nn.Module, n: int) -> list[str]:
    """Core ML input names: the inner model's ``forward`` parameter names, else ``input_<i>``."""
    try:
        params = [p for p in inspect.signature(inner.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params][:n]
    except (TypeError, ValueError):
        names = []
    if len(names) != n or len(set(names)) != n or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s) for s in names):
        names = [f"input_{i}" for i in range(n)]
    return names


class _TensorsOnly(nn.Module):
    """Wraps an inner model so that tracing sees only its tensor inputs and outputs (``None`` dropped)."""

    def __init__(self, inner: nn.Module, none_inputs: tuple[int, ...], n_inputs: int) -> None:
        super().__init__()
        self.inner = inner
        self.none_inputs = none_inputs
        self.n_inputs = n_inputs

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(tensors)
        args = [None if i in self.none_inputs else next(it) for i in range(self.n_inputs)]
        outs = self.inner(*args)
        return tuple(o for o in outs if o is not None)


@dataclass
class Signature:
    """Which inner-model inputs and outputs are tensors, and their Core ML names and shapes."""

    n_inputs: int
    none_inputs: tuple[int, ...]
    input_names: list[str]
    input_shapes: list[tuple[int, ...]]
    n_outputs: int
    none_outputs: tuple[int, ...]
    output_names: list[str]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Signature:
        return cls(
            d["n_inputs"], tuple(d["none_inputs"]), list(d["input_names"]),
            [tuple(s) for s in d["input_shapes"]], d["n_outputs"], tuple(d["none_outputs"]), list(d["output_names"]),
        )


def signature(inner: nn.Module, example_inputs: tuple[torch.Tensor | None, ...], outputs: tuple[Any, ...]) -> Signature:
    none_in = tuple(i for i, t in enumerate(example_inputs) if t is None)
    tensors = [t for t in example_inputs if t is not None]
    names = [n for i, n in enumerate(input_names(inner, len(example_inputs))) if i not in none_in]
    none_out = tuple(i for i, o in enumerate(outputs) if o is None)
    base = list(OUTPUT_NAMES) if len(outputs) == 2 else [f"output_{i}" for i in range(len(outputs))]
    out_names = [n for i, n in enumerate(base) if i not in none_out]
    return Signature(len(example_inputs), none_in, names, [tuple(t.shape) for t in tensors], len(outputs), none_out, out_names)


# --------------------------------------------------------------------------------------------------
# the content hash


def cache_key(inner: nn.Module, example_inputs: tuple[torch.Tensor | None, ...], target: str) -> str:
    """Content hash of what determines the converted program (:func:`htx.api.content_key`: the inner model,
    its weights and input shapes) with the deployment target and the coremltools version."""
    return content_key(inner, example_inputs, CACHE_VERSION, target, coremltools().__version__)


# --------------------------------------------------------------------------------------------------
# tracing and conversion


def trace(inner: nn.Module, example_inputs: tuple[torch.Tensor | None, ...]) -> tuple[torch.jit.ScriptModule, Signature]:
    """Trace ``inner`` on CPU with the fused attention fast path off (Core ML cannot convert it)."""
    torch.backends.mha.set_fastpath_enabled(False)
    if any(t.device.type != "cpu" for t in list(inner.parameters()) + list(inner.buffers())):
        # Trace a CPU copy: the runner shares this module with compute units that keep it on their device.
        inner = copy.deepcopy(inner).to("cpu")
    inner = inner.eval()
    cpu_inputs = tuple(None if t is None else t.detach().to("cpu", torch.float32) for t in example_inputs)
    with torch.no_grad():
        outputs = inner(*cpu_inputs)
    sig = signature(inner, cpu_inputs, tuple(outputs))
    wrapper = _TensorsOnly(inner, sig.none_inputs, sig.n_inputs).eval()
    tensors = tuple(t for t in cpu_inputs if t is not None)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, tensors, check_trace=False)
    except Exception as exc:
        raise ConversionError(f"torch.jit.trace failed on {type(inner).__name__}: {type(exc).__name__}: {exc}") from exc
    return traced, sig


def op_modules(traced: torch.jit.ScriptModule, program: Any) -> dict[str, str]:
    """``{MIL op name: module path relative to the inner model}`` for every non-const op of ``program``.

    coremltools keeps TorchScript scopes on MIL ops (``op.scopes[ScopeSource.TORCHSCRIPT_MODULE_NAME]``), but
    only each called module's own attribute name: ``encoder.0`` and ``tencoder.0`` both come out as ``0``,
    because the ``ModuleList`` is never called itself. The scope's last entry is the TorchScript value the
    op computes, whose node in the traced graph has the whole path (``__module.inner.model.encoder.0.dconv``);
    that path is what is kept here.
    """
    from coremltools.converters.mil.mil.scope import ScopeSource

    by_value: dict[str, str] = {}
    for node in traced.inlined_graph.nodes():
        scope = node.scopeName().rsplit("/", 1)[-1].removeprefix("__module")
        path = scope.lstrip(".").removeprefix("inner").lstrip(".")
        for out in node.outputs():
            by_value[out.debugName()] = path
    found: dict[str, str] = {}
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            continue
        names = op.scopes.get(ScopeSource.TORCHSCRIPT_MODULE_NAME) if hasattr(op, "scopes") else None
        path = by_value.get(names[-1]) if names else None
        if path is None and names:  # no traced value: the called modules' own names, as coremltools keeps them
            path = ".".join(names[1:-1])
        found[sanitize(op.name)] = path or ""
    return found


def convert(
    source: Any,
    sig: Signature,
    target: str,
    compute_precision: Any = None,
) -> Any:
    """``ct.convert`` to an ``mlprogram`` with FP32 inputs and outputs, without loading a runtime model.

    ``source`` is a traced TorchScript module or a MIL program (which coremltools modifies in place).
    ``compute_precision`` defaults to FP32; pass ``ct.transform.FP16ComputePrecision(op_selector=...)``
    for a typed program. Inputs and outputs are pinned to FP32 so a precision assignment never changes
    the model's interface (coremltools would otherwise make them FP16 under an FP16 precision).
    """
    ct = coremltools()
    if compute_precision is None:
        compute_precision = ct.precision.FLOAT32
    kwargs: dict[str, Any] = dict(
        convert_to="mlprogram", minimum_deployment_target=target_of(target),
        compute_precision=compute_precision, skip_model_load=True,
    )
    if not isinstance(source, ct.converters.mil.Program):
        kwargs["inputs"] = [ct.TensorType(name=n, shape=s, dtype=np.float32) for n, s in zip(sig.input_names, sig.input_shapes, strict=True)]
        kwargs["outputs"] = [ct.TensorType(name=n, dtype=np.float32) for n in sig.output_names]
    try:
        with quiet():
            return ct.convert(source, **kwargs)
    except Exception as exc:
        raise ConversionError(
            f"coremltools {ct.__version__} could not convert the model: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Try another surgery (e.g. decomposed-attention) or another target."
        ) from exc


# --------------------------------------------------------------------------------------------------
# the on-disk cache


@dataclass
class CachedConversion:
    """A converted FP32 program on disk, and how it was obtained."""

    key: str
    path: Path  # the .mlpackage
    sig: Signature
    target: str
    hit: bool
    seconds: float  # time spent in this call (load on a hit, trace + convert + save on a miss)
    meta: dict[str, Any] = field(default_factory=dict)


#: Each op's module path (:func:`op_modules`), beside the package in its cache entry.
MODULES_FILE = "modules.json"


def cached_modules(conversion: CachedConversion) -> dict[str, str]:
    """The op -> module path map of a cache entry (``{}`` for an entry without one)."""
    path = conversion.path.parent / MODULES_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def cache_entry(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "coreml" / key


def convert_cached(
    inner: nn.Module,
    example_inputs: tuple[torch.Tensor | None, ...],
    target: str,
    cache_dir: Path | None,
    key: str | None = None,
) -> CachedConversion:
    """The FP32 ``.mlpackage`` of ``inner`` for these input shapes, converting only on a cache miss.

    Without a ``cache_dir`` the package goes to a fresh temporary directory (converted every time).
    """
    t0 = time.perf_counter()
    key = key or cache_key(inner, example_inputs, target)
    if cache_dir is None:
        import atexit
        import tempfile

        tmp_root = tempfile.mkdtemp(prefix="htx-coreml-")
        atexit.register(shutil.rmtree, tmp_root, ignore_errors=True)
        entry = Path(tmp_root) / key
    else:
        entry = cache_entry(cache_dir, key)
    meta_path = entry / "meta.json"
    pkg = entry / "model.mlpackage"
    if meta_path.exists() and pkg.exists() and (entry / MODULES_FILE).exists():
        try:
            meta = json.loads(meta_path.read_text())
            return CachedConversion(key, pkg, Signature.from_json(meta["signature"]), target, True,
                                    time.perf_counter() - t0, meta)
        except (OSError, ValueError, KeyError):
            pass  # a torn or foreign entry: convert again
    traced, sig = trace(inner, example_inputs)
    t_traced = time.perf_counter()
    mlmodel = convert(traced, sig, target)
    modules = op_modules(traced, mlmodel._mil_program)
    t_converted = time.perf_counter()
    tmp = entry.with_name(entry.name + f".tmp{time.time_ns()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with quiet():
            mlmodel.save(str(tmp / "model.mlpackage"))
        ct = coremltools()
        meta = {
            "key": key, "target": target, "coremltools": ct.__version__, "torch": torch.__version__,
            "signature": sig.to_json(), "inner": f"{type(inner).__module__}.{type(inner).__qualname__}",
            "trace_s": t_traced - t0, "convert_s": t_converted - t_traced, "created_at": time.time(),
        }
        (tmp / MODULES_FILE).write_text(json.dumps(modules, indent=0))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():  # an entry without meta (interrupted writer): replace it
            shutil.rmtree(entry, ignore_errors=True)
        try:
            tmp.rename(entry)
        except OSError:  # another process won the race: use its entry
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return CachedConversion(key, pkg, sig, target, False, time.perf_counter() - t0, meta)


def load_program(pkg: Path) -> Any:
    """A fresh MIL program from an ``.mlpackage`` (coremltools' milproto frontend; no runtime needed)."""
    ct = coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    with quiet():
        model = ct.models.MLModel(str(pkg), skip_model_load=True)
        spec = model.get_spec()
        return milproto_load(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)


# --------------------------------------------------------------------------------------------------
# precision assignments through coremltools' own pass


def sanitize(name: str) -> str:
    """The op name coremltools' ``sanitize_name_strings`` pass gives ``name`` (TorchScript names contain dots)."""
    new = re.sub("[^a-zA-Z0-9_]", "_", name)
    if re.match("[^a-zA-Z_]", new):
        new = "op_" + new
    return new


def fp16_selector(fp16: frozenset[str], seen: set[str] | None = None) -> Callable[[Any], bool]:
    """An ``op_selector`` for ``FP16ComputePrecision``: True for ops whose (sanitized) name is assigned FP16.

    The pass runs before coremltools sanitizes names, so the names it sees are mapped the same way.
    ``seen`` collects the names asked about (to check afterwards that the assignment matched).
    """

    def select(op: Any) -> bool:
        name = sanitize(op.name)
        if seen is not None and op.op_type != "const":
            seen.add(name)
        return name in fp16

    return select


def typed_convert(source: Any, sig: Signature, target: str, fp16: frozenset[str]) -> tuple[Any, set[str]]:
    """Convert ``source`` (traced module or a fresh MIL program) with ``fp16`` applied via ``op_selector``.

    Returns the ``MLModel`` and the set of op names the selector was asked about.
    """
    ct = coremltools()
    seen: set[str] = set()
    precision = ct.transform.FP16ComputePrecision(op_selector=fp16_selector(frozenset(fp16), seen))
    return convert(source, sig, target, precision), seen


def package_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


#: Bump when :class:`~htx_plugins.compute.coreml.graph.Graph` changes shape.
GRAPH_VERSION = "1"


def cached_graph(conversion: CachedConversion) -> tuple[Any, bool]:
    """The parsed program of a cache entry, and whether it came from the entry's pickled copy.

    The ``.mlpackage`` is the source of truth; reading it back through coremltools and walking the program
    takes seconds for the full-size model, so the parsed graph is pickled beside it (this cache directory
    is trusted like any build cache: do not point ``cache_dir`` at files from elsewhere).
    """
    import pickle

    from htx_plugins.compute.coreml.graph import read_program

    path = conversion.path.parent / f"graph-v{GRAPH_VERSION}.pkl"
    if path.exists():
        try:
            with path.open("rb") as f:
                return pickle.load(f), True
        except Exception:
            path.unlink(missing_ok=True)  # torn or stale: parse the package again
    graph = read_program(load_program(conversion.path))
    tmp = path.with_name(path.name + f".tmp{time.time_ns()}")
    try:
        with tmp.open("wb") as f:
            pickle.dump(graph, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
    return graph, False
