"""``decomposed-attention``: the cross-transformer's attention as explicit matmul -> softmax -> matmul.

``nn.MultiheadAttention`` traces to one fused ``scaled_dot_product_attention`` op on iOS18 targets, which a
precision policy can only keep or drop as a whole, and which older deployment targets and some runtimes do
not have. Here every attention module of the cross-transformer is replaced (on a rewritten view of the
model; the loaded model is untouched and the weights are shared) by the arithmetic of PyTorch's own
``need_weights`` path: in-projections (``linear``), ``q * head_dim**-0.5`` (``mul``), ``q @ k^T``
(``matmul``), ``softmax``, ``attn @ v`` (``matmul``), out-projection (``linear``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from htx.api import InnerModel, ModelError
from htx_plugins.surgery.full_hybrid import FullHybrid, FullHybridInner
from htx_plugins.surgery.module_tree import replace_modules


class DecomposedAttention(nn.Module):
    """Drop-in for an ``nn.MultiheadAttention`` (no masks, no bias_k/v, no dropout at inference), explicit ops."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha  # a child, so the weights (and state_dict keys) stay those of the original module

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise NotImplementedError("decomposed-attention handles unmasked attention only (as in HTDemucs)")
        m = self.mha
        if not m.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, Lq, E = query.shape
        Lk = key.shape[1]
        H = m.num_heads
        D = E // H
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)
        b_q, b_k, b_v = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, w_q, b_q).view(B, Lq, H, D).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(B, Lk, H, D).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(B, Lk, H, D).transpose(1, 2)
        # Scale q before the product (as torch's need_weights path): smaller scores, less FP16 risk.
        scores = torch.matmul(q * math.sqrt(1.0 / D), k.transpose(-2, -1))
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(B, Lq, E)
        out = F.linear(out, m.out_proj.weight, m.out_proj.bias)
        if not m.batch_first:
            out = out.transpose(0, 1)
        return out, None


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention modules of the cross-transformer (``self_attn`` / ``cross_attn`` of each layer)."""
    ct = getattr(model, "crosstransformer", None)
    if ct is None:
        return []
    found = []
    for name, mod in ct.named_modules():
        if name.endswith("self_attn") or name.endswith("cross_attn"):
            found.append((f"crosstransformer.{name}", mod))
    return found


def check_attention(model: nn.Module, surgery: str) -> None:
    """Raise :class:`ModelError` unless every cross-transformer attention is a plain ``nn.MultiheadAttention``."""
    mods = attention_modules(model)
    if not mods:
        raise ModelError(
            f"surgery {surgery!r} rewrites the cross-transformer's attention, but this HTDemucs has none "
            "(t_layers=0); use full-hybrid instead"
        )
    for name, mod in mods:
        if not isinstance(mod, nn.MultiheadAttention):
            raise ModelError(
                f"surgery {surgery!r} handles torch nn.MultiheadAttention only; {name} is {type(mod).__module__}."
                f"{type(mod).__name__} (sparse attention, t_sparse_self_attn/t_sparse_cross_attn=True). "
                "Use a model with dense attention, or full-hybrid"
            )
        if mod.bias_k is not None or mod.add_zero_attn or not mod._qkv_same_embed_dim:
            raise ModelError(f"surgery {surgery!r}: {name} uses bias_k/bias_v, add_zero_attn or kdim/vdim, which it does not handle")


def decompose_attention(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A view of ``model`` whose cross-transformer attention modules are :class:`DecomposedAttention`."""
    targets = {id(mod) for _, mod in attention_modules(model)}
    return replace_modules(model, lambda name, mod: DecomposedAttention(mod) if id(mod) in targets else None)


class DecomposedAttentionSurgery(FullHybrid):
    """Both branches, normalization inside, attention as explicit matmul/softmax/matmul (no fused attention op).

    Lets precision policies address the attention's ``softmax`` and ``matmul`` ops one by one, and converts
    for targets without ``scaled_dot_product_attention``. FP32 parity with ``HTDemucs.forward`` within
    rtol 1e-5, atol 1e-7 (the fused kernel and the explicit ops round differently).

    Example config::

        surgery: [full-hybrid, decomposed-attention]
    """

    name = "decomposed-attention"

    def check(self, model: nn.Module) -> None:
        super().check(model)
        check_attention(model, self.name)

    def build(self, model: nn.Module) -> InnerModel:
        self.check(model)
        view, _ = decompose_attention(model)
        return FullHybridInner(view).eval()

