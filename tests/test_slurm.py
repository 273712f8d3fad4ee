"""profiles/slurm on a real one-node SLURM cluster started on this machine.

The module fixture needs root: it installs slurmctld, slurmd, slurm-client and munge with
apt-get where they are missing, writes a one-node cluster configuration to /etc/slurm (any
files there are backed up and restored; SLURM_CONF alone is not enough, as the plugin's job
steps drop SLURM_* variables before calling srun), starts munged (own key and socket in a temporary
folder), slurmctld and slurmd, and stops them by PID at the end, also when a test fails. Without
root or without the packages the tests are skipped with the reason.

The node is a small stand-in for a GPU node: 8 CPU slots on the machine's cores, 128 GB and one
GPU as SLURM sees them (config_overrides, a GRES backed by /dev/null), so that the profile's
requests (`--gpus=1`, up to 32 GB) are scheduled as on a cluster. Jobs run with the threads of
the local run (`--max-threads 2`), so the numbers can be compared with it.

1. The tiny config runs end to end through the profile, with the profile's site-specific
   values set for this cluster (partition `main`, no account), and gives the tables of a local
   run of the same config.
2. A training job cancelled with scancel after its first checkpoint is resubmitted (retries)
   and resumes from the checkpoint.
A dry run of the shipped profile (GPU and per-rule requests) needs no cluster and runs for
every user. Job ids and wall times appear under "test summaries" (hook in conftest.py).
"""

from __future__ import annotations

import math
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
DOSE_SWEEP = ROOT / "configs" / "dose_sweep.yaml"
GPU_RULES = ("pretrain_segmenter", "train", "denoise", "clinical_measure", "complexity")

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# executable -> Debian package
PACKAGES = {"slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client", "munged": "munge"}
DAEMONS = ("munged", "slurmctld", "slurmd")
SLURM_ETC = Path("/etc/slurm")
MARK = "# written by tests/test_slurm.py"

# Settings of this test cluster only (a site puts its values in the profile's SITE lines):
LOCAL_CLUSTER_ARGS = [
    "--slurm-status-command", "squeue",              # no slurmdbd here, hence no sacct
    "--slurm-init-seconds-before-status-checks", "1",  # first status check after 1 s, not 40
    "--max-threads", "2",                            # the machine's cores: same threads as the local run
]


def which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def pids_of(names) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() in names:
                    out.add(int(d.name))
            except OSError:
                pass
    return out


def marker_of(pid: int) -> str | None:
    """The cluster folder of the run of this test that started a process, or None: the
    daemons, the workflow runs and the job steps all carry LDCT_SLURM_TEST=<folder>."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [v for v in env if v.startswith(b"LDCT_SLURM_TEST=")]
    return found[0].decode().split("=", 1)[1] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_packages() -> str:
    """Install the missing SLURM/munge packages; returns a note on what was done, or skips."""
    missing = sorted({pkg for exe, pkg in PACKAGES.items() if not which(exe)})
    if not missing:
        return "slurm and munge already installed"
    if not which("apt-get"):
        pytest.skip(f"SLURM packages missing ({', '.join(missing)}) and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    before = pids_of(DAEMONS)
    t0 = time.monotonic()
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:  # stale package lists
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, check=False)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    # package scripts may start the daemons: this test started them, so it stops them
    for pid in pids_of(DAEMONS) - before:
        stop_pid(pid)
    still = sorted({pkg for exe, pkg in PACKAGES.items() if not which(exe)})
    if still:
        pytest.skip(f"could not install {', '.join(still)} with apt-get: {(res.stdout + res.stderr)[-500:]}")
    note = f"installed {' '.join(missing)} with apt-get in {time.monotonic() - t0:.0f} s"
    print(note)
    return note


def stop_pid(pid: int, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; reaps our own children."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        if proc is None and not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait(timeout=10)


class Cluster:
    """A one-node SLURM cluster; `env` is the environment for its clients and for Snakemake."""

    def __init__(self, base: Path, host: str, env: dict, note: str):
        self.base, self.host, self.env, self.note = base, host, env, note
        self.procs: dict[str, subprocess.Popen] = {}
        self.backups: list[tuple[Path, Path | None]] = []

    def cmd(self, *args, check=True, timeout=60) -> str:
        res = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {res.stderr}\n{self.logs()}")
        return res.stdout

    def logs(self) -> str:
        out = []
        for f in sorted((self.base / "log").glob("*")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    def job_state(self, jobid: str) -> str:
        return self.cmd("squeue", "-h", "--states=all", "-j", jobid, "-o", "%T", check=False).strip()

    # --- set-up and tear-down
    def install_config(self, name: str, text: str) -> None:
        """Write /etc/slurm/<name>, moving a file that is there aside (restored by stop())."""
        path = SLURM_ETC / name
        backup = path.with_name(path.name + ".ldct-test-backup")
        if path.exists() and MARK not in path.read_text(errors="replace"):
            if backup.exists():
                raise RuntimeError(f"both {path} and {backup} exist: restore one by hand")
            path.rename(backup)
        # (a file of ours there is left over from a killed run; its backup, if any, is restored too)
        self.backups.append((path, backup if backup.exists() else None))
        path.write_text(text)

    def start(self, name: str, args: list[str], user: str | None = None) -> None:
        kw = {"user": user, "group": user} if user else {}
        with open(self.base / "log" / f"{name}.out", "w") as log:
            self.procs[name] = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True, **kw)

    def stop(self) -> None:
        if "slurmctld" in self.procs:
            self.cmd("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.cmd("squeue", "-h", check=False).strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in self.procs:
                stop_pid(self.procs[name].pid, self.procs[name])
        # anything else the daemons or the workflow runs left (job steps) carries our marker
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid() and marker_of(int(d.name)) == str(self.base):
                stop_pid(int(d.name), timeout=5)
        for path, backup in reversed(self.backups):
            path.unlink(missing_ok=True)
            if backup is not None:
                backup.rename(path)
        shutil.rmtree(self.base, ignore_errors=True)


def slurm_conf(base: Path, host: str, ctld_port: int, slurmd_port: int) -> str:
    return f"""{MARK} (a one-node test cluster; removed after the tests)
ClusterName=ldcttest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={base}/munge-run/munge.socket
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
KillWait=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=131072 Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def cluster():
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root on Linux")
    for pid in pids_of(DAEMONS):  # daemons of a killed run of this test are ours to stop
        stale = marker_of(pid)
        if stale is not None:
            owner = Path(stale, "owner.pid").read_text().strip() if Path(stale, "owner.pid").exists() else ""
            if owner.isdigit() and Path(f"/proc/{owner}").exists():
                pytest.skip(f"another run of this test (PID {owner}) has its SLURM cluster up")
            for d in Path("/proc").iterdir():
                if d.name.isdigit() and marker_of(int(d.name)) == stale:
                    stop_pid(int(d.name), timeout=5)
            shutil.rmtree(stale, ignore_errors=True)
    running = pids_of(DAEMONS)
    if running:
        pytest.skip(f"SLURM/munge daemons already run on this machine (PIDs {sorted(running)}); not touching them")
    note = ensure_packages()
    try:
        pwd.getpwnam("munge")
    except KeyError:
        pytest.skip("the munge package did not create its user")

    base = Path(tempfile.mkdtemp(prefix="ldct-slurm-", dir="/tmp"))
    base.chmod(0o755)  # munged runs as the munge user and must reach its folders
    (base / "owner.pid").write_text(str(os.getpid()))
    host = socket.gethostname().split(".")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(SLURM_CONF=str(SLURM_ETC / "slurm.conf"), LDCT_SLURM_TEST=str(base))
    c = Cluster(base, host, env, note)
    try:
        for sub in ("log", "state", "spool", "munge-key", "munge-run"):
            (base / sub).mkdir()
        key = base / "munge-key" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        for p, mode in ((base / "munge-key", 0o700), (key, 0o400), (base / "munge-run", 0o755)):
            shutil.chown(p, "munge", "munge")
            p.chmod(mode)
        run = base / "munge-run"
        c.start("munged", [which("munged"), "-F", f"--key-file={key}", f"--socket={run}/munge.socket",
                           f"--pid-file={run}/munged.pid", f"--seed-file={run}/munged.seed",
                           f"--log-file={base}/log/munged.log"], user="munge")
        wait_for(lambda: (run / "munge.socket").exists(), 20, "munged socket", c)

        SLURM_ETC.mkdir(exist_ok=True)
        c.install_config("slurm.conf", slurm_conf(base, host, free_port(), free_port()))
        c.install_config("gres.conf", f"{MARK}\nNodeName={host} Name=gpu Count=1 File=/dev/null\n")
        c.start("slurmctld", [which("slurmctld"), "-D", "-i"])
        wait_for(lambda: "UP" in c.cmd("scontrol", "ping", check=False), 30, "slurmctld", c)
        c.start("slurmd", [which("slurmd"), "-D"])
        wait_for(lambda: c.cmd("sinfo", "-h", "-n", host, "-o", "%t", check=False).strip() == "idle", 60,
                 "the node to become idle", c)
        print(f"SLURM cluster up: node {host}, daemons {[p.pid for p in c.procs.values()]}")
        yield c
    finally:
        c.stop()


def wait_for(cond, timeout: float, what: str, c: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for name, p in c.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}\n{c.logs()}")
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {what}\n{c.logs()}")


def site_profile(dest: Path) -> Path:
    """profiles/slurm with its site-specific values (the lines marked SITE) set for this cluster:
    partition `main` for every job, no account. Everything else is the shipped profile."""
    text = PROFILE.read_text()
    site_keys = [line.split(":")[0].strip() for line in text.splitlines()
                 if "# SITE" in line and not line.lstrip().startswith("#")]
    assert sorted(site_keys) == ["slurm_account", "slurm_partition", "slurm_partition"], site_keys
    prof = yaml.safe_load(text)
    assert prof["executor"] == "slurm" and prof["retries"] >= 1 and prof["rerun-incomplete"] is True
    del prof["default-resources"]["slurm_account"]
    prof["default-resources"]["slurm_partition"] = "main"
    for rule in GPU_RULES:
        res = prof["set-resources"][rule]
        assert res["gpu"] == 1 and res["slurm_partition"] != prof["default-resources"].get("slurm_partition")
        res["slurm_partition"] = "main"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return dest


@pytest.mark.parametrize("config", [TINY, DOSE_SWEEP], ids=lambda p: p.name)
def test_profile_requests_gpus_and_wall_times(tmp_path, config):
    """Without a cluster (any user): the shipped profile parses, and its dry run shows the
    per-rule requests: every rule that declares a GPU on the GPU partition with its own
    requests, every other job on the CPU partition, no rule left to the defaults by mistake."""
    res = subprocess.run(SNAKEMAKE + ["-n", "--profile", str(PROFILE.parent), "--workflow-profile", "none",
                                      "--configfile", str(config)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    prof = yaml.safe_load(PROFILE.read_text())
    gpu_part = prof["set-resources"]["train"]["slurm_partition"]
    # (a group job's members are printed indented under its header)
    jobs = {m.group(2): m.group(3) for m in re.finditer(r"^( *)rule (\w+):\n(?:\1    .*\n)*?\1    resources: (.*)$", out, re.MULTILINE)}
    gpu_rules = {r for r, res_ in jobs.items() if "gpu=1" in res_}
    assert set(GPU_RULES) <= gpu_rules
    for rule in gpu_rules:
        assert f"slurm_partition={gpu_part}" in jobs[rule], (rule, jobs[rule])
        assert rule in prof["set-threads"] and rule in prof["set-resources"], rule
    assert "runtime=720" in jobs["train"] and "mem_mb=32000" in jobs["train"]
    cpu_part = prof["default-resources"]["slurm_partition"]
    for rule in set(jobs) - gpu_rules:
        asked = "gpu=" in jobs[rule] and "gpu=0" not in jobs[rule]
        assert f"slurm_partition={cpu_part}" in jobs[rule] and not asked, (rule, jobs[rule])
    # the NDCT labels (every row's Dice reference) are made on the CPU partition, as evaluate segments
    # the outputs there: not one on a GPU in TF32 and the other on a CPU
    assert "gpu=0" in jobs["segment_ndct"] and f"slurm_partition={cpu_part}" in jobs["evaluate"]
    if config == DOSE_SWEEP:
        assert {"denoise_doses", "convert_doses", "evaluate_doses", "dose_sweep"} <= set(jobs)
        assert "denoise_doses" in gpu_rules
    # every evaluation job goes in a bundle of at most group-components of them (one sbatch each)
    size = prof["group-components"]["evaluation"]
    bundles = [re.findall(r"^    rule (\w+):", m.group(1), re.MULTILINE)
               for m in re.finditer(r"Group job evaluation .*\n((?:(?!\[).*\n)*)", out)]
    evaluations = re.findall(r"^ *rule (evaluate(?:_doses)?):", out, re.MULTILINE)
    assert sorted(r for b in bundles for r in b) == sorted(evaluations) and len(evaluations) >= 3, (bundles, evaluations)
    assert all(1 <= len(b) <= size for b in bundles) and len(bundles) == math.ceil(len(evaluations) / size), bundles


JOB_LINE = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/(?:rule|group)_([A-Za-z0-9_]+)/")


def slurm_jobs(output: str) -> list[tuple[str, str]]:
    """(rule, SLURM job id) of every submission in a Snakemake log; a group job's "rule" is
    the group's name and its first member's rule (`evaluation_evaluate`)."""
    return [(m.group(2), m.group(1)) for m in JOB_LINE.finditer(output)]


def start_snakemake(args, cwd: Path, log: Path, env=None) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        return subprocess.Popen(SNAKEMAKE + args, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return log.read_text(errors="replace")


# Both runs share the machine's cores (2 in CI, where the pair took ~15 min): generous, so a
# slow CI machine fails on a wrong result, not on the clock.
TINY_DEADLINE_S = 2400


@pytest.fixture(scope="module")
def tiny_runs(cluster, tmp_path_factory):
    """The tiny config through profiles/slurm on the cluster and, at the same time, locally."""
    base = tmp_path_factory.mktemp("slurm_tiny")
    profile = site_profile(base / "profile")
    common = ["--configfile", str(TINY)]
    t0 = time.monotonic()
    remote = start_snakemake(common + ["--config", f"results={base / 'slurm' / 'results'}", "--profile", str(profile),
                                       "--workflow-profile", "none", *LOCAL_CLUSTER_ARGS],
                             base / "slurm", base / "slurm.log", env=cluster.env)
    local = start_snakemake(common + ["--config", f"results={base / 'local' / 'results'}", "--cores", "2"],
                            base / "local", base / "local.log")
    ended = {}
    while len(ended) < 2 and time.monotonic() - t0 < TINY_DEADLINE_S:
        for name, proc in (("remote", remote), ("local", local)):
            if name not in ended and proc.poll() is not None:
                ended[name] = time.monotonic() - t0
        time.sleep(0.5)
    local_out = finish(local, base / "local.log", 1)
    remote_out = finish(remote, base / "slurm.log", 1)
    return {"base": base, "profile": profile, "wall": ended.get("remote", math.inf), "local_wall": ended.get("local", math.inf),
            "remote": remote, "remote_out": remote_out, "local": local, "local_out": local_out,
            "slurm": base / "slurm" / "results" / "tiny", "ref": base / "local" / "results" / "tiny"}


TIMING = re.compile(r"latency|seconds|_s$|time|memory|samples_per_s")


def test_tiny_workflow_on_slurm_matches_local_run(cluster, tiny_runs, record_property):
    r = tiny_runs
    assert r["local"].returncode == 0, r["local_out"][-3000:]
    assert r["remote"].returncode == 0, r["remote_out"][-4000:] + cluster.logs()
    jobs = slurm_jobs(r["remote_out"])
    rules = {rule for rule, _ in jobs}
    assert {"synthesize", "convert", "pretrain_segmenter", "train", "denoise", "tables", "figures"} <= rules
    # the evaluation jobs (3 here: two experiments and the LDCT row) went as one bundle (the
    # profile's group `evaluation`, up to 4 per sbatch), each still its own Snakemake job
    assert "evaluate" not in rules and len([rule for rule in rules if rule.startswith("evaluation")]) == 1, jobs
    assert r["remote_out"].count("rule evaluate:") == 3
    ids = sorted(int(jid) for _, jid in jobs)
    summary = (f"{len(jobs)} SLURM jobs (ids {ids[0]}-{ids[-1]}), the tiny workflow in {r['wall']:.0f} s "
               f"through profiles/slurm (the local run alongside: {r['local_wall']:.0f} s); {cluster.note}")
    print(summary)
    record_property("summary", summary)

    tables = sorted(p.name for p in (r["ref"] / "tables").glob("*.csv"))
    assert "table2_quantitative.csv" in tables and "table1_complexity.csv" in tables
    for name in tables:
        ref = pd.read_csv(r["ref"] / "tables" / name)
        got = pd.read_csv(r["slurm"] / "tables" / name)
        keep = [c for c in ref.columns if not TIMING.search(c)]
        assert list(got.columns) == list(ref.columns), name
        pd.testing.assert_frame_equal(got[keep], ref[keep], check_exact=True, obj=name)  # bit-identical
    for fig in sorted((r["ref"] / "figures").glob("*.png")):
        assert (r["slurm"] / "figures" / fig.name).stat().st_size > 5000, fig.name
    # the GPU rules asked SLURM for a GPU (--gpus=1 from `resources: gpu=1`)
    gpu_job = next(jid for rule, jid in jobs if rule == "train")
    assert "gres:gpu:1" in cluster.cmd("scontrol", "show", "job", gpu_job)


def test_cancelled_training_job_is_resubmitted_and_resumes(cluster, tiny_runs, tmp_path, record_property):
    """scancel after the first checkpoint: the retry continues from last.pt, not from epoch 1."""
    r = tiny_runs
    if r["remote"].returncode != 0:
        pytest.skip("the tiny SLURM run failed (see the test above)")
    cfg = yaml.safe_load(TINY.read_text())
    epochs = 6  # of about 2 s each here: the job is cancelled within 0.2 s of the first checkpoint
    cfg["experiments"] = {"edcnn_resume": {"model": {"name": "edcnn", "channels": 8, "stages": 3}, "loss": {"name": "l1"},
                                           "train": {"epochs": epochs, "iters_per_epoch": 20}}}
    cfg["train"]["budget"] = {"protocol": "fixed"}  # this experiment's own epochs
    cfg_file = tmp_path / "resume.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    results = r["slurm"].parent  # reuse the converted data of the tiny run: only training runs
    workdir = r["base"] / "slurm"
    target = results / "tiny" / "train" / "edcnn_resume" / "model.pt"
    last = results / "tiny" / "checkpoints" / "edcnn_resume" / "last.pt"
    log = tmp_path / "snakemake.log"
    t0 = time.monotonic()
    proc = start_snakemake(["--configfile", str(cfg_file), "--config", f"results={results}", "--profile", str(r["profile"]),
                            "--workflow-profile", "none", *LOCAL_CLUSTER_ARGS, str(target)], workdir, log, env=cluster.env)
    try:
        deadline = time.monotonic() + 300
        while not last.exists():
            assert proc.poll() is None, "Snakemake ended before the first checkpoint:\n" + log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 300 s:\n" + log.read_text()[-3000:]
            time.sleep(0.2)
        running = [line.split("|") for line in cluster.cmd("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k").split()]
        first = [jid for jid, comment in running if comment == "rule_train_wildcards_edcnn_resume"]
        assert len(first) == 1, running
        cluster.cmd("scancel", first[0])
    finally:
        out = finish(proc, log, 600)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, out[-4000:] + cluster.logs()
    train_jobs = [jid for rule, jid in slurm_jobs(out) if rule == "train"]
    assert train_jobs[0] == first[0] and len(train_jobs) == 2, train_jobs
    assert cluster.job_state(first[0]) == "CANCELLED"
    assert cluster.job_state(train_jobs[1]) == "COMPLETED"

    train_log = (results / "tiny" / "logs" / "train" / "edcnn_resume.log").read_text()  # the retry's log
    m = re.search(r"resuming from \S*last\.pt after epoch (\d+)", train_log)
    assert m, train_log[-2000:]
    resumed_after = int(m.group(1))
    assert 1 <= resumed_after < epochs
    trained = [int(e) for e in re.findall(r"^edcnn_resume: epoch (\d+): loss", train_log, flags=re.MULTILINE)]
    assert trained == list(range(resumed_after + 1, epochs + 1)), trained  # no epoch trained twice
    hist = pd.read_csv(results / "tiny" / "train" / "edcnn_resume" / "history.csv")
    assert list(hist["epoch"]) == list(range(1, epochs + 1))
    summary = (f"training job {first[0]} cancelled after epoch {resumed_after} checkpoint, resubmitted as "
               f"{train_jobs[1]}, resumed and finished epochs {resumed_after + 1}-{epochs} ({wall:.0f} s)")
    print(summary)
    record_property("summary", summary)
