"""LDCT brain-CT denoising benchmark: DICOM -> NIfTI -> splits -> segmenter -> training ->
denoising -> evaluation -> tables, figures and report. See README.md (its Architecture section maps the folders)."""

import os
import shlex

from snakemake.utils import min_version

min_version("9.0")

# Jobs import this checkout's ldct, models and losses, as the planner does (Snakemake puts the
# Snakefile's folder on its own path): without it a job ran whatever copy the interpreter had
# installed (another clone's editable install, a stale wheel), and a model the plan had found
# was "unknown" in its job. Braces doubled: Snakemake formats the prefix.
_here = shlex.quote(workflow.basedir).replace("{", "{{").replace("}", "}}")
shell.prefix(f"set -euo pipefail; export PYTHONPATH={_here}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


if not workflow.overwrite_configfiles:  # `--configfile X` replaces the default entirely
    configfile: os.path.join(workflow.basedir, "config.yaml")  # next to this file, wherever snakemake runs


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/anatomy.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


if CLINICAL:

    include: "workflow/rules/clinical.smk"


rule all:
    default_target: True
    input:
        paper_outputs(),
