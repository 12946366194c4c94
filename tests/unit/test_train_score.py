"""bench/lab/train_score.py: labelled access-log lines in, a model the edge loads out, judged
on a scenario it was not fitted on."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from kalkan.defense.score import BehaviourModel

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench.lab import train_score  # noqa: E402

pytest.importorskip("sklearn")


def _line(t: float, client: str, path: str, query: str, cache: str, bot: bool,
          label: str) -> dict[str, object]:
    return {"t": t, "client": client, "method": "GET", "host": "127.0.0.1", "path": path,
            "query": query, "status": 200, "cache": cache,
            "origin_ms": 5.0 if cache == "MISS" else None, "decision": "",
            "ua": "Mozilla/5.0", "label": label, "bot": bot, "phase": "attack"}


def _scenario(path: Path, seed: int) -> None:
    """Readers (a page, its assets, a pause, another page; a search now and then) beside
    search bots (nothing but new searches), as the lab's labelled export writes them."""
    rng = random.Random(seed)
    lines = []
    for r in range(40):
        t, client = rng.uniform(0, 5), f"127.10.{seed}.{r + 1}"
        for k in range(4):
            page = "/" if k == 0 else f"/news/{rng.randrange(20)}/"
            query = ""
            if k == 2 and r % 4 == 0:
                page, query = "/search", "q=election"
            lines.append(_line(t, client, page, query, "MISS" if k < 2 else "HIT", False,
                               "reader"))
            for a in range(5):
                lines.append(_line(t + 0.02 * (a + 1), client, f"/assets/{a}.css", "", "HIT",
                                   False, "reader"))
            t += rng.uniform(5, 20)
    for b in range(60):
        t, client = rng.uniform(0, 5), f"127.77.{seed}.{b + 1}"
        for _ in range(3):
            lines.append(_line(t, client, "/search", f"s={rng.random()}", "MISS", True,
                               "bot:search"))
            t += rng.uniform(0.5, 3)
    lines.sort(key=lambda d: float(d["t"]))  # type: ignore[arg-type]
    path.write_text("".join(json.dumps(d) + "\n" for d in lines), encoding="utf-8")


def test_a_model_is_trained_judged_on_a_held_out_scenario_and_loaded(tmp_path: Path) -> None:
    data = tmp_path / "labelled"
    data.mkdir()
    _scenario(data / "lab-labelled.one.jsonl", 1)
    _scenario(data / "lab-labelled.two.jsonl", 2)
    model, results = tmp_path / "model.json", tmp_path / "results"
    assert train_score.main([str(data), "--train", "one", "--held-out", "two", "--trees", "10",
                             "--model", str(model), "--results", str(results)]) == 0
    loaded = BehaviourModel.load(model)
    assert len(loaded.trees) == 10 and loaded.meta["held_out"] == ["two"]
    report = json.loads((results / "behaviour-score.json").read_text())
    held = report["held"]["two"]["clients"]
    assert held["precision"] == 1.0 and held["recall"] == 1.0
    assert "| two | held out |" in (results / "behaviour-score.md").read_text()


def test_training_without_both_kinds_of_example_says_so(tmp_path: Path) -> None:
    data = tmp_path / "labelled"
    data.mkdir()
    (data / "lab-labelled.one.jsonl").write_text(
        json.dumps(_line(1.0, "127.0.0.1", "/", "", "MISS", False, "reader")) + "\n")
    assert train_score.main([str(data), "--train", "one", "--held-out", "", "--model",
                             str(tmp_path / "m.json"), "--results", str(tmp_path)]) == 2
