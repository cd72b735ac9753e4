"""core.models: the tiny model, device resolution, clear errors."""

import pytest
import torch

from core.models import DEFAULT_MODEL, ModelLoadError, TINY_MODEL, load_model, resolve_device


def test_tiny_model_is_frozen_and_described(tiny_lm):
    assert all(not p.requires_grad for p in tiny_lm.model.parameters())
    assert tiny_lm.context_limit == 128 and tiny_lm.hidden_size == 128
    assert tiny_lm.identity.startswith(TINY_MODEL) and tiny_lm.identity.endswith("float32")
    ids = tiny_lm.encode("héllo")
    assert tiny_lm.decode(ids) == "héllo"
    assert tiny_lm.max_text_tokens("e+m*N") == 127 and tiny_lm.max_text_tokens("e+m*(N-1)") == 128


def test_eager_attention_switch_is_temporary(tiny_lm):
    assert tiny_lm.model.config._attn_implementation == "sdpa"
    with tiny_lm.eager_attention() as model:
        assert model.config._attn_implementation == "eager"
        out = model(input_ids=torch.tensor([[1, 2, 3]]), output_attentions=True)
        assert len(out.attentions) == 4
    assert tiny_lm.model.config._attn_implementation == "sdpa"


def test_device_resolution():
    dev, dt = resolve_device("cpu")
    assert dev.type == "cpu" and dt == torch.float32
    assert resolve_device("cpu", "bfloat16")[1] == torch.bfloat16
    with pytest.raises(ModelLoadError, match="dtype"):
        resolve_device("cpu", "int3")
    if not torch.cuda.is_available():
        assert resolve_device("auto")[0].type == "cpu"
        with pytest.raises(ModelLoadError, match="CUDA"):
            resolve_device("cuda")


def test_unknown_model_names_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_model("no-such-org/no-such-model")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="local folder"):
        load_model(str(empty))


@pytest.mark.embedded
def test_embedded_model_loads_from_the_package(embedded_lm):
    assert embedded_lm.name == DEFAULT_MODEL
    assert embedded_lm.context_limit == 8192 and embedded_lm.hidden_size == 576
    assert embedded_lm.num_layers == 30 and embedded_lm.num_heads == 9
    assert embedded_lm.encode("Hello world") == [19556, 905]
