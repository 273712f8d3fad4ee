"""README "Add a baseline": one file in models/ plus one experiment entry puts a model in
every table and figure."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

MODULE = '''
import torch.nn as nn
from models import register


@register("{name}")
class TmpNet(nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)
'''


def test_one_file_and_one_config_entry(tmp_path):
    name = f"tmpbaseline{os.getpid()}"
    module = ROOT / "models" / f"{name}.py"
    module.write_text(MODULE.format(name=name))
    try:
        cfg = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
        cfg["experiments"][f"{name}_l1"] = {"model": {"name": name, "channels": 4}, "loss": {"name": "l1"}}
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
        assert f'"{name}": {{"channels": 4, "name": "{name}"}}' in out    # a row of Table 1
    finally:
        module.unlink()
