"""Model loading: the shipped demo model, seeded random HTDemucs, demucs checkpoints, pretrained names.

Every loaded model is checked for NaN/Inf weights and put in eval mode. :func:`model_hash` gives the
content hash used to key the reference and conversion caches.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from htx.errors import ModelError

SOURCES = ["drums", "bass", "other", "vocals"]
#: The configuration of the shipped demo model (fixtures/demo/htdemucs_demo.th, trained by
#: fixtures/train_demo.py) and of the seeded random stand-in used when the checkpoint is missing.
DEMO_KWARGS: dict[str, Any] = dict(
    sources=SOURCES, audio_channels=2, samplerate=44100, segment=2, channels=16, depth=4, t_layers=2, nfft=4096
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def fixtures_dir() -> Path:
    return Path(os.environ.get("HTX_FIXTURES_DIR", REPO_ROOT / "fixtures"))


def demo_checkpoint() -> Path:
    return fixtures_dir() / "demo" / "htdemucs_demo.th"


@dataclass
class LoadedModel:
    #: a demucs ``HTDemucs`` (demucs ships no type information, so it is ``Any`` to a type checker)
    model: Any
    source: str  # what was loaded, for results ("demo (trained, fixtures/demo/...)", "random seed=0", ...)
    hash: str

    @property
    def segment_length(self) -> int:
        return int(self.model.segment * self.model.samplerate)

    @property
    def samplerate(self) -> int:
        return int(self.model.samplerate)

    @property
    def sources(self) -> list[str]:
        return list(self.model.sources)


def check_random_kwargs(kwargs: dict[str, Any]) -> None:
    from demucs.htdemucs import HTDemucs

    allowed = set(inspect.signature(HTDemucs.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - allowed - {"seed"})
    if unknown:
        raise ValueError(f"model.random: unknown HTDemucs argument(s) {unknown}; see demucs.htdemucs.HTDemucs for the list")


def random_htdemucs(seed: int = 0, **kwargs: Any) -> nn.Module:
    """A seeded random-init demucs ``HTDemucs`` (4 sources by default)."""
    from demucs.htdemucs import HTDemucs

    kwargs = dict(kwargs)
    kwargs.setdefault("sources", list(SOURCES))
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = HTDemucs(**kwargs)
    except TypeError as exc:
        raise ModelError(f"cannot build HTDemucs({kwargs}): {exc}") from exc
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()


def check_weights(model: nn.Module, what: str) -> None:
    """Reject NaN/Inf parameters or buffers, naming the first offending tensors."""
    bad = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            n_nan = int(torch.isnan(t).sum())
            n_inf = int(torch.isinf(t).sum())
            bad.append(f"{name} ({n_nan} NaN, {n_inf} Inf)")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ModelError(
            f"{what} has non-finite weights: {', '.join(bad[:5])}{more}. "
            "The checkpoint is corrupt or was saved after a diverged training step; use another checkpoint."
        )


def model_hash(model: nn.Module) -> str:
    """Content hash of a model: class, init kwargs and every parameter/buffer's bytes."""
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    init = getattr(model, "_init_args_kwargs", None)
    if init is not None:
        args, kwargs = init
        h.update(repr((args, sorted(kwargs.items()))).encode())  # kwargs order (e.g. from a stored config) is not content
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _single(model: Any, what: str) -> Any:
    from demucs.apply import BagOfModels

    if isinstance(model, BagOfModels):
        if len(model.models) != 1:
            raise ModelError(
                f"{what} is a bag of {len(model.models)} models; htx studies one HTDemucs at a time. "
                "Export one member (e.g. bag.models[0]) to a .th file and use `model: {path: ...}`."
            )
        model = model.models[0]
    return model


def load_checkpoint(path: str | Path) -> Any:
    """Load a demucs checkpoint: a `.th` package (``{klass, args, kwargs, state}``) or a `.safetensors` file."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from demucs.hf import load_safetensors_model

            model = load_safetensors_model(path)
        else:
            from demucs.states import load_model

            model = load_model(str(path))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"cannot load {path} as a demucs checkpoint ({type(exc).__name__}: {exc}). "
            "Expected a file written by demucs (`.th` package with klass/args/kwargs/state, or a demucs "
            "`.safetensors` export with klass/args/kwargs metadata)."
        ) from exc
    model = _single(model, str(path))
    model = model.float().eval()
    check_weights(model, str(path))
    return model


def load_pretrained(name: str) -> nn.Module:
    """Load a named pretrained model through demucs's own loader (needs the local cache offline)."""
    from demucs.pretrained import get_model

    try:
        model = get_model(name)
    except BaseException as exc:  # demucs calls sys.exit / raises various errors when offline
        if isinstance(exc, KeyboardInterrupt):
            raise
        cache = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        torch_cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise ModelError(
            f"cannot load pretrained {name!r} ({type(exc).__name__}: {exc}). Pretrained weights come from the "
            f"network; offline they must already be in the HuggingFace cache ({cache}/hub) or the torch hub "
            f"cache ({torch_cache}). Download them on a connected machine, or use `model: {{path: file.th}}`."
        ) from None
    model = _single(model, name).float().eval()
    check_weights(model, name)
    return model


def model_skeleton(cfg: Any) -> Any:
    """The architecture a config asks for, cheaply, for validation; None when it needs the weights.

    ``random`` and ``demo`` without its trained checkpoint: built on the meta device (no memory, no weights).
    ``demo`` with its checkpoint: the (small) checkpoint is loaded. ``path`` and ``pretrained``: None, because
    their architecture is only known once the weights are read; the runner checks those after loading the
    model, before any trial.

    The skeleton is shared between calls for the same model (building one takes about 0.1 s, and validation
    asks twice per config): read it, never change it.
    """
    if cfg.kind == "random" or (cfg.kind == "demo" and not demo_checkpoint().exists()):
        kw = dict(cfg.random) if cfg.kind == "random" else dict(DEMO_KWARGS)
        return _remembered(("random", repr(sorted(kw.items()))), lambda: _meta_htdemucs(kw))
    if cfg.kind == "demo":
        ckpt = demo_checkpoint()
        stat = ckpt.stat()
        return _remembered(("checkpoint", str(ckpt), stat.st_mtime_ns, stat.st_size), lambda: load_checkpoint(ckpt))
    return None


#: model_skeleton's skeletons by model (random kwargs, or checkpoint path, mtime and size)
_SKELETONS: dict[tuple, Any] = {}


def _remembered(key: tuple, build: Any) -> Any:
    if key not in _SKELETONS:
        if len(_SKELETONS) >= 16:  # a long-lived process validating many models: bounded memory
            _SKELETONS.clear()
        _SKELETONS[key] = build()  # a build that raises stores nothing: the next call raises again
    return _SKELETONS[key]


def _meta_htdemucs(kw: dict[str, Any]) -> Any:
    kw = dict(kw)
    seed = int(kw.pop("seed", 0))
    with torch.device("meta"):
        return random_htdemucs(seed=seed, **kw)


def load_model(cfg: Any) -> LoadedModel:
    """Build the model a config asks for (``cfg`` is a :class:`htx.config.ModelConfig`)."""
    if cfg.kind == "demo":
        ckpt = demo_checkpoint()
        if ckpt.exists():
            model = load_checkpoint(ckpt)
            source = f"demo (trained checkpoint {ckpt.name})"
        else:
            model = random_htdemucs(seed=0, **DEMO_KWARGS)
            source = "demo (random init, seed 0: trained checkpoint not found)"
    elif cfg.kind == "random":
        kw = dict(cfg.random)
        seed = int(kw.pop("seed", 0))
        model = random_htdemucs(seed=seed, **kw)
        source = f"random HTDemucs seed={seed} {kw}"
    elif cfg.kind == "path":
        model = load_checkpoint(cfg.path)
        source = f"checkpoint {cfg.path}"
    elif cfg.kind == "pretrained":
        model = load_pretrained(cfg.pretrained)
        source = f"pretrained {cfg.pretrained}"
    else:  # pragma: no cover - pydantic restricts kind
        raise ModelError(f"unknown model kind {cfg.kind}")
    check_weights(model, source)
    return LoadedModel(model=model.eval(), source=source, hash=model_hash(model))


def save_checkpoint(model: Any, path: str | Path, half: bool = False) -> Path:
    """Save ``model`` in demucs's own `.th` package format (loadable by ``demucs.states.load_model``)."""
    args, kwargs = model._init_args_kwargs
    dtype = torch.half if half else None
    state = {k: p.data.to(device="cpu", dtype=dtype) for k, p in model.state_dict().items()}
    package = {"klass": type(model), "args": args, "kwargs": kwargs, "state": state}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(package, path)
    return path


def save_safetensors(model: Any, path: str | Path) -> Path:
    """Save ``model`` as a demucs ``.safetensors`` export (klass/args/kwargs as JSON metadata)."""
    import json
    from fractions import Fraction

    from safetensors.torch import save_file

    def enc(v: Any) -> Any:
        if isinstance(v, Fraction):
            return {"_type": "fraction", "numerator": v.numerator, "denominator": v.denominator}
        if isinstance(v, dict):
            return {k: enc(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        return v

    args, kwargs = model._init_args_kwargs
    klass = f"{type(model).__module__}.{type(model).__qualname__}"
    meta = {"klass": klass, "args": json.dumps(enc(list(args))), "kwargs": json.dumps(enc(kwargs))}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return path
