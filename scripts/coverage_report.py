"""Turn coverage.py's JSON (edge/ and defense/ under the whole suite) into
bench/results/coverage.{json,md}: line and branch coverage per package and per module, and the
test count. Called by scripts/coverage.sh."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path


def main(cov_json: str, pytest_log: str, rc: str, out_dir: str) -> None:
    data = json.loads(Path(cov_json).read_text())
    tail = Path(pytest_log).read_text().strip().splitlines()[-1:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)",
                                                 tail[0] if tail else "")}
    packages: dict[str, dict[str, int]] = {}
    modules = []
    for name, f in sorted(data["files"].items()):
        s = f["summary"]
        package = name.split("/")[2]  # src/kalkan/<edge|defense>/...
        p = packages.setdefault(package, {"statements": 0, "covered": 0, "branches": 0,
                                          "covered_branches": 0})
        p["statements"] += s["num_statements"]
        p["covered"] += s["covered_lines"]
        p["branches"] += s.get("num_branches", 0)
        p["covered_branches"] += s.get("covered_branches", 0)
        modules.append((name, s["num_statements"], s["percent_covered"]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    result = {"commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "pytest_exit": int(rc), "tests": counts, "packages": packages,
              "modules": [{"path": n, "statements": st, "percent": round(pc, 1)}
                          for n, st, pc in modules]}
    out = Path(out_dir)
    (out / "coverage.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Test coverage of edge/ and defense/", "",
             "- Command: `bash scripts/coverage.sh` (from the project root; `make coverage`)",
             f"- Commit: {commit}; {result['date']}",
             f"- Tests: {counts.get('passed', 0):,} passed, {counts.get('failed', 0)} failed, "
             f"{counts.get('skipped', 0)} skipped (pytest exit {rc})",
             "- Measured on the pure-Python build (coverage.py cannot trace the mypyc-compiled "
             "modules; the source is the same). Edges and workers started as subprocesses are "
             "traced too (coverage started in every process by a .pth file, data combined).",
             "", "| package | statements | lines covered | branches | branches covered |",
             "| --- | --- | --- | --- | --- |"]
    for name, p in packages.items():
        lines.append(f"| {name}/ | {p['statements']:,} | "
                     f"**{100 * p['covered'] / max(1, p['statements']):.1f}%** | "
                     f"{p['branches']:,} | "
                     f"{100 * p['covered_branches'] / max(1, p['branches']):.1f}% |")
    lines += ["", "## Per module", "", "| module | statements | covered (lines and branches) |",
              "| --- | --- | --- |"]
    lines += [f"| `{n.removeprefix('src/kalkan/')}` | {st:,} | {pc:.1f}% |"
              for n, st, pc in modules]
    (out / "coverage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main(*sys.argv[1:5])
