"""Per-layer spectra: the same analysis restricted to each parameter block, reported as a table.

For a block ``B`` of parameters (one layer's weight and bias by default), the diagonal block
``H_BB`` of the curvature matrix is the curvature of the loss as a function of ``B`` alone with
every other parameter frozen. We build one operator per block through a user-supplied
``op_factory(param_names) -> CurvatureOperator`` (e.g.
``lambda names: hesse.HessianOperator(model, loss_fn, data, params=names)``) and report, per block,
``lambda_max`` and ``lambda_min`` (:func:`hesse.eigsh`, ``which="both"``) and the trace (XTrace
with standard error, or exact for small blocks). Cost per block: the products of ``eigsh(k=2)`` plus
``trace_matvecs`` (blocks with ``n <= dense_threshold`` are done densely with ``n`` products).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hesse._progress import message
from hesse._result import Result

from .lanczos import DENSE_THRESHOLD, eigsh
from .summary import definiteness_verdict
from .trace import trace as _trace

__all__ = ["LayerSpectrumRow", "PerLayerSpectrum", "per_layer", "layer_groups"]


@dataclass(repr=False)
class LayerSpectrumRow(Result):
    """One block: its name, parameter names, size and spectral numbers."""

    layer: str
    params: list[str]
    n: int
    lambda_max: float
    lambda_min: float
    trace: float
    trace_stderr: float
    definiteness: str
    converged: bool
    num_matvecs: int


@dataclass(repr=False)
class PerLayerSpectrum(Result):
    """Rows of :class:`LayerSpectrumRow` and a formatted table (``.table`` / ``str(result)``)."""

    rows: list[LayerSpectrumRow]

    @property
    def table(self) -> str:
        width = max([24, *(len(r.layer) for r in self.rows)])
        head = f"{'layer':<{width}} {'n':>8} {'lambda_max':>12} {'lambda_min':>12} {'trace':>12} {'± stderr':>9}  definiteness"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            flag = "" if r.converged else " (not converged)"
            lines.append(f"{r.layer:<{width}} {r.n:>8d} {r.lambda_max:>12.5g} {r.lambda_min:>12.5g} "
                         f"{r.trace:>12.5g} {r.trace_stderr:>9.2g}  {r.definiteness}{flag}")
        return "\n".join(lines)

    def as_dicts(self) -> list[dict]:
        return [dict(r.__dict__) for r in self.rows]

    def __str__(self) -> str:
        return self.table

    def __repr__(self) -> str:
        return f"PerLayerSpectrum({len(self.rows)} blocks)\n{self.table}"


_BY = ("module", "block_type")

# Block types of transformer parameters, matched on the parameter's path (lower case, with
# dots around it so that ``.q.`` does not match ``.query_key.``). The first match wins, so fused
# projections and attention outputs are listed before the generic MLP names they contain.
_BLOCK_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attn.qkv", (".c_attn.", ".in_proj_weight.", ".in_proj_bias.", ".qkv.", ".qkv_proj.",
                  ".query_key_value.", ".wqkv.")),
    ("attn.q", (".query.", ".q_proj.", ".q.", ".wq.", ".q_lin.")),
    ("attn.k", (".key.", ".k_proj.", ".k.", ".wk.", ".k_lin.")),
    ("attn.v", (".value.", ".v_proj.", ".v.", ".wv.", ".v_lin.")),
    ("attn.out", (".attn.c_proj.", ".attention.output.dense.", ".out_proj.", ".o_proj.",
                  ".attn.out.", ".wo.", ".out_lin.", ".attention.dense.")),
    ("mlp.in", (".c_fc.", ".intermediate.dense.", ".linear1.", ".fc1.", ".up_proj.",
                ".gate_proj.", ".w1.", ".w3.", ".lin1.", ".dense_h_to_4h.")),
    ("mlp.out", (".mlp.c_proj.", ".output.dense.", ".linear2.", ".fc2.", ".down_proj.", ".w2.",
                 ".lin2.", ".dense_4h_to_h.")),
)
_HEAD_PATTERNS = (".lm_head.", ".cls.", ".classifier.", ".score.", ".pooler.", ".qa_outputs.",
                  ".head.")
_POSITION_PATTERNS = (".wpe.", ".position", ".pos_emb", ".positional")


def _is_norm(module: torch.nn.Module) -> bool:
    kind = type(module).__name__.lower()
    return isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or "norm" in kind


def _block_type(name: str, module: torch.nn.Module) -> str:
    """The block type of parameter ``name`` owned by ``module`` (see :func:`layer_groups`)."""
    path = f".{name.lower()}."
    if isinstance(module, torch.nn.Embedding) or "embed" in type(module).__name__.lower():
        if any(t in path for t in _POSITION_PATTERNS):
            return "embed.position"
        if "token_type" in path or "segment" in path:
            return "embed.token_type"
        return "embed.token"
    if _is_norm(module):
        return "layernorm"
    if any(t in path for t in _HEAD_PATTERNS):
        return "head"
    for kind, patterns in _BLOCK_PATTERNS:
        if any(t in path for t in patterns):
            return kind
    return "other"


def _layer_prefix(name: str, modules: dict[str, torch.nn.Module]) -> str:
    """``"h.0"`` for ``transformer.h.0.attn.c_attn.weight``: the ``ModuleList`` entry holding the
    parameter (its last path part and index), or ``""`` outside any repeated block."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if parts[i].isdigit() and isinstance(modules.get(".".join(parts[:i])), torch.nn.ModuleList):
            return f"{parts[i - 1]}.{parts[i]}"
    return ""


def layer_groups(model: torch.nn.Module, by: str = "module", *,
                 pool_layers: bool = False) -> dict[str, list[str]]:
    """Trainable parameter names grouped into blocks, each labelled for a table row.

    ``by="module"`` (the default) groups by the module that owns them, labelled by module path
    followed by its class, so a row of a table says which layer it is: ``"layers.0 (Linear)"``
    for ``layers.0.weight`` and ``layers.0.bias``; in an ``nn.Sequential``, whose paths are bare
    indices, ``"0 (Linear)"``, ``"2 (Linear)"``. Parameters registered on ``model`` itself keep
    their own name.

    ``by="block_type"`` groups the parameters of a transformer (GPT-2, BERT, LLaMA-style Hugging
    Face models, ``torch.nn.TransformerEncoder``) by what they do: ``embed.token``,
    ``embed.position``, ``embed.token_type``, ``attn.q``, ``attn.k``, ``attn.v``, ``attn.qkv``,
    ``attn.out``, ``mlp.in``, ``mlp.out``, ``layernorm``, ``head`` (and ``other`` for anything
    unrecognised), each per repeated layer: ``"h.0 attn.qkv"``, ``"layer.1 mlp.out"``;
    parameters outside the repeated layers carry the type alone (``"embed.token"``,
    ``"layernorm"`` for GPT-2's final ``ln_f``). ``pool_layers=True`` merges the layers, giving one
    group per type (``"attn.qkv"`` holds that projection of every layer), the blocks whose spectra
    Zhang et al. (2024), "Why Transformers Need Adam: A Hessian Perspective", compare.

    Fused projections stay whole: GPT-2's ``c_attn`` and ``nn.MultiheadAttention``'s
    ``in_proj_weight`` hold query, key and value in one tensor, and the curvature operators
    restrict to whole parameters (``params=names``), so that tensor is one ``attn.qkv`` block
    rather than three column slices. Models with separate projections (BERT's ``query``/``key``/
    ``value``, LLaMA's ``q_proj``...) get separate ``attn.q``/``attn.k``/``attn.v`` blocks. Tied
    weights appear once, under their first name (GPT-2's ``lm_head`` is ``wte``: ``embed.token``).

    Parameters
    ----------
    model
        the ``torch.nn.Module`` whose trainable parameters are grouped.
    by
        ``"module"`` (default) or ``"block_type"``, as above.
    pool_layers
        with ``by="block_type"``: one group per type over all layers (default False).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if by not in _BY:
        raise ValueError(f"by must be one of {_BY}; got {by!r}.")
    if pool_layers and by != "block_type":
        raise ValueError("pool_layers=True merges the layers of one block type; it needs by='block_type'.")
    modules = dict(model.named_modules())
    groups: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        path = name.rsplit(".", 1)[0] if "." in name else ""
        if by == "module":
            label = f"{path} ({type(modules[path]).__name__})" if path else name
        else:
            kind = _block_type(name, modules[path])
            prefix = "" if pool_layers else _layer_prefix(name, modules)
            label = f"{prefix} {kind}" if prefix else kind
        groups.setdefault(label, []).append(name)
    if not groups:
        raise ValueError("model has no trainable parameters (requires_grad=True).")
    return groups


def per_layer(op_factory: Callable, groups: dict[str, list[str]], *, tol: float = 1e-6,
              trace_matvecs: int = 60, definiteness_rtol: float = 1e-6, seed: int = 0,
              dense_threshold: int = DENSE_THRESHOLD, progress: bool = False) -> PerLayerSpectrum:
    """Spectral numbers of each parameter block (see module docs).

    ``groups`` maps a block's label to its parameter names (e.g. :func:`layer_groups(model)`).
    """
    if not callable(op_factory):
        raise TypeError(
            "op_factory must be a callable names -> operator, e.g. "
            "lambda names: hesse.HessianOperator(model, loss_fn, data, params=names); "
            f"got {type(op_factory).__name__}.")
    if not isinstance(groups, dict) or not groups:
        raise ValueError("groups must be a non-empty dict {label: [parameter names]}, e.g. layer_groups(model).")
    rows = []
    for i, (label, names) in enumerate(groups.items()):
        message(f"per_layer [{i + 1}/{len(groups)}] {label}", progress)
        op = op_factory(list(names))
        start = op.num_matvecs
        n = op.shape[0]
        if n <= dense_threshold:
            lam = torch.linalg.eigvalsh(op.to_dense().to(torch.float64))
            lmax, lmin, tr, err, ok = float(lam[-1]), float(lam[0]), float(lam.sum()), 0.0, True
        else:
            ext = eigsh(op, k=2, which="both", tol=tol, seed=seed, dense_threshold=0, return_vectors=False)
            lmax, lmin, ok = float(ext.values.max()), float(ext.values.min()), ext.all_converged
            est = _trace(op, "xtrace", trace_matvecs, seed=seed)
            tr, err = est.value, est.stderr
        t = definiteness_rtol * max(abs(lmax), abs(lmin))
        rows.append(LayerSpectrumRow(label, list(names), n, lmax, lmin, tr, err,
                                     definiteness_verdict(lmin, lmax, t), ok, op.num_matvecs - start))
    return PerLayerSpectrum(rows)
