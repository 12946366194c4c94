"""The learned behaviour score: a small gradient-boosted tree ensemble, trained offline on the
lab's labelled traffic (bench/lab/train_score.py) and shipped as data/behaviour-model.json,
evaluated here in plain Python, and explained feature by feature.

The explanation follows each tree's path and credits every step's change of the predicted
value to the feature the step split on (the node values are the leaf values averaged over the
training samples below each node), so the credits add up exactly to the score's log-odds:
"costly_share +2.1, new_queries +1.4" names why a client scored as it did.
"""

from __future__ import annotations

import json
from importlib import resources
from math import exp
from pathlib import Path
from typing import Any

from kalkan.defense.behaviour import FEATURES

FORMAT = "kalkan-behaviour-gbt/1"
_LEAF = -1


class ModelError(ValueError):
    """The model file is missing, unreadable or does not fit this version's features."""


class _Tree:
    """One regression tree as parallel lists (the arrays scikit-learn keeps)."""

    __slots__ = ("feature", "threshold", "left", "right", "value")

    def __init__(self, feature: list[int], threshold: list[float], left: list[int],
                 right: list[int], value: list[float]) -> None:
        self.feature, self.threshold = feature, threshold
        self.left, self.right, self.value = left, right, value


class BehaviourModel:
    """P(bot | features) and its explanation."""

    def __init__(self, base: float, trees: list[_Tree], threshold: float,
                 meta: dict[str, Any]) -> None:
        self.base = base
        self.trees = trees
        self.threshold = threshold     # the score at or above which a client is "bad"
        self.meta = meta

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "model") -> BehaviourModel:
        try:
            if doc.get("format") != FORMAT:
                raise ModelError(f"{source}: format is {doc.get('format')!r}, expected {FORMAT!r}")
            if list(doc["features"]) != list(FEATURES):
                raise ModelError(f"{source}: trained on features {doc['features']}, this version "
                                 f"computes {list(FEATURES)}: retrain it")
            width = len(FEATURES)
            trees = []
            for k, t in enumerate(doc["trees"]):
                tree = _Tree([int(x) for x in t["feature"]], [float(x) for x in t["threshold"]],
                             [int(x) for x in t["left"]], [int(x) for x in t["right"]],
                             [float(x) for x in t["value"]])
                nodes = len(tree.value)
                for i in range(nodes):
                    left, right = tree.left[i], tree.right[i]
                    if left == _LEAF:
                        continue
                    if not (i < left < nodes and i < right < nodes
                            and 0 <= tree.feature[i] < width):
                        raise ModelError(f"{source}: tree {k} node {i} is malformed")
                trees.append(tree)
            threshold = float(doc["threshold"])
            if not 0.0 < threshold < 1.0:
                raise ModelError(f"{source}: threshold must be between 0 and 1, got {threshold}")
            return cls(float(doc["base"]), trees, threshold, dict(doc.get("meta", {})))
        except (KeyError, TypeError, IndexError) as exc:
            raise ModelError(f"{source}: not a behaviour model ({exc!r})") from exc

    @classmethod
    def load(cls, path: str | Path | None = None) -> BehaviourModel:
        """The model at `path`, or the one shipped in the package."""
        try:
            if path is None:
                text = resources.files("kalkan").joinpath("data/behaviour-model.json") \
                    .read_text("utf-8")
                source = "the shipped behaviour model"
            else:
                text = Path(path).read_text("utf-8")
                source = str(path)
            doc = json.loads(text)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the behaviour model {path or ''}: {exc}") from exc
        if not isinstance(doc, dict):
            raise ModelError(f"{path}: not a behaviour model (a JSON object is expected)")
        return cls.from_dict(doc, source)

    def log_odds(self, x: list[float]) -> float:
        total = self.base
        for tree in self.trees:
            feature, threshold, left, right = tree.feature, tree.threshold, tree.left, tree.right
            node = 0
            while left[node] != _LEAF:
                node = left[node] if x[feature[node]] <= threshold[node] else right[node]
            total += tree.value[node]
        return total

    def score(self, x: list[float]) -> float:
        """P(bot), 0..1."""
        z = self.log_odds(x)
        if z < -30.0:
            return 0.0
        return 1.0 / (1.0 + exp(-z))

    def credits(self, x: list[float]) -> list[float]:
        """Each feature's share of the log-odds, by FEATURES order: `base`, the trees' root
        values and these add up to `log_odds(x)`."""
        credit = [0.0] * len(FEATURES)
        for tree in self.trees:
            feature, threshold, left, right, value = (tree.feature, tree.threshold, tree.left,
                                                      tree.right, tree.value)
            node = 0
            while left[node] != _LEAF:
                nxt = left[node] if x[feature[node]] <= threshold[node] else right[node]
                credit[feature[node]] += value[nxt] - value[node]
                node = nxt
        return credit

    def explain(self, x: list[float], top: int = 3) -> list[tuple[str, float]]:
        """The features that pushed the score up most (name, log-odds credit), largest first."""
        credit = self.credits(x)
        ranked = sorted(((c, FEATURES[i]) for i, c in enumerate(credit) if c > 0.0),
                        reverse=True)
        return [(name, c) for c, name in ranked[:top]]

    def reasons(self, x: list[float], top: int = 3) -> str:
        """The explanation as the access log and the decisions list write it."""
        parts = [f"{name}={x[FEATURES.index(name)]:.2f}" for name, _ in self.explain(x, top)]
        return ",".join(parts) if parts else "score"
