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


def test_environment_yml_installs_the_project():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(p.startswith("-e .") for p in pip)
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])
