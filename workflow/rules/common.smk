# Helpers shared by the rules: validated config, result paths, subjects and splits.
import json
import os
import shlex
from pathlib import Path
import sys

from ldct.cli import SERIES_KEYS, TABLE_TRAIN_KEYS, section_flags
from ldct.config import ConfigError, load_schema, read_yaml, validate_config
from ldct.errors import LdctError
from ldct.dicom import discover_subjects, series_files
from ldct.paths import LDCT, NDCT, NOISELESS
from ldct.paths import ResultPaths, dose_tag, low_dose_name
from ldct.registry import library_files
from ldct.spec import ExperimentSpec
from ldct.splits import make_splits, preset_file
from ldct.synthetic import subject_ids

try:
    for _file in workflow.configfiles:  # Snakemake's YAML reading keeps the last of a repeated key
        read_yaml(_file)  # its errors name the file
except ConfigError as err:
    raise WorkflowError(str(err)) from None
try:
    validate_config(config)
except ConfigError as err:  # named by where the config came from: its files, and --config if given
    _given = any(a in ("--config", "-C") or a.startswith("--config=") for a in sys.argv)
    _sources = [str(f) for f in workflow.configfiles] + (["--config"] if _given else [])
    raise WorkflowError(f"{' + '.join(_sources) or 'config'}: {err}") from None

# A relative segmenter.weights not found in the working directory is looked up in the project
# folder, where config.yaml's shipped file (ldct/presets/segmenter_synthetic.pt) lives.
_weights = config["segmenter"]["weights"]
if _weights and not os.path.isabs(_weights) and not os.path.exists(_weights):
    _shipped = os.path.join(workflow.basedir, _weights)
    if os.path.exists(_shipped):
        config["segmenter"]["weights"] = _shipped
if config["segmenter"]["weights"] and not os.path.isfile(config["segmenter"]["weights"]):
    _where = "" if os.path.isabs(_weights) else f" (here, nor in the project folder {workflow.basedir})"
    raise WorkflowError(f"config error at segmenter.weights: {config['segmenter']['weights']}: file not found{_where}")
if config["segmenter"]["weights"]:  # loaded now, so a file that does not fit stops the plan, not its 17th job
    from ldct.anatomy import load_weights

    try:
        load_weights(config["segmenter"]["weights"], config["segmenter"])
    except LdctError as err:
        raise WorkflowError(f"config error at segmenter.weights: {err}") from None


RP = ResultPaths(config["results"], config["dataset"]["name"])
SYNTHETIC = config["dataset"]["source"] == "synthetic"
SYNTHETIC_FLAGS = section_flags("synthetic", config["synthetic"])  # the synthetic section, as job options
# Jobs run `python -m ldct ...` with `python` = the interpreter running Snakemake (its folder
# goes first on PATH), so a venv works without being activated. With `--sdm conda` each rule
# uses workflow/envs/ldct.yaml instead; `python -m` then finds the project in the working
# directory (the repository root).
envvars:
    "PATH",


os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.getenv("PATH", "")]))
CONDA_ENV = "../envs/ldct.yaml"
# Rules that use every core ask for this many threads; Snakemake caps it at --cores.
MAX_THREADS = 64


def user_path(path) -> str:
    """A path found under the DICOM root as a rule's input (the config's own paths are checked by
    ldct.config). Snakemake reads braces in an input as a wildcard and has no escape for an input
    function's paths, so one with braces is refused by name, not left to a WildcardError naming
    neither."""
    if "{" in str(path) or "}" in str(path):
        raise WorkflowError(f"{path}: a path with {{ or }} cannot be a Snakemake input (braces are read as "
                            "wildcards); rename the folder or give a link to it without braces")
    return str(path)


def find_subjects():
    if SYNTHETIC:
        found = subject_ids(config["synthetic"]["n_subjects"])
    elif config["dataset"]["layout"] == "generic":
        found = sorted(config["dataset"]["series"])
    else:
        found = discover_subjects(config["dataset"]["dicom_root"])
    wanted = config["dataset"]["subjects"]
    if wanted:
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise WorkflowError(f"dataset.subjects not found: {', '.join(missing)}")
        found = [s for s in found if s in wanted]
    return found


try:  # a missing DICOM root or split preset: one line, as a config error, not a traceback
    SUBJECTS = find_subjects()
    SPLITS = make_splits(SUBJECTS, config["split"], config["seed"])
except LdctError as err:
    raise WorkflowError(str(err)) from None
if config["split"]["method"] == "preset":  # cases the preset does not name are not converted
    SUBJECTS = [s for s in SUBJECTS if any(s in part for part in SPLITS.values())]
EXPERIMENTS = list(config["experiments"])
# One ExperimentSpec per experiment: what `ldct train --spec` receives (ldct/spec.py).
try:  # builds and probes every model on the meta device (ldct.budget): a broken baseline stops here
    SPECS = {e: ExperimentSpec.from_config(config, e) for e in EXPERIMENTS}
except ConfigError as err:
    raise WorkflowError(str(err))
ROWS = [LDCT] + EXPERIMENTS
# Models trained with and without the anatomical loss (<model>_ana and <model>_l1): the paper's claim.
ANA_PAIRS = [e for e in EXPERIMENTS if e.endswith("_ana") and e[:-4] + "_l1" in EXPERIMENTS]
# Dose sweep (synthetic data): the models are trained at the first dose fraction and every
# experiment and the LDCT row are evaluated at each fraction; on only with more than one.
DOSES = list(dict.fromkeys(config["synthetic"]["dose_fractions"])) if SYNTHETIC else []
DOSE_SWEEP = len(DOSES) > 1
EXTRA_DOSES = [dose_tag(f) for f in DOSES[1:]]  # as in the folder names (0.1 -> "10")


def code_files(*modules):
    """Library modules a rule's output depends on, with every ldct module they import
    (ldct.registry.library_files): listed as inputs, so editing any of them reruns it."""
    return library_files(workflow.basedir, *modules)


def data_code_files(*modules):
    """The data rules' own modules only (synthesis, conversion), not the helpers they import
    (ldct/io.py, ldct/errors.py): their volumes feed every training, so a helper's edit (or a
    helper newly listed) would retrain the whole benchmark; `--forcerun convert` after such an edit."""
    return [str(Path(workflow.basedir, "ldct", f"{m}.py")) for m in modules]


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def nifti_files(subjects, labels=False):
    """The converted volumes a job reads: full and low dose, the labels where asked, and for
    synthetic data the noiseless reconstruction and the repeat scan, which loading a subject
    reads whenever they are there (an undeclared one deleted would silently drop the truth
    columns, or the Noise2Noise target)."""
    names = (["full.nii.gz", "low.nii.gz"] + (["labels.nii.gz"] if labels else [])
             + (["truth.nii.gz", "repeat.nii.gz"] if SYNTHETIC else []))
    return [str(RP.nifti(s) / n) for s in subjects for n in names]


def needs_segmenter(exp):
    return SPECS[exp].needs_segmenter


def model_sources(specs):
    """The code of these model specs (ldct.registry.source_files): a rule's inputs, so editing a
    model's file reruns what it made and adding an unrelated model file does not."""
    import models
    from ldct.registry import source_files

    return source_files(*{models.REGISTRY.get(s["name"]) for s in specs})


def complexity_models():
    """Unique model specs of the experiments, labelled by name (plus kwargs where one name has
    several); a model run with the frozen segmenter gets its width and norm as training and the
    budget build it (ldct.spec.with_segmenter), not its constructor's defaults."""
    from ldct.spec import with_segmenter

    specs = {}
    for exp in EXPERIMENTS:
        spec = with_segmenter(config["experiments"][exp]["model"], config["segmenter"])
        specs.setdefault(spec["name"], {})[as_json(spec)] = spec
    out = {}
    for name, variants in specs.items():
        for spec in variants.values():
            kw = ", ".join(f"{k}={v}" for k, v in sorted(spec.items()) if k != "name")
            out[name if len(variants) == 1 or not kw else f"{name}({kw})"] = spec
    return out


TABLES = ["table1_complexity", "table2_quantitative", "table3_anatomical_dice"] + (["table2_vs_truth"] if SYNTHETIC else [])
FIGURES = ["fig_qualitative", "fig_segmentation", "fig_noise_radius", "fig_training_curves", "fig_learning_curves",
           "fig_metric_distributions"] + (["fig_phantom"] if SYNTHETIC else [])


# Clinical image quality (workflow/rules/clinical.smk): needs the noiseless truth of synthetic data.
CLINICAL = SYNTHETIC and config["clinical"]["enabled"]
CLINICAL_ROWS = ROWS + [NDCT, NOISELESS]
CLINICAL_FIGURES = ["fig_nps", "fig_ttf", "fig_detectability"]
CLINICAL_SUBJECTS = SPLITS["test"][:config["clinical"]["subjects"] or None]


# The report's subcategory of each table and figure (the rest: "Benchmark").
REPORT_GROUPS = {"training": "Training", "fig_training_curves": "Training", "fig_learning_curves": "Training",
                 "table5_clinical": "Clinical image quality", "clinical_stats": "Clinical image quality",
                 "fig_nps": "Clinical image quality", "fig_ttf": "Clinical image quality",
                 "fig_detectability": "Clinical image quality", "table4_dose_sweep": "Dose sweep",
                 "fig_dose_sweep": "Dose sweep"}


def in_report(path, name, category, caption=None):
    """An output bundled by `snakemake --report` with its caption (workflow/report/{caption or
    name}.rst), under `category` and its REPORT_GROUPS subcategory."""
    return report(path, caption=f"../report/{caption or name}.rst", category=category,
                  subcategory=REPORT_GROUPS.get(name, "Benchmark"))


def report_figure(name):
    return in_report(str(RP.figure(name)), name, "Figures")


def report_table(name, ext):
    """A table output; the Markdown version goes into the report."""
    path = str(RP.table(name, ext))
    return in_report(path, name, "Tables") if ext == "md" else path


def report_csv(name, caption=None, category="Tables"):
    """A CSV shown in the report as it is (one with no Markdown version: the training summary,
    the statistics)."""
    return in_report(str(RP.table(name)), name, category, caption)


def paper_outputs():
    return ([str(RP.table(t, e)) for t in TABLES for e in ("csv", "md", "tex")]
            + [str(RP.table("stats")), str(RP.table("dice_stats"))]
            + ([str(RP.table("stats_vs_truth"))] if SYNTHETIC else [])
            + (clinical_outputs() if CLINICAL else [])
            + [str(RP.figure(f)) for f in FIGURES] + [str(RP.manifest)]
            + (dose_sweep_outputs() if DOSE_SWEEP else []))


def clinical_outputs():
    return ([str(RP.table("table5_clinical", e)) for e in ("csv", "md", "tex")] + [str(RP.table("clinical_stats"))]
            + [str(RP.figure(f, e)) for f in CLINICAL_FIGURES for e in ("png", "pdf")])


def dose_sweep_outputs():
    return ([str(RP.table("table4_dose_sweep", e)) for e in ("csv", "md", "tex")]
            + [str(RP.figure("fig_dose_sweep", e)) for e in ("png", "pdf")])


def dose_evaluate_inputs(wc):
    test = SPLITS["test"]
    inp = {"splits": str(RP.splits), "data": nifti_files(test, labels=SYNTHETIC), "code": code_files("evaluate"),
           "low": [str(RP.low_dose(s, f)) for f in DOSES[1:] for s in test]}
    if wc.experiment != LDCT:
        inp["denoised"] = [str(RP.dose_denoised(t, wc.experiment, s)) for t in EXTRA_DOSES for s in test]
    return inp


def sweep_metric_files():
    """Per-slice metrics of every row at every dose (the training dose's are the main ones)."""
    return [str(RP.sweep_metrics(e, f, DOSES[0])) for e in ROWS for f in DOSES]


def convert_inputs(wc):
    """A conversion's inputs: its series folders, and on real data every file it reads as a
    slice (ldct.dicom.series_files): a folder's own time does not change when the files two
    levels down are replaced, so without them new DICOM data would not be reconverted. On real
    data the folders' own times are ignored (ancient): a hidden or notes file dropped into a
    case folder (.DS_Store), which the conversion skips, would otherwise reconvert the case and
    retrain everything after it; a slice added or removed changes the file list instead."""
    code = {"code": data_code_files("dicom")}
    if SYNTHETIC:
        return {"dicom": str(RP.dicom(wc.subject)), "labels": str(RP.phantom(wc.subject) / "labels.nii.gz"), **code}
    root = Path(config["dataset"]["dicom_root"])
    if config["dataset"]["layout"] == "generic":
        folders = config["dataset"]["series"][wc.subject]
        full, low = root / folders["full"], root / folders["low"]
        return {"full": ancient(user_path(full)), "low": ancient(user_path(low)),
                "files": [user_path(p) for p in series_files(full) + series_files(low)], **code}
    return {"dicom": ancient(user_path(root / wc.subject)),
            "files": [user_path(p) for p in series_files(root / wc.subject, recursive=True)], **code}


# The pairing settings of `convert` and `convert-doses`, the latter's low_series and both's
# unpaired_slices only where not the default: the commands of existing runs stay the same.
def _pairing_flags(keys):
    """`section_flags` of these dataset keys, then unpaired_slices where it is not the default."""
    drop = " --unpaired-slices drop" if config["dataset"]["unpaired_slices"] == "drop" else ""
    return f"{section_flags('dataset', config['dataset'], keys)}{drop}"


_LOW_DEFAULT = load_schema()["properties"]["dataset"]["properties"]["low_series"]["default"]
CONVERT_FLAGS = _pairing_flags(SERIES_KEYS)
DOSES_FLAGS = _pairing_flags(["full_series"] if config["dataset"]["low_series"] == _LOW_DEFAULT else SERIES_KEYS)


def series_args(wc, input):
    """How `ldct convert` finds the series: a TCIA subject folder or two generic folders."""
    if "full" in input.keys():
        return f"--full {shlex.quote(input.full)} --low {shlex.quote(input.low)} --subject {shlex.quote(wc.subject)}"
    return f"--subject-dir {shlex.quote(input.dicom)}"


def evaluate_inputs(wc):
    inp = {"splits": str(RP.splits), "segmenter": str(RP.segmenter),
           "ndct_seg": [str(RP.ndct_segmentation(s)) for s in SPLITS["test"]],
           "data": nifti_files(SPLITS["test"], labels=SYNTHETIC), "code": code_files("evaluate")}
    if wc.experiment != LDCT:
        inp["denoised"] = [str(RP.denoised(wc.experiment, s)) for s in SPLITS["test"]]
    return inp


def nifti_root(wc, input):
    """results/{dataset}/nifti, derived from a rule's NIfTI inputs."""
    return str(Path(input.data[0]).parents[1])


def results_root(wc, output):
    """results/{dataset}, derived from a table or figure output."""
    return str(Path(output[0]).parents[1])
