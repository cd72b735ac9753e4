"""Benchmark: the embedded model under this lab's protocol and the seed paper's, side by side with the paper.

    .venv/bin/python bench/seed_protocol.py [--fit-seed] [--set variants]

1. Noise on e over the originals of a built-in set (core.analyses.noise.set_originals), shipped pre-fit (fast
   preset, 0.99): this lab's protocol (8 draws per type and alpha, the same directions along alpha) and the seed
   paper's (one draw, fresh directions per alpha, entries fitted to >= 0.9), each counted over the N text positions
   and over N + 1 with e's BOS prediction; mean accuracy and relative prefix per alpha, the spread of the entries'
   own means, beside PAPER_ACCURACY. With --fit-seed the same originals are fitted with the seed-paper preset too
   (batches of 8 stepped until every text's best accuracy reaches 0.9, e scored against BOS) into a scratch cache,
   and swept the same way: the fit's own wall time and steps are recorded.
2. Silhouettes of the set (shipped pre-fit): this lab's selection (every text at >= 0.9) and the authors' (a group
   only when every variant in it reached 0.9), for e, m, e‖m and the teacher, on all texts and on original +
   semantic.

Writes bench/results/seed_protocol.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from core.analyses import embeddings as emb  # noqa: E402
from core.analyses import noise  # noqa: E402
from core.engine.cache import SHIPPED_ROOT, ProtoCache  # noqa: E402
from core.engine.fit import fit_and_cache, preset  # noqa: E402
from core.engine.models import load_model  # noqa: E402
from core.engine.sets import set_entries  # noqa: E402
from core.texts.textsets import builtin_set  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def noise_rows(lm, entries, cache) -> dict:
    """Per protocol x count: mean accuracy / relative prefix per alpha, and the spread of the entries' means."""
    out = {}
    for protocol in noise.NOISE_PROTOCOLS:
        chosen = noise.authors_entries(entries) if protocol == "authors" else list(entries)
        settings = noise.NoiseSettings(protocol=protocol)
        start = time.perf_counter()
        table = noise.run_noise(lm, chosen, settings, cache=cache)
        seconds = time.perf_counter() - start
        for count in ("text", "bos"):
            counted = noise.counted_table(table, count)
            by_alpha = noise.summarize_noise(counted, by=("alpha",))
            per_entry = noise.entry_curves(counted, chosen)
            spread = per_entry.groupby("alpha")["accuracy_mean"].agg(["min", "max"])
            out[f"{protocol}/{count}"] = {
                "entries": len(chosen), "rows": len(counted), "seconds": round(seconds, 1),
                "accuracy": {f"{a:g}": round(v, 3) for a, v in zip(by_alpha["alpha"], by_alpha["accuracy_mean"])},
                "prefix_rel": {f"{a:g}": round(v, 3) for a, v in zip(by_alpha["alpha"],
                                                                      by_alpha["correct_prefix_rel_mean"])},
                "entry_mean_accuracy_min_max": {f"{a:g}": [round(r["min"], 3), round(r["max"], 3)]
                                                for a, r in spread.iterrows()},
                "final_loss_per_entry": [round(float(e.metrics["loss"]), 4) for e in chosen
                                         if e.metrics.get("loss") is not None],
            }
    return out


def silhouettes(lm, set_name: str, cache) -> dict:
    frame = builtin_set(set_name)
    texts = frame["text"].tolist()
    choice = emb.config_choices(lm, set_name, preset("fast"), False)[0]
    entries = set_entries(lm, texts, choice, cache)
    teacher = emb.teacher_embeddings(texts, cache)
    out = {}
    for label, whole in (("lab: every text at >= 0.9", False), ("authors: whole groups at >= 0.9", True)):
        vectors = emb.assemble_set(frame, entries, min_accuracy=0.9, teacher=teacher, whole_groups=whole)
        scores = emb.silhouette_table(vectors)
        out[label] = {
            "texts": vectors.n, "groups": int(vectors.table["group"].nunique()), "below": vectors.n_below,
            "unfitted": vectors.n_unfitted, "dropped_with_group": vectors.n_dropped,
            "silhouette": {f"{r.space} / {r.subset}": None if r.silhouette != r.silhouette else round(r.silhouette, 3)
                           for r in scores.itertuples()},
            "finding": emb.finding_line(scores, lm.name),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="variants")
    parser.add_argument("--fit-seed", action="store_true", help="also fit the originals with the seed-paper preset")
    args = parser.parse_args()
    lm = load_model()
    scratch = Path(tempfile.mkdtemp(prefix="seed-protocol-"))
    cache = ProtoCache(scratch, shipped=SHIPPED_ROOT)
    shipped = noise.set_originals(lm, args.set, preset("fast"), cache)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "model": lm.name, "set": args.set, "bos_token": lm.tokenizer.bos_token,
        "paper": {"accuracy": {f"{a:g}": v for a, v in noise.PAPER_ACCURACY.items()},
                  "prefix_rel": {f"{a:g}": v for a, v in noise.PAPER_PREFIX_REL.items()},
                  "setting": noise.PAPER_SETTING},
        "noise_shipped_fast_preset": {"fitted_with": "fast preset, threshold 0.99 (shipped pre-fit)",
                                      **noise_rows(lm, shipped, cache)},
        "silhouettes": silhouettes(lm, args.set, cache),
    }
    if args.fit_seed:
        texts = [e.text for e in shipped]
        config = preset("seed-paper")
        start = time.perf_counter()
        outcomes = fit_and_cache(lm, texts, config, ProtoCache(scratch / "seed"), batch_size=8)
        wall = time.perf_counter() - start
        fitted = [o.entry for o in outcomes if o is not None]
        result["seed_fit"] = {
            "texts": len(texts), "wall_s": round(wall, 1), "converged": sum(bool(e.metrics["converged"]) for e in fitted),
            "steps": [int(e.metrics["steps"]) for e in fitted],
            "accuracy_text_count": [round(float(e.metrics["accuracy"]), 3) for e in fitted],
            "fit_accuracy_bos_count": [round(float(e.metrics.get("fit_accuracy", float("nan"))), 3) for e in fitted],
            "bos_correct": [e.metrics.get("bos_correct") for e in fitted],
        }
        result["noise_seed_preset"] = {"fitted_with": "seed-paper preset (batches of 8 to 0.9, BOS scored)",
                                       **noise_rows(lm, fitted, cache)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "seed_protocol.json").write_text(json.dumps(result, indent=1) + "\n")
    alphas = list(result["paper"]["accuracy"])
    print(f"{'mean token accuracy, alpha':44}" + "".join(f"{a:>7}" for a in alphas))
    print(f"{'seed paper (' + noise.PAPER_MODEL + ', N + 1)':44}" + "".join(f"{v:7.2f}" for v in noise.PAPER_ACCURACY.values()))
    for block in ("noise_shipped_fast_preset", "noise_seed_preset"):
        for key, row in result.get(block, {}).items():
            if isinstance(row, dict):
                label = f"{block.split('_')[2]} fit, {key} ({row['entries']} entries)"
                print(f"{label:44}" + "".join(f"{row['accuracy'].get(a, float('nan')):7.2f}" for a in alphas))
    for label, row in result["silhouettes"].items():
        print(label, row["texts"], "texts", row["groups"], "groups:",
              {k: v for k, v in row["silhouette"].items() if "semantic" in k or "/ all" in k})
    if "seed_fit" in result:
        print("seed fit:", {k: v for k, v in result["seed_fit"].items() if k in ("texts", "wall_s", "converged")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
