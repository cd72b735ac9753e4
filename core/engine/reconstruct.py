"""One forward pass from proto-tokens (e, m) to a text, and the metrics of the papers.

Layouts (docs/science.md, A.layouts):

* ``"e+m*N"`` (default): inputs ``[e, m, ..., m]`` of length N+1; e's own output is unscored and the
  k-th copy of m (position k, 1-based) predicts token k-1 (0-based). Scored positions: ``1 .. N``.
* ``"e+m*(N-1)"``: inputs ``[e, m, ..., m]`` of length N; e's output predicts the first token.
  Scored positions: ``0 .. N-1``.

The first paper's layout ablation adds three arrangements (``ABLATION_LAYOUTS``; docs/science.md, A.ablation), each
of length N with position k predicting token k: ``"e*N"`` (``[e] x N``), ``"e*N/2+m*N/2"`` (``[e] x ceil(N/2)``
then ``[m] x floor(N/2)``) and ``"(e,m)*N/2"`` (``[e, m]`` repeated, cut at N). e is position 0 in every layout.

Two counts of accuracy and correct prefix (``COUNTS``): over the N text positions (this lab's, the default), or, as
the seed paper's code counts them, over N + 1 positions with e's own output scored against the tokenizer's BOS
token (layout ``"e+m*N"`` only, where e's output is otherwise unscored; ``counted``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from core.engine.models import LoadedModel
from core.engine.shapes import checked

LAYOUTS = ("e+m*N", "e+m*(N-1)")
ABLATION_LAYOUTS = ("e*N", "e*N/2+m*N/2", "(e,m)*N/2")
# The five arrangements of the first paper's ablation, in its order, with its accuracies at N = 256 on Llama-3.2-1B
# (docs/science.md, A.ablation; its labels read literally, which reverses Table 1 for the last two).
PAPER_LAYOUT_ORDER = ("e*N", "e*N/2+m*N/2", "(e,m)*N/2", "e+m*N", "e+m*(N-1)")
PAPER_LAYOUT_ACCURACY = {"e*N": 0.01, "e*N/2+m*N/2": 0.01, "(e,m)*N/2": 0.17, "e+m*N": 0.97, "e+m*(N-1)": 0.99}
PAPER_LAYOUT_NAMES = {"e*N": "[e] x N", "e*N/2+m*N/2": "[e] x N/2, [m] x N/2", "(e,m)*N/2": "[e, m] x N/2",
                      "e+m*N": "[e] [m] x N", "e+m*(N-1)": "[e] [m] x (N-1)"}
# How accuracy and the correct prefix are counted (see the module's docstring and counted()).
COUNTS = ("text", "bos")
COUNT_LABELS = {"text": "N text positions (this lab)",
                "bos": "N + 1, e's BOS prediction included (the seed paper's code)"}


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS + ABLATION_LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; use one of {', '.join(LAYOUTS + ABLATION_LAYOUTS)}.")
    return layout


def e_positions(n_tokens: int, layout: str) -> list[bool]:
    """Which input positions of an n_tokens text hold e (the others hold m): sequence_length(n_tokens, layout) flags."""
    seq = sequence_length(n_tokens, layout)
    if layout == "e*N":
        return [True] * seq
    if layout == "e*N/2+m*N/2":
        return [i < (seq + 1) // 2 for i in range(seq)]
    if layout == "(e,m)*N/2":
        return [i % 2 == 0 for i in range(seq)]
    return [i == 0 for i in range(seq)]


def first_scored_position(layout: str) -> int:
    """Index of the input position whose output predicts the first token."""
    return 1 if check_layout(layout) == "e+m*N" else 0


def bos_target(lm: LoadedModel, layout: str) -> int | None:
    """The token e's own output is scored against in the seed paper's count: the tokenizer's BOS id, or None where
    there is no such position (layout e+m*(N-1): e's output predicts the first token) or no BOS token."""
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    return int(bos) if bos is not None and check_layout(layout) == "e+m*N" else None


def sequence_length(n_tokens: int, layout: str) -> int:
    """Length of the proto-token input sequence for an ``n_tokens`` text."""
    return n_tokens + first_scored_position(layout)


@checked
def build_inputs(
    e: Float[Tensor, "batch hidden"], m: Float[Tensor, "batch hidden"], lengths: list[int], layout: str
) -> tuple[Float[Tensor, "batch seq hidden"], Int[Tensor, "batch seq"]]:
    """Padded proto-token inputs for a batch of texts of different lengths.

    e, m: [batch, hidden] -> inputs_embeds [batch, seq, hidden], attention_mask [batch, seq] (1 = real).
    Padding is on the right, so with the causal mask no real position ever sees a pad.
    """
    batch, hidden = e.shape
    seq = max(sequence_length(n, layout) for n in lengths)
    if layout in LAYOUTS:  # e first, then m: the common case, without a per-row pattern
        inputs = m[:, None, :].expand(batch, seq, hidden).clone()
        inputs[:, 0, :] = e
    else:
        flags = torch.zeros(batch, seq, 1, dtype=torch.bool, device=e.device)
        for row, n in enumerate(lengths):
            flags[row, : sequence_length(n, layout), 0] = torch.tensor(e_positions(n, layout), device=e.device)
        inputs = torch.where(flags, e[:, None, :], m[:, None, :])
    mask = torch.zeros(batch, seq, dtype=torch.long, device=e.device)
    for row, n in enumerate(lengths):
        mask[row, : sequence_length(n, layout)] = 1
    return inputs, mask


@checked
def scored_logits(
    lm: LoadedModel, e: Float[Tensor, "batch hidden"], m: Float[Tensor, "batch hidden"], lengths: list[int],
    layout: str, with_e: bool = False,
) -> Float[Tensor, "batch positions vocab"]:
    """Logits at the scored positions: [batch, max(lengths), vocab], float32.

    Row b, column k is the model's prediction for token k of text b (valid for k < lengths[b]).
    with_e (layout e+m*N only): e's own output first, [batch, 1 + max(lengths), vocab]; column 0 is what the seed
    paper's code scores against BOS (bos_target), column k + 1 token k.
    Gradients flow to e and m when they require grad.
    """
    inputs, mask = build_inputs(e, m, lengths, layout)
    out = lm.model(inputs_embeds=inputs.to(lm.device, lm.dtype), attention_mask=mask.to(lm.device))
    start = first_scored_position(layout)
    if with_e and start != 1:
        raise ValueError(f"In layout {layout} e's output already predicts the first token: there is no BOS position.")
    return out.logits[:, start - int(with_e) : start + max(lengths)].float()


@checked
@torch.no_grad()
def predict_tokens(lm: LoadedModel, e: Float[Tensor, "*batch hidden"], m: Float[Tensor, "*batch hidden"], n_tokens: int,
                   layout: str) -> Int[Tensor, "rows n_tokens"]:
    """Argmax tokens from one forward pass for a batch of proto-token pairs of one text length.

    e, m: [batch, hidden] (or [hidden] for one pair) -> token ids [batch, n_tokens] on the CPU.
    """
    return predict_with_e(lm, e, m, n_tokens, layout, with_e=False)


@checked
@torch.no_grad()
def predict_with_e(lm: LoadedModel, e: Float[Tensor, "*batch hidden"], m: Float[Tensor, "*batch hidden"],
                   n_tokens: int, layout: str, with_e: bool = True) -> Int[Tensor, "rows positions"]:
    """predict_tokens with e's own prediction first when with_e (layout e+m*N): [rows, 1 + n_tokens]."""
    e2, m2 = (e[None], m[None]) if e.dim() == 1 else (e, m)
    logits = scored_logits(lm, e2.to(lm.device), m2.to(lm.device), [n_tokens] * e2.shape[0], layout, with_e)
    return logits.argmax(-1).cpu()


@dataclass
class TokenMetrics:
    accuracy: float  # share of positions whose argmax equals the target
    c_tokens: int  # number of such positions (docs/science.md, A.metrics)
    correct_prefix: int  # length of the leading run of correct tokens
    correct_prefix_rel: float  # correct_prefix / n_tokens
    n_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


@checked
def token_metrics(predicted: Int[Tensor, "n_tokens"] | list[int], target: Int[Tensor, "n_tokens"] | list[int]
                  ) -> TokenMetrics:
    """Metrics for one text: predicted and target are [n_tokens] token ids."""
    pred = torch.as_tensor(predicted).flatten().cpu()
    tgt = torch.as_tensor(target).flatten().cpu()
    if pred.shape != tgt.shape:
        raise ValueError(f"predicted has {pred.numel()} tokens, target {tgt.numel()}")
    correct = pred == tgt
    n = int(tgt.numel())
    wrong = (~correct).nonzero()
    prefix = int(wrong[0, 0]) if wrong.numel() else n
    c_tokens = int(correct.sum())
    return TokenMetrics(
        accuracy=c_tokens / n if n else 0.0, c_tokens=c_tokens, correct_prefix=prefix,
        correct_prefix_rel=prefix / n if n else 0.0, n_tokens=n,
    )


def counted(metrics: TokenMetrics, bos_correct: bool | None, count: str = "text") -> TokenMetrics:
    """The metrics in one of COUNTS: "text" as they are (N positions); "bos" over N + 1 positions with e's BOS
    prediction first, as the seed paper's code counts them (its prefix is 0 when e misses BOS). Where there is no
    BOS position (bos_correct None: no BOS token, or layout e+m*(N-1)) both counts are the N positions."""
    if count not in COUNTS:
        raise ValueError(f"Unknown count {count!r}; use one of {', '.join(COUNTS)}.")
    if count == "text" or bos_correct is None:
        return metrics
    n, c_tokens = metrics.n_tokens + 1, metrics.c_tokens + int(bool(bos_correct))
    prefix = 1 + metrics.correct_prefix if bos_correct else 0
    return TokenMetrics(accuracy=c_tokens / n, c_tokens=c_tokens, correct_prefix=prefix, correct_prefix_rel=prefix / n,
                        n_tokens=n)


@dataclass(frozen=True)
class StoredCount:
    """An entry's token accuracy from its stored metrics in one of COUNTS (stored_count). count: the count it is in,
    "text" where "bos" was asked but e's BOS prediction is not recorded (no BOS position, or an entry fitted before
    the lab recorded it: ``python -m core metrics`` records it)."""

    accuracy: float
    c_tokens: int
    n_positions: int
    count: str


def stored_count(metrics: Mapping[str, Any], n_tokens: int, count: str = "text") -> StoredCount:
    """An entry's accuracy and C_tokens in one of COUNTS from its metrics (metrics["accuracy"]: the N text positions;
    metrics["bos_correct"]: e's own output against BOS, core.engine.fit.entry_from_result), without a forward pass."""
    if count not in COUNTS:
        raise ValueError(f"Unknown count {count!r}; use one of {', '.join(COUNTS)}.")
    accuracy = float(metrics.get("accuracy") or 0.0)
    c_tokens = int(round(accuracy * n_tokens))
    bos = metrics.get("bos_correct")
    if count == "text" or not isinstance(bos, bool):
        return StoredCount(accuracy, c_tokens, n_tokens, "text")
    c_tokens += int(bos)
    return StoredCount(c_tokens / (n_tokens + 1), c_tokens, n_tokens + 1, "bos")


def count_note(count: str, n_uncounted: int = 0) -> str:
    """One sentence for a caption (starting with a space; empty for the "text" count) saying how accuracy is counted,
    and how many entries could not be counted so (stored_count fell back to their N positions)."""
    if count == "text":
        return ""
    note = f" Accuracy over {COUNT_LABELS[count]}."
    if n_uncounted:
        one = n_uncounted == 1
        note += (f" {n_uncounted:,} {'entry' if one else 'entries'} without e's BOS prediction recorded "
                 f"{'counts' if one else 'count'} N positions (no BOS token or position, or fitted before the lab "
                 "recorded it: `python -m core metrics` records it).")
    return note


@dataclass
class Reconstruction:
    token_ids: list[int]  # [n_tokens] argmax of one forward pass
    text: str
    metrics: TokenMetrics  # over the N text positions
    bos_correct: bool | None = None  # whether e's own output is the BOS token (None: no BOS position; bos_target)

    def counted(self, count: str = "text") -> TokenMetrics:
        """The metrics in one of COUNTS (counted)."""
        return counted(self.metrics, self.bos_correct, count)


@checked
def reconstruct(lm: LoadedModel, e: Float[Tensor, "hidden"], m: Float[Tensor, "hidden"], target_ids: list[int],
                layout: str) -> Reconstruction:
    """Rebuild a text in one forward pass from e, m: [hidden] and compare with its target tokens (and e's own output
    with BOS, where there is a BOS position: bos_target)."""
    bos = bos_target(lm, layout)
    pred = predict_with_e(lm, e, m, len(target_ids), layout, with_e=bos is not None)[0].tolist()
    bos_correct = None
    if bos is not None:
        bos_correct, pred = pred[0] == bos, pred[1:]
    return Reconstruction(token_ids=pred, text=lm.decode(pred), metrics=token_metrics(pred, target_ids),
                          bos_correct=bos_correct)


@torch.no_grad()
def information_content(lm: LoadedModel, token_ids: list[int]) -> float:
    """H_LM in nats: the text's own autoregressive cross-entropy under the same frozen model, summed over its tokens
    (sum of -log p(t_i | t_<i), ordinary token inputs), the measure the capacity papers plot against. The first token is
    conditioned on the tokenizer's BOS token where it has one; without a BOS it has no context and is left out."""
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    ids = ([int(bos)] if bos is not None else []) + [int(t) for t in token_ids]
    if len(ids) < 2:
        return 0.0
    x = torch.tensor([ids], device=lm.device)
    logits = lm.model(input_ids=x).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
