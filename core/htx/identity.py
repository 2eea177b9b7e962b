"""Portable op identity: assignments as (module path, MIL type, ordinal) keys that mean one op on every unit.

Every :class:`~htx.types.OpInfo` carries its PyTorch module path (relative to the demucs model:
``encoder.2.dconv.layers.0``), its Core ML MIL type and its ordinal among the ops of that type in that
module; ``"module|type|ordinal"`` is its portable key. An assignment found on one compute unit is stored
as the portable keys of its FP32 ops (plus the unit's own names) and applied on another unit by
:func:`transfer`.

**Where granularity differs** (one aten ``group_norm`` on the torch unit is ~10 MIL ops on Core ML,
``reduce_mean``, ``sub``, ``mul``, ``sqrt``, ``real_div``, ... in the same GroupNorm module), the rule is:
a target op takes the decision of the source op with the same key; failing that, of the source's ops of
its type in its module (FP32 if any is); failing that, a module's decision covers the ops the other unit
splits it into: the target op is FP32 when an FP32 source op of that module has a type the target module
does not have; where the source module has no such type (every source type is in the target module too, as
a Core ML ``sub`` under a torch module whose ops are ``mul`` and ``add``), it is FP32 when any source op of
that module is. Ops of modules the source never saw stay FP16, and :func:`transfer` reports how many.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from htx.types import Assignment, OpInfo

__all__ = ["KeyCheck", "Transfer", "check_unit_keys", "key_mismatches", "stored_assignment", "transfer", "transfer_scores"]


def stored_assignment(assignment: Assignment, ops: Sequence[OpInfo]) -> dict[str, Any]:
    """What a trial stores: the FP32 compute ops as portable keys and as the unit's own names."""
    fp32 = [op for op in ops if op.compute and op.name not in assignment.fp16]
    return {
        "fp32_keys": [op.key for op in fp32],
        "fp32_names": [op.name for op in fp32],
        "n_compute": sum(op.compute for op in ops),
    }


@dataclass
class Transfer:
    """An assignment applied through portable keys, and how each target op got its decision."""

    assignment: Assignment
    exact: int = 0
    by_type: int = 0
    by_module: int = 0
    unmatched: int = 0  # target compute ops whose module the source never saw (left FP16)
    unused: list[str] = field(default_factory=list)  # source FP32 keys that decided no target op

    def summary(self) -> dict[str, Any]:
        return {"exact": self.exact, "by_type": self.by_type, "by_module": self.by_module,
                "unmatched": self.unmatched, "unused_fp32_keys": len(self.unused)}


def _matches(source_ops: Sequence[OpInfo], target_ops: Sequence[OpInfo]) -> Iterator[tuple[OpInfo, str, list[str]]]:
    """For each target compute op: how it matches (``exact``, ``by_type``, ``by_module``, ``unmatched``) and
    the source keys that decide it, by the rule of the module docstring."""
    src = {op.key: op for op in source_ops if op.compute}
    by_type: dict[tuple[str, str], list[str]] = defaultdict(list)
    by_module: dict[str, list[str]] = defaultdict(list)
    for k, op in src.items():
        by_type[(op.module, op.type)].append(k)
        by_module[op.module].append(k)
    tgt_types: dict[str, set[str]] = defaultdict(set)
    for op in target_ops:
        if op.compute:
            tgt_types[op.module].add(op.type)
    for op in target_ops:
        if not op.compute:
            continue
        k = op.key
        if k in src:
            yield op, "exact", [k]
        elif (op.module, op.type) in by_type:
            yield op, "by_type", by_type[(op.module, op.type)]
        elif op.module in by_module:
            # the source ops this one was split from (types the target module lacks); where there are none,
            # the module's own decision: all its source ops (an FP32 module stays FP32 whatever the split)
            split = [s for s in by_module[op.module] if src[s].type not in tgt_types[op.module]]
            yield op, "by_module", split or by_module[op.module]
        else:
            yield op, "unmatched", []


def transfer(source_ops: Sequence[OpInfo], source_fp32_keys: Iterable[str], target_ops: Sequence[OpInfo]) -> Transfer:
    """Apply an FP32 set given as portable keys of ``source_ops`` to ``target_ops`` (see the module docstring)."""
    fp32_keys = set(source_fp32_keys)
    used: set[str] = set()
    fp16: set[str] = set()
    t = Transfer(Assignment())
    for op, kind, keys in _matches(source_ops, target_ops):
        setattr(t, kind, getattr(t, kind) + 1)
        deciding = [k for k in keys if k in fp32_keys]
        used.update(deciding)
        if not deciding:
            fp16.add(op.name)
    t.assignment = Assignment(frozenset(fp16))
    t.unused = sorted(fp32_keys - used)
    return t


def transfer_scores(
    source_ops: Sequence[OpInfo], scores: dict[str, float], target_ops: Sequence[OpInfo],
) -> dict[str, tuple[str, float]]:
    """Per-op scores (by source op name) carried onto ``target_ops`` by the rule of :func:`transfer`.

    Returns ``{target op name: (source key, score)}``: the source op with the target's key; failing that,
    the highest-scored source op of its type in its module; failing that, the highest-scored source op of
    its module whose type the target module lacks (the ops the other unit splits it into). Target ops of
    modules the source never saw are left out.
    """
    score = {op.key: scores.get(op.name, 0.0) for op in source_ops if op.compute}
    out: dict[str, tuple[str, float]] = {}
    for op, _, keys in _matches(source_ops, target_ops):
        if keys:
            best = max(keys, key=lambda k: score[k])
            out[op.name] = (best, score[best])
    return out


# --------------------------------------------------------------------------------------------------
# the check a unit author runs: do my portable keys match the torch unit's?


@dataclass
class KeyCheck:
    """How a unit's compute-op keys compare with a reference unit's on the same model and surgery.

    ``only_unit`` / ``only_reference``: keys one side has and the other lacks; ``by_rule``: those of
    ``only_unit`` that the transfer rule still maps (the unit splits an op the reference runs whole, as Core ML's
    group norm); ``unmapped``: unit ops whose module the reference never saw (an assignment cannot reach them);
    ``undecided_reference``: reference keys that decide no unit op (folded into constants by a converter, as
    Core ML folds the positional embedding, or missing). :attr:`ok`: no unit op is unmapped; :attr:`exact`:
    the keys are the same on both sides (what a unit of the reference's granularity must reach).
    """

    unit: str
    reference: str
    unit_ops: int
    reference_ops: int
    exact: int  # keys on both sides
    only_unit: list[str]
    only_reference: list[str]
    by_rule: list[str]
    unmapped: list[str]
    undecided_reference: list[str]

    @property
    def ok(self) -> bool:
        return not self.unmapped

    @property
    def identical(self) -> bool:
        return not self.only_unit and not self.only_reference

    def lines(self, limit: int = 40) -> list[str]:
        """A report a person reads: the counts, then every mismatch (up to ``limit`` per list)."""
        out = [f"{self.unit}: {self.unit_ops} compute ops; {self.reference}: {self.reference_ops}; "
               f"{self.exact} keys on both", ]
        for title, items in (("keys only on " + self.unit + ", mapped by the transfer rule", self.by_rule),
                             ("keys only on " + self.unit + ", in modules " + self.reference + " never runs (unreachable)", self.unmapped),
                             ("keys of " + self.reference + " that decide no op of " + self.unit + " (folded by a converter, or missing)",
                              self.undecided_reference)):
            if items:
                out.append(f"{title} ({len(items)}):")
                out += [f"  {k}" for k in items[:limit]]
                if len(items) > limit:
                    out.append(f"  ... and {len(items) - limit} more")
        if self.identical:
            out.append("identical: every key on both sides")
        elif self.ok:
            out.append(f"consistent under the transfer rule: every op of {self.unit} is reached by an assignment "
                       f"(--strict asks for identical keys: a unit of {self.reference}'s granularity must have them)")
        else:
            out.append(f"NOT consistent: {len(self.unmapped)} op(s) of {self.unit} no assignment can reach; fix the "
                       "unit's module paths (htx.api.module_stack, portable_module) or MIL types (ATEN_TO_MIL)")
        return out


def key_mismatches(reference_ops: Sequence[OpInfo], unit_ops: Sequence[OpInfo], unit: str = "unit",
                   reference: str = "torch") -> KeyCheck:
    """Compare ``unit_ops``' portable keys with ``reference_ops``' (compute ops only) and list every mismatch."""
    ref = [op for op in reference_ops if op.compute]
    mine = [op for op in unit_ops if op.compute]
    ref_keys, my_keys = {op.key for op in ref}, {op.key for op in mine}
    how = {op.name: kind for op, kind, _ in _matches(ref, mine)}
    only_unit = [op.key for op in mine if op.key not in ref_keys]
    unmapped = [op.key for op in mine if how.get(op.name) == "unmatched"]
    by_rule = [k for k in only_unit if k not in set(unmapped)]
    deciding: set[str] = set()
    for _, _, keys in _matches(ref, mine):
        deciding.update(keys)
    return KeyCheck(
        unit=unit, reference=reference, unit_ops=len(mine), reference_ops=len(ref), exact=len(ref_keys & my_keys),
        only_unit=only_unit, only_reference=[op.key for op in ref if op.key not in my_keys], by_rule=by_rule,
        unmapped=unmapped, undecided_reference=[op.key for op in ref if op.key not in deciding],
    )


def check_unit_keys(session: Any, unit: Any, reference: Any = "torch", surgery: Any = None) -> KeyCheck:
    """Prepare ``surgery`` (the session config's first by default) on compute entry ``unit`` and on ``reference``
    and compare their portable keys (:func:`key_mismatches`). ``session`` is an :class:`htx.session.Session`."""
    extra = {} if surgery is None else {"surgery": surgery}
    mine = session.prepared(session.spec(compute=unit, **extra))
    ref = session.prepared(session.spec(compute=reference, **extra))
    return key_mismatches(ref.ops, mine.ops, mine.compute.label, ref.compute.label)
