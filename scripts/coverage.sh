#!/usr/bin/env bash
# Line coverage of src/kalkan/edge and src/kalkan/defense by the whole test suite.
#
# coverage.py cannot see inside the modules setup.py compiles with mypyc, so this measures the
# same source uninstalled-compiled: a clean checkout of HEAD in .coverage-work/ with its own venv
# installed with KALKAN_PURE_PYTHON=1. Edges the tests start as subprocesses (`kalkan serve`,
# workers) are traced too: a .pth file starts coverage in every Python process of that venv
# (COVERAGE_PROCESS_START), each writes its own data file (also when ended by SIGTERM), and
# the files are combined. Writes bench/results/coverage.{json,md}.
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
cat > .coveragerc <<RC
[run]
branch = True
source = $work/src/kalkan/edge,$work/src/kalkan/defense
parallel = True
sigterm = True
data_file = $work/.coverage
RC
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo 'import coverage; coverage.process_startup()' > "$site/kalkan_coverage_subprocesses.pth"
export COVERAGE_PROCESS_START="$work/.coveragerc"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" > pytest.log 2>&1  # traced by the .pth
rc=$?
set -e
tail -3 pytest.log
unset COVERAGE_PROCESS_START
.venv/bin/python -m coverage combine -q --rcfile=.coveragerc
.venv/bin/python -m coverage json -q --rcfile=.coveragerc -o coverage.json
.venv/bin/python "$root/scripts/coverage_report.py" coverage.json pytest.log "$rc" \
    "$root/bench/results"
