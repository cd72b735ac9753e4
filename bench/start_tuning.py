"""Issue 18, what did not shorten a fit from the mean start (the fast preset's start), measured on the embedded model:

  sweep VARIANT   8 new texts of 21-26 tokens (TUNE: in no built-in set, none of bench/start.py's texts) fitted
                  together (batch 8, continuous batching) from the mean of the shipped solutions, the fast preset
                  with one change each: lr 0.1 or 0.02 (not 0.05), the start scaled x2, betas (0.9, 0.99); steps
                  to 0.99 per text, appended to bench/results/start_tuning.jsonl. Steps, not seconds, are the
                  figure: rows fitted side by side take as many steps as alone.
  map             a small map from text features to (e, m): ridge regression from the teacher embedding of a
                  cached text to its fitted (e, m), over the shipped solutions; for 24 of them (held out with
                  every cached text within teacher similarity 0.6 of them) the loss of one pass from the
                  predicted start against the mean start's, and the distance of each to the text's own solution.
                  Writes bench/results/start_map.json.
Usage: python bench/start_tuning.py sweep "mean lr.1" | python bench/start_tuning.py map
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.engine.cache import SHIPPED_ROOT, ProtoCache  # noqa: E402
from core.engine.fit import fit_texts, preset  # noqa: E402
from core.engine.models import load_model  # noqa: E402
from core.engine.reconstruct import build_inputs  # noqa: E402
from core.engine.start import candidate_embeddings, candidates, mean_start  # noqa: E402

RESULTS = REPO / "bench" / "results"
TUNE = [
    "The baker on the corner starts at four every morning, and by seven the queue for his rye bread reaches the bus stop.",
    "After the storm the river rose so quickly that the farmers moved their cattle to the church hill before midnight.",
    "My grandfather repaired clocks in a tiny shop, and he claimed he could hear a broken spring from across the room.",
    "The chess club meets on Tuesdays in the library basement, where the heating never works and nobody ever complains.",
    "Two hikers lost on the ridge were found safe at dawn after they lit a small fire that a pilot spotted from the air.",
    "The museum finally returned the carved mask to the village it was taken from, more than a century after the war.",
    "Every spring the swallows come back to the same barn, and the children count them as they arrive one by one.",
    "The new bridge was supposed to open in May, but a strike at the steel mill pushed the ceremony into late autumn.",
]
# variant -> (the fast preset's overrides, scale of the mean start)
VARIANTS = {"mean lr.05": ({}, 1.0), "mean lr.1": ({"lr": 0.1}, 1.0), "mean lr.02": ({"lr": 0.02}, 1.0),
            "mean x2": ({}, 2.0), "mean b.99": ({"betas": (0.9, 0.99)}, 1.0)}
STEP_CAP = 500  # the schedule stays the preset's (2000 steps); a row still fitting here is stopped


def sweep(lm, cache: ProtoCache, name: str) -> dict:
    overrides, scale = VARIANTS[name]
    start = mean_start(cache, lm.identity, lm.hidden_size)
    cancel = threading.Event()

    def stop_at_cap(progress) -> None:
        if progress.step >= STEP_CAP:
            cancel.set()

    started = time.perf_counter()
    results = fit_texts(lm, TUNE, preset("fast", start="", **overrides), batch_size=8,
                        starts=[(start.e * scale, start.m * scale)] * len(TUNE), callback=stop_at_cap, cancel=cancel)
    out = {"name": name, "seconds": round(time.perf_counter() - started, 1), "steps": [r.steps for r in results],
           "converged": [r.converged for r in results], "redraws": [r.redraws for r in results]}
    with open(RESULTS / "start_tuning.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")
    return out


def one_pass_loss(lm, vector: torch.Tensor, ids: list[int]) -> float:
    hidden = lm.hidden_size
    inputs, mask = build_inputs(vector[None, :hidden], vector[None, hidden:], [len(ids)], "e+m*N")
    with torch.no_grad():
        logits = lm.model(inputs_embeds=inputs.to(lm.model.dtype), attention_mask=mask).logits[0, 1:1 + len(ids)]
    return float(F.cross_entropy(logits.float(), torch.tensor(ids)))


def ridge_map(lm, cache: ProtoCache, n_test: int = 24, lambdas: tuple[float, ...] = (0.1, 1.0, 10.0)) -> dict:
    rows = candidates(cache, lm.identity, "e+m*N")
    entries = cache.get_many([r.key for r in rows], lm.hidden_size)
    rows = [r for r in rows if r.key in entries]
    x = F.normalize(candidate_embeddings(cache, lm.identity, rows), dim=1)
    y = torch.stack([torch.cat([entries[r.key].e, entries[r.key].m]) for r in rows])
    similarity = x @ x.T
    test = random.Random(0).sample(range(len(rows)), n_test)
    report = {"n_solutions": len(rows), "n_test": n_test, "solution_norm": round(float(y.norm(dim=1).mean()), 2),
              "mean_start_norm": round(float(y.mean(0).norm()), 2), "by_lambda": {}}
    for lam in lambdas:
        losses_mean, losses_map, dist_mean, dist_map = [], [], [], []
        for i in test:
            train = [j for j in range(len(rows)) if similarity[i, j] < 0.6]
            xt, yt = x[train], y[train]
            mu = yt.mean(0)
            w = torch.linalg.solve(xt.T @ xt + lam * torch.eye(x.shape[1]), xt.T @ (yt - mu))
            predicted = mu + x[i] @ w
            ids = lm.encode(rows[i].text)
            losses_mean.append(one_pass_loss(lm, mu, ids))
            losses_map.append(one_pass_loss(lm, predicted, ids))
            dist_mean.append(float((mu - y[i]).norm()))
            dist_map.append(float((predicted - y[i]).norm()))
        mean = lambda v: round(sum(v) / len(v), 3)  # noqa: E731
        report["by_lambda"][str(lam)] = {"loss_mean_start": mean(losses_mean), "loss_map_start": mean(losses_map),
                                         "distance_mean_start": mean(dist_mean), "distance_map_start": mean(dist_map)}
    (RESULTS / "start_map.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str]) -> int:
    torch.set_num_threads(2)
    lm = load_model()
    cache = ProtoCache(tempfile.mkdtemp(), shipped=SHIPPED_ROOT)
    if argv[:1] == ["sweep"] and len(argv) == 2 and argv[1] in VARIANTS:
        print(json.dumps(sweep(lm, cache, argv[1])))
    elif argv == ["map"]:
        print(json.dumps(ridge_map(lm, cache), indent=1))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
