# Helpers shared by the rules: validated config, result paths, subjects and splits.
import json
from pathlib import Path
import shlex
import sys

from ldct.config import ConfigError, experiment_settings, validate_config
from ldct.dicom import discover_subjects
from ldct.evaluate import LDCT
from ldct.paths import ResultPaths
from ldct.splits import make_splits
from ldct.synthetic import subject_ids

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err))


RP = ResultPaths(config["results"], config["dataset"]["name"])
SYNTHETIC = config["dataset"]["source"] == "synthetic"
# The library's command line, run by the interpreter that runs Snakemake.
LDCT_CMD = f"{shlex.quote(sys.executable)} -m ldct"


def find_subjects():
    if SYNTHETIC:
        found = subject_ids(config["synthetic"]["n_subjects"])
    else:
        found = discover_subjects(config["dataset"]["dicom_root"])
    wanted = config["dataset"]["subjects"]
    if wanted:
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise WorkflowError(f"dataset.subjects not found: {', '.join(missing)}")
        found = [s for s in found if s in wanted]
    return found


SUBJECTS = find_subjects()
SPLITS = make_splits(SUBJECTS, config["split"], config["seed"])
EXPERIMENTS = list(config["experiments"])
ROWS = [LDCT] + EXPERIMENTS
SOURCE_FILES = sorted(str(p) for d in ("models", "losses") for p in Path(workflow.basedir, d).glob("*.py"))


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def nifti_files(subjects, labels=False):
    names = ["full.nii.gz", "low.nii.gz"] + (["labels.nii.gz"] if labels else [])
    return [str(RP.nifti(s) / n) for s in subjects for n in names]


def needs_segmenter(exp):
    import losses

    return losses.needs_segmenter(config["experiments"][exp]["loss"]["name"])


def paper_outputs():
    tables = ["table1_complexity", "table2_quantitative", "table3_anatomical_dice"]
    figs = ["fig_qualitative", "fig_segmentation", "fig_noise_radius", "fig_training_curves",
            "fig_metric_distributions"] + (["fig_phantom"] if SYNTHETIC else [])
    return ([str(RP.table(t, e)) for t in tables for e in ("csv", "md", "tex")] + [str(RP.table("stats"))]
            + [str(RP.figure(f)) for f in figs] + [str(RP.manifest)])
