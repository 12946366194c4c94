"""What one refusal costs in the process, without sockets: the defence's decision plus the bytes
the edge sends, for a standing block, a tarpit (its 429 after the wait), a challenge page and a
502 page, each in the three languages' Accept-Language forms a flood might send.

Run from the project root (in-process timeit; no traffic, one core)::

    .venv/bin/python -m bench.refusal_cost            # results in bench/results/refusal_cost.*
    .venv/bin/python -m bench.refusal_cost --quick

It imports only what both the templated pages (kalkan.pages) and the older hand-written pages
offer, so the same file measures a checkout from before the pages came from templates:
``PYTHONPATH=OTHER_TREE/src .venv/bin/python -m bench.refusal_cost --label before``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import timeit
from dataclasses import dataclass, field

from bench.common import RESULTS_DIR, command_line, machine_info

ACCEPT = [b"ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7", b"ky-KG,ky;q=0.9", b"en-US,en;q=0.9", b""]


@dataclass
class View:
    """A RequestView (defense/verdict.py) as plain data."""

    client: str
    client_ip: tuple[int, int] | None = None
    path: str = "/news/1"
    method: str = "GET"
    host: str = "news.test"
    query: str = ""
    scheme: str = "http"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    cookie: bytes | None = None
    user_agent: bytes | None = b"Mozilla/5.0 (X11; Linux x86_64) bench"
    prefetched_body: bytes | None = None

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def views(client: str) -> list[View]:
    out = []
    for al in ACCEPT:
        headers = [(b"host", b"news.test"), (b"user-agent", b"Mozilla/5.0 bench"),
                   (b"accept", b"text/html")]
        if al:
            headers.append((b"accept-language", al))
        out.append(View(client, headers=headers))
    return out


def per_call_us(fn: object, number: int, repeat: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=repeat)  # type: ignore[arg-type]
    return min(times) / number * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--label", default="", help="name of this run in the results (e.g. before)")
    args = ap.parse_args()
    number, repeat = (2_000, 3) if args.quick else (20_000, 7)

    from kalkan.config import DefenseConfig
    from kalkan.defense.engine import Defense
    from kalkan.edge.responses import VerdictWriter, write_response
    from kalkan.observe.metrics import Metrics

    try:
        from kalkan.pages import Pages
        pages: Pages | None = Pages(name="Bench News")
    except ImportError:
        pages = None

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as state:
        defense = Defense(DefenseConfig(), state, Metrics(), pages) if pages is not None \
            else Defense(DefenseConfig(), state, Metrics())
        now = time.time()
        defense.decisions.add("198.51.100.7", "block", 3600, "bench", "manual", now)
        defense.decisions.add("198.51.100.8", "tarpit", 3600, "bench", "manual", now)
        defense.decisions.add("198.51.100.9", "challenge", 3600, "bench", "manual", now)
        writer = VerdictWriter()
        for name, client in (("block", "198.51.100.7"), ("tarpit", "198.51.100.8"),
                             ("challenge", "198.51.100.9")):
            vs = views(client)

            def refuse(vs: list[View] = vs) -> None:
                for v in vs:
                    verdict = defense.check(v)
                    writer.render(verdict, time.time(), True, False)

            refuse()
            assert defense.check(vs[0]).status in (403, 429), name
            results[name] = per_call_us(refuse, number // 4, repeat) / len(vs)

        # The origin's failure as the reader sees it: the edge's 502 page.
        if pages is not None:
            vs = views("192.0.2.1")

            def bad_gateway() -> None:
                for v in vs:
                    page = pages.page("bad-gateway", pages.choose(v.header(b"accept-language")))
                    write_response(page.status, page.headers, page.body, time.time(),
                                   keep_alive=True, cache_status=b"ERROR")
        else:
            from kalkan.edge.responses import error_response

            def bad_gateway() -> None:
                for _ in range(len(ACCEPT)):
                    error_response(502, "The site could not be reached.", time.time(),
                                   keep_alive=True, cache_status=b"ERROR")

        results["502"] = per_call_us(bad_gateway, number // 4, repeat) / len(ACCEPT)

    label = args.label or ("templated" if pages is not None else "hand-written")
    out = RESULTS_DIR / "refusal_cost.json"
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[label] = {"us_per_refusal": {k: round(v, 2) for k, v in results.items()},
                   "command": command_line("bench.refusal_cost"), "quick": args.quick,
                   "machine": machine_info()}
    out.write_text(json.dumps(runs, indent=2) + "\n")
    lines = ["# One refusal's cost in the process (µs, best of repeats)", "",
             "Defence decision plus the bytes the edge sends; the mean over four "
             "Accept-Language values (ru, ky, en, none). `python -m bench.refusal_cost`.", "",
             "| run | block | tarpit | challenge | 502 |", "| --- | --- | --- | --- | --- |"]
    for name, run in runs.items():
        r = run["us_per_refusal"]
        lines.append(f"| {name} | {r['block']} | {r['tarpit']} | {r['challenge']} | {r['502']} |")
    (RESULTS_DIR / "refusal_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
