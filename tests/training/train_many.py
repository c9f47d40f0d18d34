"""``python -m tests.training.train_many A.yaml B.yaml ...`` (under torchrun): ``alignlab train`` on
each config in turn, in the same processes. The equivalence tests launch their two-process runs
this way, all of a test module's cases in one launch: each launch of two processes pays about ten
seconds of interpreter and import start-up on the 2-core CI machine, more than a run of these tiny
models takes. Each run starts and ends its own process group, as in a launch of its own. Stops at
the first run that fails (a process whose run failed cannot tell whether the other's did); each
run that ends well leaves ``<config>.done`` beside its config, written by the first process. The
process group is the launcher's, kept from one run to the next, and the processes end as
``alignlab`` run as the program ends them (``cli._exit_launched``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from alignlab.cli import _exit_launched, main


def free_port() -> str:
    """A port no one listens on now: tests running in parallel (pytest-xdist) must not share one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launch_env() -> dict[str, str]:
    """The environment of a test's launched processes: one intra-op thread each (two processes
    share the 2-core machine with the other test worker), and this checkout importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def launch_all(configs: dict[str, dict], root: Path) -> subprocess.CompletedProcess:
    """Each of ``configs`` (name -> config) written to ``root/<name>.yaml`` and trained by two
    processes under torchrun, all in one launch; a test checks for its run's ``.done`` (see the
    module docstring) and shows the launch's stderr where it is missing."""
    paths = []
    for name, cfg in configs.items():
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        paths.append(str(path))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           free_port(), "-m", "tests.training.train_many", *paths], env=launch_env(), cwd=root,
                          capture_output=True, text=True, timeout=600)


def check_done(root: Path, name: str, launch: subprocess.CompletedProcess) -> None:
    assert (root / f"{name}.yaml.done").exists(), launch.stderr[-3000:]


def run_all(paths: list[str]) -> int:
    for path in paths:
        code = main(["train", path])
        if code != 0:
            print(f"train_many: {path} ended with status {code}", file=sys.stderr)
            return code
        if os.environ.get("RANK", "0") == "0":
            Path(path + ".done").write_text("")
    return 0


if __name__ == "__main__":
    status = run_all(sys.argv[1:])
    _exit_launched(status)
    sys.exit(status)
