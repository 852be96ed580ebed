"""The cluster files and multi-node sweeps, on real Ray: `pytest -m cluster` runs exactly these (they also
run in the full `pytest` run; about 4 minutes on a 2-core machine).

* cluster.yaml and cluster-local.yaml pass Ray's own validation, a misspelt key fails it, and both start
  Ray with token authentication and a dashboard bound to 127.0.0.1.
* Two Ray nodes on this machine (`ray start`, one logical GPU each): a sweep at --gpus-per-trial 0.5 puts
  trials on both; a second sweep loses the worker node (all its processes killed) in the middle of a
  trial and still ends with every trial finished exactly once, the interrupted one on the head.
* End to end as a user: `ray up -y cluster-local.yaml`, the smoke preset submitted with `ray job submit`
  (token auth: a request without the token is refused), its Parquet read with pandas, `ray down -y`.

The end-to-end test needs `ssh root@127.0.0.1` with the key that `.ci/cluster-setup.sh` sets up; where CI
is unset and that is missing, it is skipped with that reason (in CI it fails instead). It leaves sshd
running (the setup script owns it), creates ~/.ray/auth_token if missing (as `ray.init()` does) and, like
any `ray up` of cluster-local.yaml, leaves the copied checkout in ~/ebomlc and ray_bootstrap_config.yaml /
ray_bootstrap_key.pem in ~.
"""
from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster_helpers import RAY, RayNode, command_line, free_port, port_in_use, ssh_to_localhost_works

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
CLUSTER_FILES = ["cluster.yaml", "cluster-local.yaml"]
TINY_TRIAL = dict(dataset="synthetic", model="resnet8", width=8, batch_size=32, clean_batch_size=32,
                  synthetic_train=600, synthetic_test=200, synthetic_classes=4, synthetic_image_size=8,
                  clean_fraction=0.1, noise="uniform", noise_rate=0.4, device="cpu")


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def write_sweep(path: Path, *, seeds: range, epochs: int) -> Path:
    """A sweep file (tune/grid.py format): erm on tiny synthetic data, one trial per seed."""
    path.write_text(yaml.safe_dump({"base": {**TINY_TRIAL, "epochs": epochs}, "methods": ["erm"],
                                    "seeds": list(seeds)}))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without RAY_ADDRESS (nothing may join another cluster by accident), without usage
    statistics (they would be sent off this machine), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", **extra}


# ---------------------------------------------------------------- the cluster files

@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_passes_ray_validation(name):
    validate_config(prepare_config(load(name)))


@pytest.mark.parametrize("name, path, misspelt", [
    ("cluster.yaml", ("setup_commands",), "setup_comands"),
    ("cluster.yaml", ("available_node_types", "gpu_worker", "max_workers"), "max_worker"),
    ("cluster-local.yaml", ("auth", "ssh_user"), "ssh_usr"),
])
def test_misspelt_key_fails_ray_validation(name, path, misspelt):
    config = load(name)
    parent = functools.reduce(dict.__getitem__, path[:-1], config)
    parent[misspelt] = parent.pop(path[-1])
    with pytest.raises(jsonschema.ValidationError, match=f"'{misspelt}' was unexpected"):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_uses_token_auth_and_a_private_dashboard(name):
    config = load(name)
    starts = [command for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
              if "ray start" in command]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in command for command in starts)
    assert "--dashboard-host=127.0.0.1" in starts[0]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"   # the token, copied to every node
    commands = [command for key, value in config.items() if key.endswith("_commands") for command in value]
    assert not any("0.0.0.0" in command for command in commands)
    assert "security_group" not in config["provider"]   # Ray's default group: ssh only from outside


# ---------------------------------------------------------------- two nodes on this machine

@dataclass
class TwoNodes:
    address: str
    head: RayNode
    worker: RayNode
    env: dict[str, str]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A head and a worker node on this machine, 2 CPUs and 1 logical GPU each, token auth with a token of
    their own; every port they would take by default (6379, 10001, 52365) is a free one instead."""
    logs = tmp_path_factory.mktemp("two-nodes")
    ray_dirs = Path(tempfile.mkdtemp(prefix="ebc-", dir="/tmp"))   # short: Ray's socket paths must stay < 108 bytes
    token = logs / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    port = free_port()

    each_node = ["--num-cpus=2", "--num-gpus=1", "--object-store-memory=200000000", "--dashboard-agent-listen-port=0"]
    nodes = []
    try:
        nodes.append(RayNode(["--head", f"--port={port}", "--include-dashboard=false",
                              f"--ray-client-server-port={free_port()}", *each_node],
                             env=env, temp_dir=ray_dirs / "head", log=logs / "head.log"))
        nodes.append(RayNode([f"--address=127.0.0.1:{port}", *each_node],
                             env=env, temp_dir=ray_dirs / "worker", log=logs / "worker.log"))
        yield TwoNodes(f"127.0.0.1:{port}", *nodes, env)
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(ray_dirs, ignore_errors=True)


def sweep_command(cluster: TwoNodes, sweep: Path, storage: Path, name: str) -> list[str]:
    return [sys.executable, str(REPO / "tune" / "sweep.py"), "--address", cluster.address, "--config", str(sweep),
            "--storage", str(storage), "--name", name, "--gpus-per-trial", "0.5"]


def test_sweep_places_trials_on_both_nodes(two_nodes, tmp_path):
    # 4 trials at 0.5 GPU: the head holds 2 at a time, so 2 go to the worker, provided that the head's
    # first trials still train when the worker's trial processes are up (with reuse_actors, Tune gives a
    # waiting trial to a freed actor rather than to one still starting; here the worker's start about 4 s
    # later): hence 10 epochs, about 12 s
    sweep = write_sweep(tmp_path / "sweep.yaml", seeds=range(4), epochs=10)
    run = subprocess.run(sweep_command(two_nodes, sweep, tmp_path / "results", "placed"), env=two_nodes.env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "results" / "placed" / "trials")
    assert len(trials) == 4 and trials["trial_id"].is_unique and (trials["status"] == "ok").all()
    assert set(trials["node_id"]) == {two_nodes.head.node_id, two_nodes.worker.node_id}


def running_trial_with_checkpoint(node: RayNode, experiment: Path) -> str | None:
    """The id of a trial that `node` is running and that has saved a checkpoint, or None. A trial's process
    is titled ray::ImplicitFunc... and works in Tune's working_dirs/<trial name>, whose name ends in the id."""
    for pid in node.pids():
        argv = command_line(pid)
        if not argv or not argv[0].startswith("ray::ImplicitFunc"):
            continue
        try:
            trial_dir = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:   # the process has just ended
            continue
        if trial_dir.parent.name == "working_dirs" and any(experiment.glob(f"tune/run-*/{trial_dir.name}/checkpoint_*")):
            return trial_dir.name.rsplit("_", 1)[1]
    return None


def test_sweep_survives_losing_the_worker_node(two_nodes, tmp_path):
    # runs after test_sweep_places_trials_on_both_nodes: it kills the module's worker node
    sweep = write_sweep(tmp_path / "sweep.yaml", seeds=range(4, 8), epochs=6)
    experiment = tmp_path / "results" / "lost-worker"
    with open(tmp_path / "sweep.log", "w") as log:
        driver = subprocess.Popen(sweep_command(two_nodes, sweep, tmp_path / "results", "lost-worker"),
                                  env=two_nodes.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while (interrupted := running_trial_with_checkpoint(two_nodes.worker, experiment)) is None:
            assert driver.poll() is None and time.monotonic() < deadline, \
                "no trial on the worker node reached a checkpoint while the sweep ran"
            time.sleep(0.2)
        two_nodes.worker.kill()
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    trials = pd.read_parquet(experiment / "trials").set_index("trial_id")
    assert len(trials) == 4 and trials.index.is_unique and (trials["status"] == "ok").all()
    assert trials.loc[interrupted, "node_id"] == two_nodes.head.node_id   # retried on the node that was left
    epochs = pd.read_parquet(experiment / "epochs")
    assert sorted(epochs.loc[epochs["trial_id"] == interrupted, "epoch"]) == list(range(6))   # each epoch once


# ---------------------------------------------------------------- ray up / job submit / ray down

def ray_cli(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def local_cluster():
    """cluster-local.yaml brought up with `ray up` from the checkout, and always brought down."""
    if not ssh_to_localhost_works():
        reason = "ssh -i /root/.ssh/ebomlc_cluster root@127.0.0.1 does not work: run `sudo bash .ci/cluster-setup.sh`"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    busy = [port for port in (6379, 8265, 10001) if port_in_use(port)]
    assert not busy, f"ports {busy} are taken (another Ray head on this machine?); cluster-local.yaml's head needs them"
    env = clean_env()
    generated = ray_cli("get-auth-token", "--generate", env=env, timeout=60)   # no-op when ~/.ray/auth_token exists
    assert generated.returncode == 0, generated.stderr
    try:
        up = ray_cli("up", "-y", "cluster-local.yaml", env=env, timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield env
    finally:
        down = ray_cli("down", "-y", "cluster-local.yaml", env=env, timeout=180)
        assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]


def dashboard_status(url: str) -> int | None:
    """The HTTP status of a GET of `url` without a token, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except urllib.error.URLError:
        return None


def test_ray_up_job_submit_read_results_ray_down(local_cluster, tmp_path):
    dashboard = "http://127.0.0.1:8265"   # the head is this machine; elsewhere: `ray dashboard cluster-local.yaml`
    deadline = time.monotonic() + 60   # `ray up` can return before the dashboard listens
    while (status := dashboard_status(f"{dashboard}/api/jobs/")) is None and time.monotonic() < deadline:
        time.sleep(1)
    assert status == 401   # no token, no access
    # the smoke preset, as a user would run it; --working-dir .: the job runs this checkout (uploaded;
    # .gitignore applies). RAY_AUTH_MODE=token makes the Jobs CLI send the token in ~/.ray/auth_token
    submit = ray_cli("job", "submit", "--address", dashboard, "--working-dir", ".", "--",
                     "python", "tune/sweep.py", "--address", "auto", "--preset", "smoke",
                     "--storage", str(tmp_path / "results"),
                     env={**local_cluster, "RAY_AUTH_MODE": "token"}, timeout=400)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    summary = re.search(r"sweep smoke: (\d+) trials: (\d+) done", submit.stdout)
    assert summary and summary[1] == summary[2], submit.stdout[-3000:]
    trials = pd.read_parquet(tmp_path / "results" / "smoke" / "trials")
    assert len(trials) == int(summary[1]) and trials["trial_id"].is_unique and (trials["status"] == "ok").all()
    assert (Path.home() / "ebomlc" / "tune" / "sweep.py").is_file()   # file_mounts copied the checkout
