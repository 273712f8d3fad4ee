"""Run a function in a fresh child process and report its wall time and peak memory (RSS
above the child's size before the call), so that measurements side by side do not share
allocator state."""

from __future__ import annotations

import json
import subprocess
import sys


def in_child(module: str, func: str, *args) -> dict:
    code = (
        "import json, sys, time\n"
        "from ldct.complexity import _reset_peak_rss_mb, _peak_rss_mb\n"
        f"from {module} import {func} as f\n"
        "args = json.loads(sys.argv[1])\n"
        "f(*args, warmup=True)\n"
        "base = _reset_peak_rss_mb()\n"
        "t0 = time.perf_counter(); f(*args); dt = time.perf_counter() - t0\n"
        "print(json.dumps({'seconds': dt, 'peak_mb': _peak_rss_mb() - base}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])
