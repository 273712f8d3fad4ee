"""The code stays easy to change: short functions, and evaluation apart from training."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
REASON = "Long because"  # a function may pass the limit when its docstring says why


def functions(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def test_no_function_over_60_lines_without_a_reason():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for folder in ("ldct", "models", "losses") for path, node in functions(folder)
            if node.end_lineno - node.lineno + 1 > MAX_LINES and REASON not in (ast.get_docstring(node) or "")]
    assert not long, "split these functions or say in their docstring why not:\n" + "\n".join(long)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_evaluation_does_not_import_the_training_engine():
    """Evaluation and reporting load models through ldct.inference, never through training."""
    training = {"ldct.train", "ldct.engine", "ldct.anatomy"}
    for module in ("evaluate", "figures", "tables", "inference", "metrics", "stats"):
        imported = imported_modules(ROOT / "ldct" / f"{module}.py")
        assert not imported & training, f"ldct/{module}.py imports {imported & training}"


def test_a_training_job_depends_on_its_own_model_and_loss_code_only():
    """ExperimentSpec.source_files (a training job's code inputs): the model's and loss's files,
    the models/ and losses/ modules they import, and the segmenter's where one is used; an
    unrelated model's file is not among them, so adding one retrains nothing."""
    from ldct.config import validate_config
    from ldct.spec import ExperimentSpec

    cfg = validate_config({"experiments": {"featkpn_ana": {"model": {"name": "featkpn"}, "loss": {"name": "l1_l1ana_1"}},
                                           "edcnn_l1": {"model": {"name": "edcnn"}, "loss": {"name": "l1"}}}})
    rel = lambda e: {str(Path(p).relative_to(ROOT)) for p in ExperimentSpec.from_config(cfg, e).source_files()}  # noqa: E731
    assert rel("featkpn_ana") == {"models/__init__.py", "models/featkpn.py", "models/_blocks.py", "models/_kernel_ops.py",
                                  "models/unet.py", "losses/__init__.py", "losses/anatomical.py"}
    assert rel("edcnn_l1") == {"models/__init__.py", "models/edcnn.py", "losses/__init__.py", "losses/pixel.py"}


def test_a_relative_import_of_a_shared_helper_counts_as_the_models_code(tmp_path, monkeypatch):
    """`from ._blocks import ...` was skipped (only absolute imports were followed): editing the
    helper retrained nothing."""
    import importlib
    import sys

    from ldct.registry import source_files

    pkg = tmp_path / "models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_helper.py").write_text("X = 1\n")
    (pkg / "net.py").write_text("from ._helper import X\nfrom . import _helper\n\n\nclass Net:\n    pass\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        monkeypatch.delitem(sys.modules, name)
    net = importlib.import_module("models.net").Net
    assert {Path(p).name for p in source_files(net)} == {"__init__.py", "_helper.py", "net.py"}


def test_a_rule_depends_on_the_library_modules_its_code_imports():
    """library_files (the code inputs of the workflow's rules) follows ldct imports, at the top
    and inside functions: the tables rule listed tables.py and stats.py only, so a change to
    how metrics.py averages infinite PSNRs, or to a window in hu.py, reran no table."""
    from ldct.registry import library_files

    names = lambda *m: {Path(p).stem for p in library_files(ROOT, *m)}  # noqa: E731
    assert {"tables", "stats", "metrics", "hu", "classes", "budget", "observer"} <= names("tables")
    assert names("metrics") == {"metrics", "hu", "errors"}
    assert {"evaluate", "metrics", "hu", "data"} <= names("evaluate")
    assert "__init__" not in names("tables") and "train" not in names("evaluate")
    assert names("dicom") == {"dicom", "errors", "io"}
    from ldct.errors import LdctError

    with pytest.raises(LdctError, match="no module tabels"):  # a misspelled rule input, not an empty list
        library_files(ROOT, "tabels")


def test_the_workflow_lists_each_rules_library_code():
    """Which rules list ldct code (README, on reruns): every rule after training, their
    imports' closure; the data rules their own modules only (a shared helper's edit
    would retrain everything); the trainings none."""
    import re

    text = {p.name: p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk")}
    rules = {}
    for body in text.values():
        for m in re.finditer(r"^ *rule (\w+):\n(.*?)(?=^ *rule |\Z)", body, re.S | re.M):
            rules[m[1]] = m[2]
    closure = {r for r, b in rules.items() if "code=code_files(" in b}
    own = {r for r, b in rules.items() if "code=data_code_files(" in b}
    assert {"denoise", "segment_ndct", "complexity", "tables", "figures", "clinical_report"} <= closure
    assert {"template_fields", "synthesize", "convert_doses"} <= own
    # nothing upstream of training gains a code input: a rule that reruns once rewrites what every
    # training reads, and Snakemake reruns a job whose input another job updated, same bytes or not
    assert not {"train", "pretrain_segmenter", "split"} & (closure | own)
    common = text["common.smk"]
    assert 'code_files("evaluate")' in common and 'data_code_files("dicom")' in common  # evaluate and convert inputs


def test_the_readmes_architecture_names_every_library_module_and_tracked_folder():
    """A newcomer reads the Architecture section as the map: nine ldct/ modules and the docs/,
    workflow/report/ and .ci/ folders were missing from it."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Architecture"):]
    modules = sorted(p.name for p in (ROOT / "ldct").glob("*.py") if p.name != "__init__.py")
    missing = [m for m in modules if not re.search(rf"ldct[./]{m[:-3]}\b", section)]
    assert not missing, f"README Architecture does not name {missing}"
    start = section.index("```")
    tree = section[start:section.index("```", start + 3)]
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = sorted({f.split("/")[0] for f in files if "/" in f} | {"/".join(f.split("/")[:2]) for f in files
                                                                  if f.startswith("workflow/") and f.count("/") > 1})
    missing = [d for d in folders if f"{d}/" not in tree]
    assert not missing, f"README Architecture's tree does not name {missing}"


def test_every_table_and_figure_the_report_shows_has_its_own_caption_and_every_caption_is_used():
    """The report gave five tables one shared caption (which spoke of Table 4 where there was none
    and never of table2_vs_truth), and left out anatomical_effect and training.csv."""
    rules = "\n".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    shown = set(re.findall(r'"((?:table\d|fig_)\w+|anatomical_effect|training|statistics)"', rules))
    captions = {p.stem for p in (ROOT / "workflow" / "report").glob("*.rst")} - {"workflow"}
    assert shown == captions, f"no caption: {sorted(shown - captions)}; unused: {sorted(captions - shown)}"
    assert 'report_table("anatomical_effect"' in rules and 'report_csv("training")' in rules
    assert not re.search(r'category="Statistics"|"Statistics"\)', rules)  # Snakemake's own panel's name
