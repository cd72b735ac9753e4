"""Attention to the e-token (docs/science.md, B.3), and to the first token of the plain text as a baseline.

One eager forward pass on an entry's proto-token inputs (``core.engine.reconstruct.build_inputs``, the entry's
layout) with ``output_attentions=True`` gives weights ``[layer, head, query, key]``; the slice at key 0 is the
attention every query pays to e: ``[layer, head, query]``. Eager attention is the only kernel that returns
weights (sdpa returns an empty tuple), so the pass runs inside ``LoadedModel.eager_attention()``.

Baseline. The same text fed as ordinary tokens (``input_ids`` = the entry's token ids, no BOS added, as in
fitting), teacher forced; its attention to its own first token, ``[layer, head, N]``. Ordinary first tokens
are attention sinks, so "a lot of attention on e" only means something next to this number.

Alignment. Proto and baseline queries sit at different positions, so both are put on one axis of N columns,
column k = "the query whose output predicts token k" (labelled ``"k:token_k"``):

* proto: query position ``first_scored_position(layout) + k``. Under the default layout "e+m*N" this drops
  query 0 (e itself, unscored); under "e+m*(N-1)" column 0 is e itself.
* baseline: query position ``k - 1`` (the token before token k). Column 0 has no baseline query: NaN.

A query that sees only key 0 (position 0 of either sequence) puts weight 1 on it by the causal mask alone.
Such cells are flagged ``trivial`` and left out of means over positions, so they do not dilute or dominate.

Only ``[layer, head, query]`` slices are cached (kind ``"attention"``); the full ``[layer, head, T, T]`` array
is not kept. :func:`head_map` recomputes one head on demand and caches the ``[head, T, T]`` of its layer
(kind ``"attention-layer"``), so switching heads within a layer is free.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Union

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Float32, Shaped
from torch import Tensor

from core.engine.cache import CacheEntry, ProtoCache, cache_key
from core.engine.models import LoadedModel
from core.engine.reconstruct import build_inputs, check_layout, first_scored_position, sequence_length
from core.engine.shapes import checked

ANALYSIS_KIND = "attention"
LAYER_KIND = "attention-layer"
# Bump when what is computed or stored changes, so old cached analyses are recomputed.
ANALYSIS_VERSION = "attention-v1"

View = Literal["proto", "baseline", "difference"]
VIEWS: tuple[str, ...] = ("proto", "baseline", "difference")
Source = Literal["proto", "baseline"]
SOURCES: tuple[str, ...] = ("proto", "baseline")
HeadAggregate = Literal["mean", "max"]
HEAD_AGGREGATES: tuple[str, ...] = ("mean", "max")


class AttentionUnavailable(RuntimeError):
    """The model returned no attention weights (a kernel without them, or an architecture that hides them)."""


@checked
@dataclass(frozen=True)
class ProtoInputs:
    """What one proto-token forward pass needs: e, m [hidden] and the text length in tokens."""

    e: Float[Tensor, "hidden"]
    m: Float[Tensor, "hidden"]
    n_tokens: int
    layout: str = "e+m*N"

    @classmethod
    def from_entry(cls, entry: CacheEntry) -> "ProtoInputs":
        return cls(e=entry.e, m=entry.m, n_tokens=entry.n_tokens, layout=entry.layout)


ProtoSource = Union[CacheEntry, ProtoInputs, tuple]


def _as_proto_inputs(source: ProtoSource) -> ProtoInputs:
    if isinstance(source, ProtoInputs):
        inputs = source
    elif isinstance(source, CacheEntry):
        inputs = ProtoInputs.from_entry(source)
    elif isinstance(source, tuple) and len(source) == 4:
        inputs = ProtoInputs(*source)
    else:
        raise TypeError("Expected a CacheEntry, ProtoInputs or a tuple (e, m, n_tokens, layout).")
    check_layout(inputs.layout)
    if inputs.n_tokens < 1:
        raise ValueError("The text has no tokens.")
    return inputs


def _check_width(lm: LoadedModel, vector: torch.Tensor) -> None:
    if vector.shape[-1] != lm.hidden_size:
        raise ValueError(f"The proto-tokens have width {vector.shape[-1]} but {lm.name} has hidden size "
                         f"{lm.hidden_size}: they were fitted on another model.")


# ---- forward passes ------------------------------------------------------------------------------

def _eager_attentions(lm: LoadedModel, **forward_inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-layer attention weights of one eager forward pass: ``num_layers`` tensors [1, head, query, key]."""
    with torch.no_grad(), lm.eager_attention() as model:
        out = model(**forward_inputs, output_attentions=True, use_cache=False)
    attentions = getattr(out, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise AttentionUnavailable(
            f"{lm.name} returned no attention weights even with eager attention and output_attentions=True; "
            "this model's attention implementation does not expose them.")
    if len(attentions) != lm.num_layers or attentions[0].dim() != 4:
        raise AttentionUnavailable(
            f"{lm.name} returned {len(attentions)} attention tensors of shape {tuple(attentions[0].shape)}; "
            f"expected {lm.num_layers} of shape [batch, head, query, key].")
    return tuple(attentions)


def _proto_forward_inputs(lm: LoadedModel, inputs: ProtoInputs) -> dict[str, torch.Tensor]:
    _check_width(lm, inputs.e)
    embeds, mask = build_inputs(inputs.e[None].float(), inputs.m[None].float(), [inputs.n_tokens], inputs.layout)
    return {"inputs_embeds": embeds.to(lm.device, lm.dtype), "attention_mask": mask.to(lm.device)}


def _baseline_forward_inputs(lm: LoadedModel, token_ids: list[int]) -> dict[str, torch.Tensor]:
    if not token_ids:
        raise ValueError("The text has no tokens.")
    ids = torch.tensor([list(map(int, token_ids))], device=lm.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _stack(attentions: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per-layer [1, head, query, key] -> [layer, head, query, key] float32 on the CPU."""
    return torch.stack([a[0].float().cpu() for a in attentions])


@checked
def attention_maps(lm: LoadedModel, source: ProtoSource) -> Float32[Tensor, "layer head query key"]:
    """Attention weights on the proto-token inputs: [layer, head, query, key] float32, CPU.

    ``source``: a :class:`CacheEntry`, :class:`ProtoInputs` or ``(e, m, n_tokens, layout)``.
    query and key run over the whole input sequence (``sequence_length(n_tokens, layout)`` positions);
    each row sums to 1 over the keys the causal mask lets it see. Raises :class:`AttentionUnavailable`.
    """
    inputs = _as_proto_inputs(source)
    return _stack(_eager_attentions(lm, **_proto_forward_inputs(lm, inputs)))


@checked
def baseline_maps(lm: LoadedModel, token_ids: list[int]) -> Float32[Tensor, "layer head n_tokens n_tokens"]:
    """Attention weights on the text as ordinary tokens (teacher forced): [layer, head, N, N] float32, CPU."""
    return _stack(_eager_attentions(lm, **_baseline_forward_inputs(lm, token_ids)))


@checked
def attention_to_e(maps: Float[Tensor, "layer head query key"]) -> Float[Tensor, "layer head query"]:
    """[layer, head, query, key] -> [layer, head, query]: the weight every query puts on key 0."""
    return maps[..., 0]


# ---- aggregations (NaN-aware: undefined cells stay out) -----------------------------------------

@checked
def mean_over_heads(values: Float[Tensor, "layer head query"]) -> Float[Tensor, "layer query"]:
    """[layer, head, query] -> [layer, query]."""
    return values.nanmean(dim=1)


@checked
def max_over_heads(values: Float[Tensor, "layer head query"]) -> Float[Tensor, "layer query"]:
    """[layer, head, query] -> [layer, query]; NaN where every head is NaN."""
    filled = torch.nan_to_num(values, nan=-math.inf).amax(dim=1)
    return torch.where(torch.isinf(filled), torch.full_like(filled, math.nan), filled)


@checked
def mean_over_positions(values: Float[Tensor, "layer head query"], exclude: Shaped[Tensor, "query"] | None = None
                        ) -> Float[Tensor, "layer head"]:
    """[layer, head, query] -> [layer, head]: mean over query positions, leaving out NaN and ``exclude`` [query]."""
    if exclude is not None:
        values = values.masked_fill(exclude.to(torch.bool)[None, None, :], math.nan)
    return values.nanmean(dim=-1)


def aligned_query_positions(n_tokens: int, layout: str) -> tuple[list[int], list[int]]:
    """Input positions of the queries that predict token k, k = 0..N-1: (proto [N], baseline [N]).

    -1 where no query predicts token k (the baseline's token 0: nothing precedes it).
    """
    first = first_scored_position(layout)
    return [first + k for k in range(n_tokens)], [k - 1 for k in range(n_tokens)]


# ---- the cached per-entry result ----------------------------------------------------------------

@checked
@dataclass
class AttentionResult:
    """Attention to e and to the baseline's first token for one entry.

    to_e: [layer, head, query] over all ``sequence_length(N, layout)`` proto positions (query 0 = e).
    baseline_to_first: [layer, head, N], query j = the baseline's token j.
    :meth:`view` puts both on the common N-column axis of the module docstring.
    """

    entry_key: str
    model: str  # model identity the weights come from
    layout: str
    token_ids: list[int]
    tokens: list[str]  # [N] each token decoded on its own
    to_e: Float32[Tensor, "layer head query"]
    baseline_to_first: Float32[Tensor, "layer head n_tokens"]
    seconds: float = 0.0  # time the two forward passes took when computed
    from_cache: bool = False
    _aligned: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_layers(self) -> int:
        return int(self.to_e.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.to_e.shape[1])

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def labels(self, show: Callable[[str], str] = str) -> list[str]:
        """[N] column labels ``"k:token_k"``; ``show`` formats the token (e.g. making whitespace visible)."""
        return [f"{k}:{show(t)}" for k, t in enumerate(self.tokens)]

    def query_positions(self, view: View) -> list[int]:
        """[N] the input position of the query shown in column k (-1: none; for "difference", the proto one)."""
        proto, baseline = aligned_query_positions(self.n_tokens, self.layout)
        return baseline if view == "baseline" else proto

    def view(self, view: View) -> torch.Tensor:
        """[layer, head, N] on the common axis: proto to e, baseline to its first token, or proto - baseline."""
        _check_view(view)
        if view not in self._aligned:
            proto_q, baseline_q = aligned_query_positions(self.n_tokens, self.layout)
            if view == "proto":
                values = self.to_e[:, :, proto_q]
            elif view == "baseline":
                values = torch.full((self.num_layers, self.num_heads, self.n_tokens), math.nan)
                have = [k for k, q in enumerate(baseline_q) if q >= 0]
                values[:, :, have] = self.baseline_to_first[:, :, [baseline_q[k] for k in have]]
            else:
                values = self.view("proto") - self.view("baseline")
            self._aligned[view] = values
        return self._aligned[view]

    def trivial(self, view: View) -> torch.Tensor:
        """[N] bool: columns whose query sees only key 0 (weight 1 by the causal mask) in this view."""
        _check_view(view)
        proto_q, baseline_q = aligned_query_positions(self.n_tokens, self.layout)
        proto = torch.tensor([q == 0 for q in proto_q])
        baseline = torch.tensor([q == 0 for q in baseline_q])
        return proto if view == "proto" else baseline if view == "baseline" else proto | baseline

    def over_heads(self, view: View, how: HeadAggregate = "mean") -> torch.Tensor:
        """[layer, N]. For "difference" it is agg(proto) - agg(baseline), which for max is the meaningful one."""
        if how not in HEAD_AGGREGATES:
            raise ValueError(f"Unknown head aggregate {how!r}; use one of {', '.join(HEAD_AGGREGATES)}.")
        aggregate = mean_over_heads if how == "mean" else max_over_heads
        if view == "difference":
            return aggregate(self.view("proto")) - aggregate(self.view("baseline"))
        return aggregate(self.view(view))

    def over_positions(self, view: View) -> torch.Tensor:
        """[layer, head]: mean over the columns defined in this view, trivial columns left out."""
        return mean_over_positions(self.view(view), exclude=self.trivial(view))

    def long_table(self, view: View, show: Callable[[str], str] = str) -> pd.DataFrame:
        """The [layer, head, N] array of a view in long format: layer, head, query, query_position, token, value,
        trivial.

        query is the column k (the query predicting token k), query_position its input position in the
        sequence the view comes from, token the predicted token, trivial whether a query of that column sees
        only key 0. Undefined cells (NaN) are left out.
        """
        values = self.view(view).numpy()
        layers, heads, queries = np.meshgrid(
            np.arange(self.num_layers), np.arange(self.num_heads), np.arange(self.n_tokens), indexing="ij")
        tokens = np.array([show(t) for t in self.tokens], dtype=object)
        positions = np.array(self.query_positions(view))
        table = pd.DataFrame({
            "layer": layers.ravel(), "head": heads.ravel(), "query": queries.ravel(),
            "query_position": positions[queries.ravel()], "token": tokens[queries.ravel()],
            "value": values.ravel(), "trivial": self.trivial(view).numpy()[queries.ravel()],
        })
        return table[table["value"].notna()].reset_index(drop=True)


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}; use one of {', '.join(VIEWS)}.")


def attention_key(lm: LoadedModel, entry: CacheEntry) -> str:
    """Cache key of an entry's attention analysis (the model identity includes the dtype, which changes weights)."""
    return cache_key(ANALYSIS_VERSION, entry.key, lm.identity)


def load_attention(lm: LoadedModel, entry: CacheEntry, cache: ProtoCache) -> AttentionResult | None:
    """The entry's attention analysis when the cache holds a sound one (no forward pass), else None."""
    hit = cache.get_analysis(ANALYSIS_KIND, attention_key(lm, entry), with_tensors=True)
    if hit is None:
        return None
    meta, tensors = hit
    to_e, baseline = tensors.get("to_e"), tensors.get("baseline_to_first")
    layers, heads, n = lm.num_layers, lm.num_heads, entry.n_tokens
    if (to_e is None or baseline is None or tuple(to_e.shape) != (layers, heads, sequence_length(n, entry.layout))
            or tuple(baseline.shape) != (layers, heads, n)):
        return None  # stale or damaged: recompute
    return AttentionResult(
        entry_key=entry.key, model=lm.identity, layout=entry.layout, token_ids=list(entry.token_ids),
        tokens=list(meta.get("tokens") or lm.token_strings(entry.token_ids)), to_e=to_e.float(),
        baseline_to_first=baseline.float(), seconds=float(meta.get("seconds", 0.0)), from_cache=True,
    )


def run_attention(
    lm: LoadedModel, entry: CacheEntry, cache: ProtoCache | None = None, *, refresh: bool = False
) -> AttentionResult:
    """Attention to e and the baseline for one entry: two eager forward passes, or none when cached.

    With a cache, a stored result is returned without running the model, and a new one is stored
    (kind "attention": tensors to_e [layer, head, query] and baseline_to_first [layer, head, N]).
    Raises :class:`AttentionUnavailable` when the model returns no weights.
    """
    if cache is not None and not refresh:
        cached = load_attention(lm, entry, cache)
        if cached is not None:
            return cached
    started = time.perf_counter()
    # Slice key 0 layer by layer, so the stacked [layer, head, T, T] copy is never made.
    proto = _eager_attentions(lm, **_proto_forward_inputs(lm, ProtoInputs.from_entry(entry)))
    to_e = torch.stack([a[0, :, :, 0].float().cpu() for a in proto])
    del proto
    baseline = _eager_attentions(lm, **_baseline_forward_inputs(lm, entry.token_ids))
    to_first = torch.stack([a[0, :, :, 0].float().cpu() for a in baseline])
    del baseline
    result = AttentionResult(
        entry_key=entry.key, model=lm.identity, layout=entry.layout, token_ids=list(entry.token_ids),
        tokens=lm.token_strings(entry.token_ids), to_e=to_e, baseline_to_first=to_first,
        seconds=time.perf_counter() - started,
    )
    if cache is not None:
        cache.keep_analysis(ANALYSIS_KIND, attention_key(lm, entry), {
            "entry": entry.key, "model": lm.identity, "layout": entry.layout, "tokens": result.tokens,
            "seconds": result.seconds, "shape_to_e": list(to_e.shape), "shape_baseline": list(to_first.shape),
        }, {"to_e": to_e, "baseline_to_first": to_first})
    return result


# ---- one head's full map, on demand -------------------------------------------------------------

@checked
@dataclass
class HeadMap:
    """The full attention of one head: weights [query, key] with a label per position."""

    source: str  # "proto" or "baseline"
    layer: int
    head: int
    weights: Float32[Tensor, "query key"]
    labels: list[str]  # [T] one per position, for both axes
    from_cache: bool = False


def sequence_labels(tokens: list[str], layout: str, source: Source, show: Callable[[str], str] = str) -> list[str]:
    """[T] position labels of the input sequence: proto ``"p:m→token"`` (what that position predicts,
    ``"0:e"`` for the unscored e), baseline ``"p:token"`` (the token at that position)."""
    if source == "baseline":
        return [f"{p}:{show(t)}" for p, t in enumerate(tokens)]
    first = first_scored_position(layout)
    labels = ["0:e"] if first == 1 else []
    for k, token in enumerate(tokens):
        p = first + k
        labels.append(f"{p}:{'e' if p == 0 else 'm'}→{show(token)}")
    return labels


def _layer_key(lm: LoadedModel, entry: CacheEntry, source: str, layer: int) -> str:
    return cache_key(ANALYSIS_VERSION, "layer", entry.key, lm.identity, source, int(layer))


def head_map(
    lm: LoadedModel, entry: CacheEntry, layer: int, head: int, source: Source = "proto",
    cache: ProtoCache | None = None, *, compute: bool = True, show: Callable[[str], str] = str,
) -> HeadMap | None:
    """One head's [query, key] map of the proto inputs or of the baseline.

    Recomputes one forward pass and, with a cache, stores that layer's [head, T, T] (kind "attention-layer")
    so the other heads of the layer come back without the model. ``compute=False`` returns only what is
    cached (None otherwise), for pages that compute on request.
    """
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; use one of {', '.join(SOURCES)}.")
    if not (0 <= layer < lm.num_layers and 0 <= head < lm.num_heads):
        raise ValueError(f"Layer {layer} / head {head} out of range ({lm.num_layers} layers x {lm.num_heads} heads).")
    labels = sequence_labels(lm.token_strings(entry.token_ids), entry.layout, source, show)
    key = _layer_key(lm, entry, source, layer)
    if cache is not None:
        hit = cache.get_analysis(LAYER_KIND, key, with_tensors=True)
        weights = hit[1].get("weights") if hit else None
        if weights is not None and tuple(weights.shape) == (lm.num_heads, len(labels), len(labels)):
            return HeadMap(source, layer, head, weights[head].float(), labels, from_cache=True)
    if not compute:
        return None
    if source == "proto":
        attentions = _eager_attentions(lm, **_proto_forward_inputs(lm, ProtoInputs.from_entry(entry)))
    else:
        attentions = _eager_attentions(lm, **_baseline_forward_inputs(lm, entry.token_ids))
    layer_weights = attentions[layer][0].float().cpu()  # [head, query, key]
    del attentions
    if cache is not None:
        cache.keep_analysis(LAYER_KIND, key, {"entry": entry.key, "model": lm.identity, "source": source,
                                             "layer": int(layer)}, {"weights": layer_weights})
    return HeadMap(source, layer, head, layer_weights[head].clone(), labels)
