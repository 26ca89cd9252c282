"""A real Ray head on loopback for tests: `ray start --head --block` on free ports, optionally with
token authentication, stopped (with every process it started) when the block exits, even on failure.

`ray stop` is not used: it would also stop the test session's own local Ray instance.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from support.jobrun import session_processes

PORT_OPTIONS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
                "--node-manager-port", "--object-manager-port")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Head:
    dashboard: str  # http://127.0.0.1:PORT, the Jobs API
    gcs: str
    temp_dir: str
    env: dict[str, str]  # the environment the head runs with (its PATH finds this venv's python)


def _processes_of(temp_dir: str) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@contextlib.contextmanager
def ray_head(token: str | None = None, num_cpus: int = 2, env: dict[str, str] | None = None,
             python: str | None = None, discoverable: bool = False):
    """Yield a Head; the cluster runs with RAY_AUTH_MODE=token when a token is given. `python` is the
    interpreter of the cluster (default: this one); its folder comes first on the head's PATH, so
    jobs' entrypoints run `python` from there too. `discoverable`: in Ray's default temp folder,
    where `ray.init()` without an address finds it (as a user's own `ray start --head` would be)."""
    python = python or sys.executable
    import psutil

    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # short: Ray's socket paths have a length limit
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
    head_env = dict(os.environ if env is None else env)
    head_env["PATH"] = f"{Path(python).parent}{os.pathsep}{head_env.get('PATH', '')}"
    head_env.pop("RAY_ADDRESS", None)
    head_env["RAY_USAGE_STATS_ENABLED"] = "0"
    if token:
        head_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    cmd = [python, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())", "start", "--head",
           "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--num-cpus", str(num_cpus),
           "--num-gpus", "0", *([] if discoverable else ["--temp-dir", temp_dir]), "--disable-usage-stats"]
    for option, port in ports.items():
        cmd += [option, str(port)]
    log_path = Path(temp_dir) / "ray-start.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(dashboard=f"http://127.0.0.1:{ports['--dashboard-port']}",
                gcs=f"127.0.0.1:{ports['--port']}", temp_dir=temp_dir, env=head_env)
    try:
        _wait_ready(head, proc, log_path)
        yield head
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # Anything the head started outside its process group (workers, agents) goes too.
        left = _processes_of(temp_dir) if not discoverable else []
        if discoverable:  # the pointer Ray leaves in its default temp folder would name a dead cluster
            with contextlib.suppress(OSError):
                current = Path("/tmp/ray/ray_current_cluster")
                if current.read_text().strip().endswith(":" + head.gcs.split(":")[1]):  # this head's, exactly
                    current.unlink()
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(left, timeout=10)
        log.close()


def _wait_ready(head: Head, proc: subprocess.Popen, log_path: Path, timeout: float = 90) -> None:
    """The Jobs API answers (any HTTP status: 401 is an answer when auth is on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{head.dashboard}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the Ray head did not answer at {head.dashboard} within {timeout:.0f} s:\n"
                       f"{log_path.read_text()[-3000:]}")


NODE_PORT_OPTIONS = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                     "--runtime-env-agent-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port")


@dataclass
class Node:
    """A worker node of a loopback cluster: `ray start --address ... --block` in a process group of
    its own; `kill()` takes the raylet and every worker on it down at once, as a lost machine."""

    proc: subprocess.Popen
    log_path: Path

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def kill_raylet(self) -> None:
        """SIGKILL the node's raylet (a crash, or the OOM killer's choice) on a node that nothing
        supervises (`ray start` without --block has exited; here its --block process goes first,
        since it would SIGKILL the node's other processes a second later): the raylet's agents
        outlive it and tell every driver, with the tail of its log."""
        import psutil

        raylets = [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                   if os.path.basename((p.cmdline() or [""])[0]) == "raylet"]
        if not raylets:
            raise RuntimeError(f"no raylet under the node's process {self.proc.pid}")
        self.proc.kill()
        self.proc.wait(timeout=30)
        for p in raylets:
            p.kill()


def _alive_nodes(head: Head) -> int:
    out = subprocess.run([sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
                          "print(sum(1 for n in ray.nodes() if n['Alive']))", head.gcs],
                         env={**head.env}, capture_output=True, text=True, timeout=60)
    # The last line that is a number: a raylet's log line can follow the count on a busy machine.
    counts = [line for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []
    return int(counts[-1]) if counts else 0


@contextlib.contextmanager
def worker_nodes(head: Head, count: int, num_cpus: int = 1, resources: str | None = None):
    """`count` more nodes on loopback joined to `head`; yields them once the cluster counts them
    all alive, and stops whichever are still running when the block exits."""
    nodes = []
    try:
        for i in range(count):  # one at a time: nodes that register at once on one IP can time out
            ports = dict(zip(NODE_PORT_OPTIONS, free_ports(len(NODE_PORT_OPTIONS)), strict=True))
            cmd = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())", "start",
                   "--address", head.gcs, "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
                   "--num-gpus", "0", "--disable-usage-stats", *(["--resources", resources] if resources else [])]
            for option, port in ports.items():
                cmd += [option, str(port)]
            log_path = Path(head.temp_dir) / f"node-{i}.log"
            log = open(log_path, "wb")  # the node's output, kept for a failing test
            node = Node(subprocess.Popen(cmd, env=head.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True), log_path)
            nodes.append(node)
            deadline = time.monotonic() + 120
            while _alive_nodes(head) < i + 2:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"a worker node exited with {node.proc.returncode}:\n"
                                       f"{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("a worker node did not join within 120 s")
                time.sleep(1.0)
        yield nodes
    finally:
        for n in nodes:  # the whole process group, also of a node whose `ray start` already exited
            n.kill()


def node_running(nodes: list[Node], marker: str) -> Node | None:
    """The first live worker node that hosts a process whose title holds `marker` (a task, an actor)."""
    for node in nodes:
        if node.proc.poll() is None and session_processes(marker, node.proc.pid):
            return node
    return None


def one_lost_node_line(log: str) -> None:
    """A job's output says a node was lost in exactly one line, and none of Ray's own noise about it."""
    lost = [line for line in log.splitlines() if line.startswith("lost node ")]
    assert len(lost) == 1 and re.match(r"lost node [\d.]+ \(node [0-9a-f]{8}\): ", lost[0]), log[-4000:]
    for noise in ("marked dead", "state dump", "(raylet)", "Traceback", "WorkerCrashedError", "NodeDiedError",
                  "Raylet is terminated", "lines of the Raylet logs"):
        assert noise not in log, (noise, log[-4000:])
