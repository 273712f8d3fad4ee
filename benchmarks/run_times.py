"""Where a workflow run's minutes go: wall time and job-seconds per rule, from a Snakemake log.

    python benchmarks/run_times.py [LOG ...]

LOG: a Snakemake log (`.snakemake/log/*.snakemake.log`, or the run's captured stderr); by
default the newest log under `.snakemake/log/` that ran jobs (not a dry run's or a lint's). Each job's seconds are the time between its
start stamp and its `Finished jobid` stamp (one-second resolution; jobs that run beside each
other each count their whole time, so the job-seconds add up to more than the wall time on
several cores). Prints one table per log: rule, jobs, job-seconds, share, longest job.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

# leading spaces allowed: Snakemake indents the jobs of a group job (the SLURM profile's bundles)
STAMP = re.compile(r"^\s*\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^\s*(?:local)?(?:rule|checkpoint) (\S+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^\s*Finished jobid: (\d+)")


def parse(lines: list[str]) -> tuple[dict[str, list[float]], float]:
    """Job seconds per rule and the wall time (first to last stamp) of one Snakemake log."""
    stamp = first = last = None
    pending: str | None = None  # rule whose jobid line comes next
    started: dict[str, tuple[str, datetime]] = {}
    per_rule: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        line = line.rstrip("\n")
        if m := STAMP.match(line):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
            first = first or stamp
            last = stamp
        elif (m := START.match(line)) and stamp is not None:
            pending = m.group(1)
        elif (m := JOBID.match(line)) and pending is not None:
            started[m.group(1)] = (pending, stamp)
            pending = None
        elif (m := FINISHED.match(line)) and m.group(1) in started:
            rule, t0 = started.pop(m.group(1))
            per_rule[rule].append((stamp - t0).total_seconds())
    if first is None:
        raise ValueError("no Snakemake time stamps found: is this a Snakemake log?")
    return per_rule, (last - first).total_seconds()


def report(path: Path) -> str:
    per_rule, wall = parse(path.read_text(errors="replace").splitlines())
    total = sum(sum(v) for v in per_rule.values())
    rows = [f"{path}: wall {wall / 60:.1f} min, {sum(map(len, per_rule.values()))} jobs, "
            f"{total:.0f} job-seconds",
            f"{'rule':<22}{'jobs':>6}{'job-s':>9}{'share':>8}{'longest s':>11}"]
    for rule, secs in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        rows.append(f"{rule:<22}{len(secs):>6}{sum(secs):>9.0f}{sum(secs) / max(total, 1):>8.0%}{max(secs):>11.0f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="*", type=Path)
    args = parser.parse_args(argv)
    newest = next((p for p in sorted(Path(".snakemake/log").glob("*.snakemake.log"), reverse=True) if _ran_jobs(p)),
                  None)
    logs = args.logs or ([newest] if newest else [])
    if not logs:
        parser.error("no log given and none under .snakemake/log/ that ran jobs")
    for path in logs:
        if not path.is_file():
            parser.error(f"{path}: {'a folder' if path.is_dir() else 'not found'}; give a Snakemake log "
                         "(.snakemake/log/*.snakemake.log)")
        try:
            print(report(path))
        except ValueError as err:
            parser.error(f"{path}: {err}")
    return 0


def _ran_jobs(path: Path) -> bool:
    """Whether a Snakemake log records a finished job (a dry run's or a lint's does not)."""
    return any(FINISHED.match(line) for line in path.read_text(errors="replace").splitlines())


if __name__ == "__main__":
    sys.exit(main())
