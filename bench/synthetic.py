"""Synthetic cache entries at corpus scale, for the index's tests and bench/index.py: real entry files (JSON and
safetensors, written through ProtoCache.put), random vectors and texts of random words, no fitting."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from core.engine.cache import CacheEntry, ProtoCache, entry_key

WORDS = ("proto", "token", "vector", "river", "mountain", "quiet", "green", "signal", "memory", "garden", "copper",
         "winter", "orbit", "lantern", "harbor", "ember", "meadow", "cipher", "velvet", "thunder", "Zürich", "café")
MODEL = "synthetic-model"


def synthetic_entry(i: int, rng: random.Random, hidden: int = 64, model: str = MODEL) -> CacheEntry:
    """Entry number i: a text of 6-30 random words that starts with its number, random vectors of width hidden."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 30))]
    text = f"text {i}: " + " ".join(words)
    token_ids = [rng.randrange(1, 49_000) for _ in range(len(words) + 3)]
    config = {"preset": "fast", "layout": "e+m*N", "max_steps": 300}
    accuracy = round(rng.random(), 4)
    steps = rng.randint(20, 300)
    generator = torch.Generator().manual_seed(i)
    return CacheEntry(
        key=entry_key(model, token_ids, config), model=model, model_name="synthetic", text=text,
        token_ids=token_ids, config=config,
        metrics={"accuracy": accuracy, "steps": steps, "status": "converged" if accuracy >= 0.99 else "max_steps"},
        history={"step": list(range(0, steps, 10)), "loss": [1.0] * len(range(0, steps, 10)),
                 "accuracy": [accuracy] * len(range(0, steps, 10))},
        e=torch.randn(hidden, generator=generator), m=torch.randn(hidden, generator=generator),
        created=1_700_000_000.0 + i,
    )


def write_synthetic_entries(root: str | Path, n: int, hidden: int = 64, seed: int = 0,
                            model: str = MODEL) -> list[CacheEntry]:
    """n entries written into the cache at root (no shipped fallback); returns them (created = their order)."""
    cache = ProtoCache(root, shipped="")
    rng = random.Random(seed)
    entries = [synthetic_entry(i, rng, hidden, model) for i in range(n)]
    for entry in entries:
        cache.put(entry)
    return entries
