"""Time to synthesize the default dataset (phantoms + dose simulation + DICOM) on this
machine, subject by subject in one process on one thread: the template fields (once per
process) and each subject's whole making, and the wall time the workflow's parallel jobs give.

    python benchmarks/synthesis.py [--config config.yaml] [--subjects N]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from ldct.config import load_config  # noqa: E402
from ldct.phantom import mni_fields  # noqa: E402
from ldct.synthetic import make_subject, subject_ids  # noqa: E402
from benchmarks import header, positive_int, run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--subjects", type=positive_int, default=None, help="default: synthetic.n_subjects")
    a = ap.parse_args()
    cfg = load_config(a.config)
    torch.set_num_threads(1)  # one core, as one of the workflow's synthesis jobs per core
    print(header())
    n = a.subjects or cfg["synthetic"]["n_subjects"]
    t0 = time.perf_counter()
    mni_fields(None)  # the cache entry synthesize_subject reads (an argument-less call is another)
    t_fields = time.perf_counter() - t0
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in subject_ids(n):
            t = time.perf_counter()
            make_subject(s, cfg["synthetic"], cfg["seed"], f"{tmp}/dicom/{s}", f"{tmp}/phantom/{s}")
            times.append(time.perf_counter() - t)
    total = t_fields + sum(times)
    print(f"MNI template fields (once per process): {t_fields:.1f} s")
    print(f"{n} subjects: {sum(times):.1f} s ({sum(times) / n:.2f} s per subject)")
    cores = os.cpu_count() or 1
    rounds = math.ceil(n / cores)  # subjects one per core: whole rounds of the mean subject
    parallel = t_fields + rounds * sum(times) / n
    print(f"total {total:.1f} s on one core; the workflow builds the fields once (rule template_fields) and "
          f"runs subjects in parallel: about {parallel:.0f} s on {cores} cores ({rounds} rounds of {min(n, cores)})")


if __name__ == "__main__":
    run(main)
