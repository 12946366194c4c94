"""The hot path's modules compiled to C with mypyc, from the same (type-checked) Python source.

They are what a cache hit runs through: parsing the request, the connection, the pipeline's hot
path, the store and the access log. Compiled, a readers-load hit costs about a third fewer CPU
instructions (bench/hit_instructions.py). Everything else stays interpreted, but for three small
hand-written C modules (src/kalkan/defense/_rows.c, src/kalkan/edge/_head.c,
src/kalkan/observe/_log_line.c), each with a Python reference it is tested against. Set
KALKAN_PURE_PYTHON=1 to install without compiling (no C compiler needed; the same code, slower).
"""

import os

from setuptools import Extension, setup

COMPILED = [
    "src/kalkan/edge/chunks.py",
    "src/kalkan/edge/clock.py",
    "src/kalkan/edge/request.py",
    "src/kalkan/edge/framing.py",
    "src/kalkan/edge/flow.py",
    "src/kalkan/edge/reader.py",
    "src/kalkan/edge/endpoint.py",
    "src/kalkan/edge/connection.py",
    "src/kalkan/edge/body_files.py",
    "src/kalkan/edge/store.py",
    "src/kalkan/edge/replay.py",
    "src/kalkan/edge/pipeline.py",
    "src/kalkan/observe/access_log.py",
    "src/kalkan/observe/record.py",
    "src/kalkan/observe/talkers.py",
    "src/kalkan/addresses.py",
    "src/kalkan/memo.py",
    "src/kalkan/edge/client_address.py",
    "src/kalkan/defense/verdict.py",
    "src/kalkan/defense/facts.py",
    "src/kalkan/defense/clients.py",
    "src/kalkan/defense/rules.py",
    "src/kalkan/defense/decisions.py",
    "src/kalkan/defense/attack_mode.py",
    "src/kalkan/defense/passes.py",
    "src/kalkan/defense/behaviour.py",
    "src/kalkan/defense/score.py",
    "src/kalkan/defense/engine.py",
]

ext_modules = []
if os.environ.get("KALKAN_PURE_PYTHON") != "1":
    from mypyc.build import mypycify

    # pip builds in an isolated environment without the runtime dependencies: their types are
    # checked by `make typecheck`, not here (what is missing is taken as Any).
    ext_modules = mypycify(["--ignore-missing-imports", "--no-warn-unused-ignores",
                            "--no-warn-return-any", *COMPILED], opt_level="3")
    # The client table's per-request arithmetic, hand-written in C (defense/rows.py says why;
    # without a compiler rows.py's Python definitions run instead).
    ext_modules.append(Extension("kalkan.defense._rows", ["src/kalkan/defense/_rows.c"]))
    # The common request head read in one call instead of llhttp's callbacks (edge/head.py).
    ext_modules.append(Extension("kalkan.edge._head", ["src/kalkan/edge/_head.c"]))
    # An access-log line appended to the log's buffer in one call (observe/access_log.py).
    ext_modules.append(Extension("kalkan.observe._log_line", ["src/kalkan/observe/_log_line.c"]))
    # A hot page's head and body file sent in one call (edge/body_files.py).
    ext_modules.append(Extension("kalkan.edge._sendfile", ["src/kalkan/edge/_sendfile.c"]))

setup(ext_modules=ext_modules)
