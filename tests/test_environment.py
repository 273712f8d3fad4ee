"""The conda environment files install exactly the pins of pyproject.toml."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return sorted(d.split("#")[0].strip() for d in deps)


def test_rule_environment_matches_pyproject():
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "ldct.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == pins()


def test_every_dependency_is_pinned():
    assert all("==" in p for p in pins())


def test_constraints_pin_what_the_dependencies_pull_in_and_every_install_uses_them():
    """constraints.txt: exact versions of the indirect packages only (a direct one is pinned in
    pyproject.toml, one fact in one place), used by the README's install, CI and environment.yml."""
    import re

    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    lines = [x for x in (ROOT / "constraints.txt").read_text().splitlines() if x and not x.startswith("#")]
    assert len(lines) > 50 and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][\w.+]*", x) for x in lines)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {norm(d.split("==")[0]) for d in pins() + project["optional-dependencies"]["test"]}
    assert not {norm(x.split("==")[0]) for x in lines} & direct
    install = 'pip install -e ".[test]" -c constraints.txt'
    assert install in (ROOT / "README.md").read_text() and install in (ROOT / ".ci" / "run").read_text()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "-c constraints.txt" in next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


def test_environment_yml_installs_the_project():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(p.startswith("-e .") for p in pip)
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])


def test_the_recorded_commit_says_whether_tracked_files_were_changed(tmp_path, monkeypatch):
    """versions()["ldct"]: the package version with the checkout's commit, `+dirty` where a
    tracked file differs from it; the bare version where ldct is not in a git checkout."""
    import subprocess

    from ldct import __version__, provenance

    provenance.project_commit.cache_clear()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    expected = f"{__version__} ({head}" if head else __version__  # CI may test an export without .git
    assert provenance.versions()["ldct"].startswith(expected)
    provenance.project_commit.cache_clear()

    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.project_commit() == __version__
    provenance.project_commit.cache_clear()


def test_a_changed_tracked_file_or_untracked_code_marks_the_commit_dirty(tmp_path):
    """In a checkout of its own (the package copied into a fresh git repository, so the test
    holds where CI tests an export without .git): clean -> '(<commit>)', a tracked file edited
    -> '(<commit>+dirty)'; an untracked file outside the code -> clean again, an untracked
    model file (models/ imports every file in it) -> dirty."""
    import shutil
    import subprocess
    import sys

    from ldct import __version__

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "ldct", repo / "ldct", ignore=shutil.ignore_patterns("__pycache__", "presets"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "ldct"], ["commit", "-q", "-m", "x"]):
        subprocess.run(git + args, check=True, capture_output=True)
    head = subprocess.run(git + ["rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()

    def recorded() -> str:
        code = "from ldct.provenance import project_commit; print(project_commit())"
        return subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert recorded() == f"{__version__} ({head})"
    (repo / "ldct" / "hu.py").write_text((repo / "ldct" / "hu.py").read_text() + "\n# edited\n")
    assert recorded() == f"{__version__} ({head}+dirty)"
    subprocess.run(git + ["checkout", "-q", "ldct/hu.py"], check=True)
    (repo / "notes.txt").write_text("x = 1\n")
    assert recorded() == f"{__version__} ({head})"
    (repo / "models").mkdir()
    (repo / "models" / "README.md").write_text("notes\n")  # not code
    assert recorded() == f"{__version__} ({head})"
    (repo / "models" / "mynet.py").write_text("x = 1\n")
    assert recorded() == f"{__version__} ({head}+dirty)"
