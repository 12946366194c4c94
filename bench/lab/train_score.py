"""Train the behaviour score (src/kalkan/defense/score.py) on the lab's labelled access logs and
say how well it does on scenarios it was not trained on.

    .venv/bin/python -m bench.lab --targets kalkan --export-labelled DIR   # the data
    .venv/bin/python -m bench.lab.train_score DIR                         # the model

Every labelled line is replayed through the edge's own feature code (defense/behaviour.py), in
log order, one row per client address, so the model learns from exactly what the edge
computes. Each request is one example (the client's features as they stand when it is
decided), labelled bot or not by the lab's ground truth (a bot's only where the cache did not
answer it, see main()); lines whose truth is unknown (an address readers and bots shared) are
replayed but not used as examples. The model is scikit-learn's HistGradientBoostingClassifier
with shallow trees and monotonic constraints (why: docs/policy.md, "Behaviour").

The scenarios are split: the model is fitted on TRAIN and judged on HELD_OUT, which it never
saw. The threshold is chosen on the training scenarios only. Writes the model to
src/kalkan/data/behaviour-model.json and the report to bench/results/behaviour-score.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lab.truth import ratio
from kalkan.defense.behaviour import FEATURES, Behaviour, new_rows
from kalkan.defense.facts import CHALLENGE, RouteClassifier
from kalkan.defense.score import FORMAT, BehaviourModel

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "src/kalkan/data/behaviour-model.json"
RESULTS = ROOT / "bench/results"

# Imitators are trained on: they are the only bots that fetch assets and pause like readers, and
# a model that never saw one learns "assets mean a reader" (held out, their recall was 0.0).
# Held out: a search flood from thousands of addresses, readers behind CGNAT beside bots, link
# previews and feed apps, a POST flood, and a flash crowd of readers.
TRAIN = ("hot-url", "cache-bust", "imitators", "pow-bots", "slow", "mixed")
HELD_OUT = ("low-rate-search", "cgnat", "previews-and-apps", "post-flood", "flash-crowd")
PER_CLIENT = 40          # examples kept per client and scenario (a flood must not drown a reader)
TARGET_PRECISION = 0.999  # per request, on the training scenarios: where the threshold goes
LEGIT_COST = 10.0        # a legitimate example's weight, relative to a bot's (classes balanced)


@dataclass
class Examples:
    x: list[list[float]] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    client: list[str] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)
    costly: list[bool] = field(default_factory=list)   # not answered from the cache


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def replay(path: Path, per_client: int, seed: int = 1) -> Examples:
    """Replay one scenario's labelled log through the feature code; sample examples."""
    classify = RouteClassifier()
    behaviour = Behaviour()
    slots: dict[str, int] = {}
    rows = new_rows(1024)
    seen: dict[str, int] = defaultdict(int)
    rng = random.Random(seed)
    out = Examples()
    for d in _lines(path):
        method, req_path, query = d.get("method", "GET"), d.get("path", "/"), d.get("query", "")
        if not isinstance(req_path, str) or req_path == "-":
            continue    # refused before it was a request (bad framing, a timeout)
        route, npath = classify.classify_target(method, req_path, query or "")
        if route == CHALLENGE:
            continue    # the defence's own endpoint: not counted online either
        client = d["client"]
        slot = slots.get(client)
        if slot is None:
            slot = slots[client] = len(slots)
            if (slot + 1) * 16 > len(rows):
                rows.extend(new_rows(len(slots)))
        host = d.get("host") or ""
        referer = d.get("referer") or ""
        behaviour.observe(rows, slot, float(d["t"]), route, method, npath, query or "",
                          d.get("ua") or "", bool(host) and host in referer)
        bot = d.get("bot")
        if bot is not None:
            key = client
            seen[key] += 1
            k = seen[key]
            # Every early request (where the decision is hardest), then a thinning sample.
            if k <= per_client // 2 or rng.random() < (per_client / 2) / k:
                out.x.append(behaviour.features(rows, slot))
                out.y.append(1 if bot else 0)
                out.client.append(client)
                out.label.append(str(d.get("label")))
                out.phase.append(str(d.get("phase")))
                out.costly.append(d.get("cache") != "HIT")
        if d.get("cache") != "BYPASS":
            behaviour.outcome(rows, slot, int(d.get("status") or 0),
                              d.get("origin_ms") is not None)
    return out


# How each feature may move the score: +1 only up, -1 only down, 0 either way. A reader who
# searches more is never judged better for it, one who fetches more assets never worse: the
# lab's readers and bots are far apart, and without these the trees could put the boundary
# anywhere in the gap, on an interaction no reader would recognize.
MONOTONIC = {"volume": 0, "page_share": 0, "asset_share": -1, "costly_share": 1,
             "new_queries": 1, "new_paths": 1, "error_share": 1, "origin_share": 1,
             "ua_changes": 1, "referred": -1, "gap_mean": 0, "gap_spread": 0}


def export_trees(clf: Any) -> tuple[float, list[dict[str, list[Any]]]]:
    """The fitted ensemble (HistGradientBoostingClassifier) as plain lists; internal node
    values become the sample-weighted mean of the leaves below them (what the per-feature
    explanation credits)."""
    base = float(clf._baseline_prediction[0][0])
    trees = []
    for (predictor,) in clf._predictors:
        nodes = predictor.nodes
        leaf = nodes["is_leaf"].tolist()
        left = [-1 if leaf[i] else int(v) for i, v in enumerate(nodes["left"].tolist())]
        right = [-1 if leaf[i] else int(v) for i, v in enumerate(nodes["right"].tolist())]
        weight = [float(c) for c in nodes["count"].tolist()]
        value = [float(v) for v in nodes["value"].tolist()]
        # Leaves keep their fitted values (shrinkage included); parents are recomputed
        # bottom-up, children always coming after their parent.
        for node in reversed(range(len(left))):
            if left[node] != -1:
                wl, wr = weight[left[node]], weight[right[node]]
                value[node] = (value[left[node]] * wl + value[right[node]] * wr) / (wl + wr)
        trees.append({"feature": [int(f) for f in nodes["feature_idx"].tolist()],
                      "threshold": [float(x) for x in nodes["num_threshold"].tolist()],
                      "left": left, "right": right, "value": value})
    return base, trees


def judge(model: BehaviourModel, ex: Examples, threshold: float,
          costly_only: bool = False) -> dict[str, Any]:
    """Precision and recall of "score >= threshold", per request and per client (a client is
    flagged when any of its sampled requests is). With `costly_only`, only requests the cache
    did not answer count: the edge asks the score only there (a challenge is a gate in front
    of the origin, never in front of a cached page)."""
    tp = fp = fn = tn = 0
    flagged: dict[str, bool] = {}
    truth: dict[str, int] = {}
    legit_by_phase: dict[str, set[str]] = defaultdict(set)
    labels: dict[str, dict[str, int]] = defaultdict(lambda: {"clients": 0, "flagged": 0})
    label_of: dict[str, str] = {}
    for x, y, client, label, phase, costly in zip(ex.x, ex.y, ex.client, ex.label, ex.phase,
                                                  ex.costly, strict=True):
        if costly_only and not costly:
            continue
        hit = model.score(x) >= threshold
        if hit and y:
            tp += 1
        elif hit:
            fp += 1
            legit_by_phase[phase].add(client)
        elif y:
            fn += 1
        else:
            tn += 1
        flagged[client] = flagged.get(client, False) or hit
        truth[client] = y
        label_of[client] = label
    ctp = sum(1 for c, f in flagged.items() if f and truth[c])
    cfp = sum(1 for c, f in flagged.items() if f and not truth[c])
    cfn = sum(1 for c, f in flagged.items() if not f and truth[c])
    for c, f in flagged.items():
        labels[label_of[c]]["clients"] += 1
        labels[label_of[c]]["flagged"] += int(f)

    return {"requests": {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": ratio(tp, tp + fp),
                         "recall": ratio(tp, tp + fn)},
            "clients": {"tp": ctp, "fp": cfp, "fn": cfn, "precision": ratio(ctp, ctp + cfp),
                        "recall": ratio(ctp, ctp + cfn)},
            "legitimate_flagged_by_phase": {p: len(v) for p, v in sorted(legit_by_phase.items())},
            "labels": dict(sorted(labels.items()))}


def choose_threshold(scores: list[float], y: list[int], precision: float) -> float:
    """The lowest threshold whose per-request precision on these examples reaches `precision`
    (and at least 0.5)."""
    ranked = sorted(zip(scores, y, strict=True), reverse=True)
    tp = fp = 0
    best = 0.99
    for s, label in ranked:
        if label:
            tp += 1
        else:
            fp += 1
        if tp / (tp + fp) >= precision:
            best = s
    return max(0.5, min(best, 0.99))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="directory of lab-labelled.SCENARIO.jsonl files")
    ap.add_argument("--train", default=",".join(TRAIN))
    ap.add_argument("--held-out", default=",".join(HELD_OUT))
    ap.add_argument("--trees", type=int, default=60)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from sklearn.ensemble import HistGradientBoostingClassifier  # offline tool: bench extra

    def load(names: str) -> dict[str, Examples]:
        out = {}
        for name in filter(None, names.split(",")):
            path = args.data / f"lab-labelled.{name}.jsonl"
            if not path.exists():
                print(f"missing {path}", file=sys.stderr)
                continue
            out[name] = replay(path, PER_CLIENT)
        return out

    train, held = load(args.train), load(args.held_out)
    if not train:
        print("no training data", file=sys.stderr)
        return 2
    # A bot's request is an example only where the cache did not answer it: an imitator's
    # arrival (a page and its assets, all cached) is a reader's arrival, and calling that a bot
    # would teach the model to suspect readers. A legitimate client's requests are examples
    # everywhere: the threat level scores clients at any moment, mid-burst included.
    x = [v for e in train.values() for v, b, c in zip(e.x, e.y, e.costly, strict=True)
         if c or not b]
    y = [b for e in train.values() for b, c in zip(e.y, e.costly, strict=True) if c or not b]
    # Classes weighted to balance (the floods send a hundred times the readers' requests),
    # then a legitimate example weighs LEGIT_COST times a bot's: a reader challenged costs more
    # than a bot let through once, and the boundary moves away from the readers.
    if not 0 < sum(y) < len(y):
        print("the training scenarios need both bots (at requests the cache did not answer) "
              "and legitimate clients", file=sys.stderr)
        return 2
    pos = sum(y)
    neg = len(y) - pos
    weights = [1.0 / pos if v else LEGIT_COST / neg for v in y]
    scale = len(y)
    weights = [w * scale for w in weights]
    clf = HistGradientBoostingClassifier(
        max_iter=args.trees, max_depth=args.depth, learning_rate=0.15, l2_regularization=1.0,
        min_samples_leaf=40, early_stopping=False, random_state=7,
        monotonic_cst=[MONOTONIC[name] for name in FEATURES])
    clf.fit(x, y, sample_weight=weights)
    base, trees = export_trees(clf)
    doc: dict[str, Any] = {"format": FORMAT, "features": list(FEATURES), "base": base,
                           "threshold": 0.5, "trees": trees}
    model = BehaviourModel.from_dict(doc)
    threshold = choose_threshold([model.score(v) for v in x], y, TARGET_PRECISION)
    doc["threshold"] = round(threshold, 4)
    model.threshold = threshold
    # Sanity: the exported trees must score as scikit-learn does.
    sk = clf.predict_proba(x[:2000])[:, 1]
    worst = max(abs(model.score(v) - float(p)) for v, p in zip(x[:2000], sk, strict=True))
    if worst > 1e-6:
        print(f"exported model differs from scikit-learn by {worst}", file=sys.stderr)
        return 1
    report = {"trained_on": sorted(train), "held_out": sorted(held),
              "examples": {"train": len(y), "bots": sum(y)}, "threshold": doc["threshold"],
              "trees": args.trees, "depth": args.depth,
              "importance": _importance(model, x),
              "train": {k: judge(model, e, threshold, True) for k, e in train.items()},
              "held": {k: judge(model, e, threshold, True) for k, e in held.items()},
              "held_every_request": {k: judge(model, e, threshold) for k, e in held.items()}}
    doc["meta"] = {"trained_on": report["trained_on"], "held_out": report["held_out"],
                   "examples": report["examples"], "sklearn": _sklearn_version()}
    args.model.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "behaviour-score.json").write_text(json.dumps(report, indent=2) + "\n",
                                                        encoding="utf-8")
    (args.results / "behaviour-score.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return 0


def _importance(model: BehaviourModel, x: list[list[float]]) -> dict[str, float]:
    """Mean absolute credit of each feature over (a sample of) the training examples."""
    sample = x[:: max(1, len(x) // 5000)]
    total = [0.0] * len(FEATURES)
    for v in sample:
        for i, c in enumerate(model.credits(v)):
            total[i] += abs(c)
    return dict(sorted(((name, round(t / len(sample), 4)) for name, t in
                        zip(FEATURES, total, strict=True)), key=lambda kv: -kv[1]))


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Behaviour score: held-out scenarios", "",
             f"Trained on {', '.join(report['trained_on'])}; judged on "
             f"{', '.join(report['held_out'])}, which the model never saw. "
             f"{report['trees']} trees of depth {report['depth']}, threshold "
             f"{report['threshold']} (chosen on the training scenarios). Command: "
             "`.venv/bin/python -m bench.lab.train_score DIR` on the lab's labelled export.", "",
             "Judged where the edge asks the score: requests the cache did not answer (a "
             "challenge only ever stands in front of the origin). A client counts as flagged "
             "when any of those requests scores at or above the threshold. The last rows judge "
             "every request of the held-out scenarios, cached ones included (stricter than the "
             "edge: a cached page is served to a bad score too).", "",
             "| scenario | set | precision (clients) | recall (clients) | precision (requests) "
             "| recall (requests) | legitimate clients flagged, by phase |",
             "|---|---|---|---|---|---|---|"]
    for part, name in (("held", "held out"), ("train", "train"),
                       ("held_every_request", "held out, every request")):
        for scenario, r in report[part].items():
            c, q = r["clients"], r["requests"]
            legit = ", ".join(f"{k} {v}" for k, v in r["legitimate_flagged_by_phase"].items())
            lines.append(f"| {scenario} | {name} | {c['precision']} | {c['recall']} | "
                         f"{q['precision']} | {q['recall']} | {legit or '0'} |")
    lines += ["", "Feature importance (mean absolute log-odds credit on the training "
              "examples): " + ", ".join(
        f"{k} {v}" for k, v in report["importance"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
