"""Beam's portability framework on this machine: Beam's own local job service and an external
SDK worker pool, each its own process on 127.0.0.1 (the protocol of the Flink and Spark
portable runners and of Dataflow Runner v2). Used by the portable-runner test and
bench/bench_beam.py; by hand it is:

  python -m apache_beam.runners.portability.local_job_service_main --port 8099 &
  python -m apache_beam.runners.worker.worker_pool_main --service_port 50000 &
  triplet-tfx run --beam-runner portable --beam-job-endpoint localhost:8099 \\
      --beam-environment-type EXTERNAL --beam-environment-config localhost:50000

The pool starts every SDK worker as `python` from PATH, so the project's interpreter (its virtual
environment) comes first on PATH; PYTHONPATH is inherited (a worktree's import path).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Iterator

from triplet_tfx.components.config import BeamConfig

JOB_SERVICE_MODULE = "apache_beam.runners.portability.local_job_service_main"
WORKER_POOL_MODULE = "apache_beam.runners.worker.worker_pool_main"
JOB_SERVICE_LOG = "job_service.log"
WORKER_POOL_LOG = "worker_pool.log"


def _start(module: str, port_flag: str, port: int, log_path: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    with open(log_path, "w") as log:
        # Its own process group: stopping it also stops the SDK workers a pool started.
        return subprocess.Popen(
            [sys.executable, "-m", module, f"{port_flag}={port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def local_job_service_and_worker_pool(log_dir: str, ready_timeout_s: float = 120.0) -> Iterator[BeamConfig]:
    """Starts both on free ports, waits until their gRPC servers accept connections, yields the
    `portable` BeamConfig that reaches them, and always stops them (logs stay in log_dir)."""
    import grpc
    import portpicker

    job_port, pool_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    processes = []
    try:
        processes.append(_start(JOB_SERVICE_MODULE, "--port", job_port, os.path.join(log_dir, JOB_SERVICE_LOG)))
        processes.append(
            _start(WORKER_POOL_MODULE, "--service_port", pool_port, os.path.join(log_dir, WORKER_POOL_LOG))
        )
        for process, port in zip(processes, (job_port, pool_port)):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=ready_timeout_s)
                except grpc.FutureTimeoutError:
                    raise RuntimeError(
                        f"{' '.join(process.args)} did not accept connections on port {port} "
                        f"within {ready_timeout_s:.0f} s (log: {log_dir})"
                    ) from None
        yield BeamConfig(
            runner="portable",
            job_endpoint=f"127.0.0.1:{job_port}",
            environment_type="EXTERNAL",
            environment_config=f"127.0.0.1:{pool_port}",
        )
    finally:
        for process in processes:
            _stop(process)
