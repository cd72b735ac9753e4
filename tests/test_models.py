"""core.engine.models: the tiny model, device resolution, clear errors."""

import pytest
import torch

from core.engine.models import (
    DEFAULT_MODEL,
    TINY_MODEL,
    ModelLoadError,
    _build_tiny,
    _identity_of_folder,
    load_model,
    resolve_device,
)


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


def _one_line_error(name: str) -> str:
    with pytest.raises(ModelLoadError) as caught:
        load_model(name)
    message = str(caught.value)
    assert "\n" not in message and not message.rstrip().endswith(":"), message  # complete, on one line
    return message


def test_unknown_model_names_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _one_line_error("no-such-org/no-such-model")
    assert "no-such-org/no-such-model" in message and "not a local folder" in message


def test_an_empty_folder_says_it_holds_no_model_files(tmp_path):
    # transformers' own message was cut off at its first line: "...from one of: "
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"x")  # hidden files are no model files
    message = _one_line_error(str(empty))
    assert "contains no model files (config.json" in message and str(empty) in message


def test_a_folder_without_tokenizer_or_weights_says_what_is_missing(tmp_path):
    model, tokenizer, _ = _build_tiny()
    model.save_pretrained(tmp_path / "no-tokenizer")
    assert "no tokenizer files" in _one_line_error(str(tmp_path / "no-tokenizer"))
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text((tmp_path / "no-tokenizer" / "config.json").read_text())
    assert "no weights file" in _one_line_error(str(tmp_path / "config-only"))
    (tmp_path / "weights-only").mkdir()
    (tmp_path / "weights-only" / "model.safetensors").write_bytes(b"x")
    assert "no config.json" in _one_line_error(str(tmp_path / "weights-only"))


def test_a_file_given_as_the_model_is_called_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # it used to be described as "hub unreachable"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a folder")
    message = _one_line_error(str(weights))
    assert "is a file, not a model folder" in message and "hub" not in message.lower()


def _save_tiny(folder, seed: int) -> None:
    model, tokenizer, _ = _build_tiny(seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_folder_identity_changes_with_the_weights(tmp_path):
    # Same config, same shapes and file sizes, different weight values: the identity (part of every cache key)
    # hashed names and sizes only, so fits of one checkpoint showed as cached for the other.
    _save_tiny(tmp_path / "a", seed=0)
    _save_tiny(tmp_path / "b", seed=1)
    _save_tiny(tmp_path / "a-again", seed=0)
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "a").iterdir()}
    assert sizes == {p.name: p.stat().st_size for p in (tmp_path / "b").iterdir()}
    assert _identity_of_folder(tmp_path / "a") != _identity_of_folder(tmp_path / "b")
    assert _identity_of_folder(tmp_path / "a") == _identity_of_folder(tmp_path / "a-again")


def test_a_checkpoint_overwritten_in_place_gets_a_new_identity(tmp_path):
    folder = tmp_path / "checkpoint"
    _save_tiny(folder, seed=0)
    before = load_model(str(folder)).identity
    assert load_model(str(folder)).identity == before  # stable while nothing changes
    _save_tiny(folder, seed=1)  # the same folder, new weights of the same shape
    after = load_model(str(folder)).identity
    assert after != before and after.startswith(f"local:{folder.resolve()}:")


@pytest.mark.embedded
def test_embedded_model_loads_from_the_package(embedded_lm):
    assert embedded_lm.name == DEFAULT_MODEL
    assert embedded_lm.context_limit == 8192 and embedded_lm.hidden_size == 576
    assert embedded_lm.num_layers == 30 and embedded_lm.num_heads == 9
    assert embedded_lm.encode("Hello world") == [19556, 905]


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "~/no-such-model", "models/org/name"])
def test_a_missing_folder_is_called_a_missing_folder(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # not "the hub cannot be reached": no hub id looks like this
    message = _one_line_error(name)
    assert "there is no such folder" in message and "hub" not in message.lower()
