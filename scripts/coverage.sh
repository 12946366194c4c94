#!/usr/bin/env bash
# Line coverage of src/kalkan/edge and src/kalkan/defense by the whole test suite.
#
# coverage.py cannot see inside the modules setup.py compiles with mypyc, so this measures the
# same source uninstalled-compiled: a clean checkout of HEAD in .coverage-work/ with its own venv
# installed with KALKAN_PURE_PYTHON=1. Edges the tests start as subprocesses (`kalkan serve`)
# are not traced; those started in-process (most) are. Writes bench/results/coverage.{json,md}.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work="$root/.coverage-work"
rm -rf "$work"
git -C "$root" worktree prune
git -C "$root" worktree add --detach --force "$work" HEAD >/dev/null
trap 'git -C "$root" worktree remove --force "$work"' EXIT
cd "$work"
python3 -m venv .venv
KALKAN_PURE_PYTHON=1 .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test,bench,analyze]'
set +e
.venv/bin/python -m coverage run --branch --source=src/kalkan/edge,src/kalkan/defense \
    -m pytest -q -p no:cacheprovider "$@" > pytest.log 2>&1
rc=$?
set -e
tail -3 pytest.log
.venv/bin/python -m coverage json -q -o coverage.json
.venv/bin/python "$root/scripts/coverage_report.py" coverage.json pytest.log "$rc" \
    "$root/bench/results"
