"""README "Add a baseline": one file in models/ plus one experiment entry puts a model in
every table and figure."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> tuple[str, dict]:
    """The model file and the experiment entry exactly as README's "Add a baseline" shows them."""
    section = (ROOT / "README.md").read_text().split("## Add a baseline", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    entry = yaml.safe_load(textwrap.dedent(re.search(r"```yaml\n(.*?)```", section, re.S).group(1)))
    return textwrap.dedent(code), entry["experiments"]["mynet_l1"]


def test_one_file_and_one_config_entry(tmp_path):
    name = f"tmpbaseline{os.getpid()}"
    module = ROOT / "models" / f"{name}.py"
    code, entry = readme_example()
    assert '@register("mynet")' in code and entry["model"]["name"] == "mynet"
    module.write_text(code.replace('"mynet"', f'"{name}"'))
    try:
        cfg = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
        cfg["experiments"][f"{name}_l1"] = {**entry, "model": {**entry["model"], "name": name}}
        cfgfile = tmp_path / "cfg.yaml"
        cfgfile.write_text(yaml.safe_dump(cfg, sort_keys=False))
        res = subprocess.run([sys.executable, "-c", f"import models, torch; m = models.build('{name}'); "
                              "print(m(torch.zeros(1, 1, 13, 17)).shape)"], capture_output=True, text=True, cwd=tmp_path)
        assert res.returncode == 0 and "[1, 1, 13, 17]" in res.stdout, res.stderr
        res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--cores", "1",
                              "--configfile", str(cfgfile)], capture_output=True, text=True, cwd=tmp_path)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        assert f"results/tiny/train/{name}_l1/model.pt" in out            # trained
        assert f"results/tiny/eval/{name}_l1/metrics.csv" in out          # evaluated -> Table 2, figures
        assert f"--experiments LDCT featkpn_ana edcnn_l1 {name}_l1" in out  # a row of tables and figures
        assert f'"{name}": {{"channels": 64, "depth": 4, "name": "{name}"}}' in out    # a row of Table 1
    finally:
        module.unlink()


def test_the_readme_example_gets_the_compute_budget_not_the_step_cap(tmp_path):
    """The README's example (and its numbers: 480 steps, 0.99 x 10^12 MACs under config.yaml)
    trains on the same compute as the default rows; a model the step cap stops is no example."""
    from ldct.config import load_config, validate_config
    from ldct.spec import ExperimentSpec

    name = f"tmpbaseline{os.getpid()}b"
    code, entry = readme_example()
    module = ROOT / "models" / f"{name}.py"
    module.write_text(code.replace('"mynet"', f'"{name}"'))
    import models

    try:
        models.REGISTRY.import_all("models", models.__path__)
        cfg = load_config(ROOT / "config.yaml")
        cfg["experiments"]["mynet_l1"] = {**entry, "model": {**entry["model"], "name": name}}
        spec = ExperimentSpec.from_config(validate_config(cfg), "mynet_l1")
        # the README's cheaper variant, which the step cap stops first (it said 0.0127 x 10^12)
        cfg["experiments"]["mynet_l1"]["model"]["depth"] = 2
        two = ExperimentSpec.from_config(validate_config(cfg), "mynet_l1")
    finally:
        module.unlink()
        models.REGISTRY._items.pop(name, None)  # later tests see the registry as shipped
        sys.modules.pop(f"models.{name}", None)
    assert spec.budget["steps"] == 480 and spec.budget["tera_macs"] == pytest.approx(0.99, abs=0.01)
    assert spec.budget["steps"] < cfg["train"]["budget"]["steps"]
    assert two.budget["steps"] == 800 and two.budget["tera_macs"] == pytest.approx(0.0255, abs=0.00005)
