"""core.engine.teacher: anchor and relational losses on random tensors, plus one test with the embedded teacher."""

from __future__ import annotations

import math

import pytest
import torch

from core.engine.teacher import (
    DEFAULT_TEACHER,
    RegularizerConfig,
    TeacherLoadError,
    anchor_loss,
    anchor_projection,
    embed_texts,
    load_teacher,
    regularizer_loss,
    relational_loss,
)

D_TEACHER, HIDDEN, BATCH = 24, 40, 6


def _teacher_batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, D_TEACHER, generator=torch.Generator().manual_seed(seed))


def _orthogonal(size: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=torch.Generator().manual_seed(seed)))
    return q


def test_anchor_projection_is_fixed_and_scaled() -> None:
    projection = anchor_projection(384, 576, seed=0)
    assert projection.shape == (384, 576) and projection.dtype == torch.float32
    assert torch.equal(projection, anchor_projection(384, 576, seed=0))
    assert not torch.equal(projection, anchor_projection(384, 576, seed=1))
    assert projection.std().item() == pytest.approx(1 / math.sqrt(384), rel=0.02)


def test_anchor_loss_zero_when_e_parallel_to_projected_teacher() -> None:
    teacher = _teacher_batch()
    projection = anchor_projection(D_TEACHER, HIDDEN)
    scales = torch.tensor([0.01, 0.5, 1.0, 3.0, 10.0, 100.0])[:, None]
    e = (teacher @ projection) * scales
    assert anchor_loss(e, teacher, projection).item() == pytest.approx(0.0, abs=1e-6)
    assert anchor_loss(-e, teacher, projection).item() == pytest.approx(2.0, abs=1e-6)
    assert 0.5 < anchor_loss(torch.randn(BATCH, HIDDEN), teacher, projection).item() < 1.5


def test_relational_loss_zero_for_rotated_padded_teacher_and_scale_invariant() -> None:
    teacher = _teacher_batch()
    padded = torch.cat([teacher, torch.zeros(BATCH, HIDDEN - D_TEACHER)], dim=1)
    e = padded @ _orthogonal(HIDDEN)
    assert relational_loss(e, teacher).item() == pytest.approx(0.0, abs=1e-10)

    unrelated = torch.randn(BATCH, HIDDEN, generator=torch.Generator().manual_seed(9))
    loss = relational_loss(unrelated, teacher)
    assert loss.item() > 1e-3
    row_scales = torch.tensor([0.1, 1.0, 2.0, 5.0, 50.0, 0.3])[:, None]
    torch.testing.assert_close(relational_loss(unrelated * row_scales, teacher), loss)
    torch.testing.assert_close(relational_loss(unrelated * 7.0, teacher), loss)


def test_relational_loss_single_item_batch_is_zero() -> None:
    assert relational_loss(torch.randn(1, HIDDEN), torch.randn(1, D_TEACHER)).item() == 0.0


@pytest.mark.parametrize("kind", ["anchor", "relational"])
def test_gradients_flow_to_e(kind: str) -> None:
    e = torch.randn(BATCH, HIDDEN, requires_grad=True)
    config = RegularizerConfig(kind=kind, weight=0.1)
    loss = regularizer_loss(config, e, _teacher_batch())
    loss.backward()
    assert e.grad is not None and torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0


def test_regularizer_loss_dispatch_and_weight() -> None:
    e, teacher = torch.randn(BATCH, HIDDEN), _teacher_batch()
    assert regularizer_loss(RegularizerConfig(kind="none"), e, None).item() == 0.0
    anchor = RegularizerConfig(kind="anchor", weight=0.25, projection_seed=3)
    expected = 0.25 * anchor_loss(e, teacher, anchor_projection(D_TEACHER, HIDDEN, seed=3))
    torch.testing.assert_close(regularizer_loss(anchor, e, teacher), expected)
    relational = RegularizerConfig(kind="relational", weight=2.0)
    torch.testing.assert_close(regularizer_loss(relational, e, teacher), 2.0 * relational_loss(e, teacher))
    with pytest.raises(ValueError, match="teacher"):
        regularizer_loss(relational, e, None)


def test_regularizer_config_validation_and_cache_dict() -> None:
    with pytest.raises(ValueError, match="anchor"):
        RegularizerConfig(kind="contrastive")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        RegularizerConfig(kind="anchor", target="x")  # type: ignore[arg-type]
    # Unused settings must not split the cache.
    assert RegularizerConfig().as_dict() == RegularizerConfig(weight=5.0, projection_seed=9).as_dict()
    assert "projection_seed" not in RegularizerConfig(kind="relational").as_dict()
    anchor = RegularizerConfig(kind="anchor").as_dict()
    assert anchor == {"kind": "anchor", "weight": 0.1, "target": "e", "teacher": DEFAULT_TEACHER, "projection_seed": 0}
    assert RegularizerConfig(kind="anchor", teacher="all-MiniLM-L6-v2").as_dict() == anchor


def test_unknown_teacher_raises_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = "no-such-org/no-such-teacher-model"
    with pytest.raises(TeacherLoadError, match="no-such-teacher-model") as info:
        load_teacher(missing)
    assert "cache" in str(info.value)


def test_embedded_teacher_embeds_paraphrases_closer_than_unrelated_texts() -> None:
    # The only test that loads the real 90 MB model.
    teacher = load_teacher(None)
    assert load_teacher(DEFAULT_TEACHER) is teacher
    texts = [
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The central bank raised interest rates again.",
        "Interest rates were increased by the central bank once more.",
    ]
    embeddings = embed_texts(teacher, texts)
    assert embeddings.shape == (4, 384) and embeddings.dtype == torch.float32
    sims = torch.nn.functional.cosine_similarity(embeddings[:, None], embeddings[None, :], dim=-1)
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[0, 1] > sims[0, 3] + 0.2
    assert sims[2, 3] > sims[2, 0] + 0.2 and sims[2, 3] > sims[2, 1] + 0.2
    assert embed_texts(teacher, []).shape == (0, 384)
