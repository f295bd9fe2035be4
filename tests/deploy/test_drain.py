"""What a replica does when Kubernetes stops it: the preStop drain, then SIGTERM to tritonserver.

A real tritonserver on a one-model repository (a Python model that sleeps as long as asked), so it starts
in seconds, in both ways a container runs it: TritonServer.exec (the images' entrypoint: tritonserver is
PID 1) and `python -m tritonrag.triton.serve`, which forwards SIGTERM. tritonserver 2.51 on SIGTERM: the
HTTP endpoint stops accepting connections at once (so /v2/health/ready fails and the pod leaves the
Service), in-flight requests finish, the models unload, exit 0 within --exit-timeout-secs. The preStop
drain (tritonrag.triton.drain) is checked against a stand-in metrics endpoint serving the engine's gauges.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests

from polling import wait_for
from tritonrag.metrics import RUNNING, WAITING
from tritonrag.triton import drain
from tritonrag.triton.server import free_port

MODEL = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            seconds = float(pb_utils.get_input_tensor_by_name(request, "seconds").as_numpy().reshape(-1)[0])
            time.sleep(seconds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("done", np.array([1], dtype=np.int32))]))
        return responses
"""
CONFIG = """
name: "slow"
backend: "python"
max_batch_size: 0
input [ { name: "seconds" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "done" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 2 } ]
"""
EXIT_TIMEOUT = 20


def exec_command(repo: Path, ports: dict[str, int]) -> list[str]:
    """What the images' entrypoint runs (TritonServer.exec), on free loopback ports."""
    code = (
        "import sys; from tritonrag.triton.server import TritonServer\n"
        "TritonServer(sys.argv[1], *map(int, sys.argv[2:5]), extra_args=sys.argv[5:]).exec()"
    )
    ports_ = [str(ports[k]) for k in ("http", "grpc", "metrics")]
    return [sys.executable, "-c", code, str(repo), *ports_, f"--exit-timeout-secs={EXIT_TIMEOUT}"]


def serve_command(repo: Path, ports: dict[str, int]) -> list[str]:
    """`make serve`'s process, which forwards SIGTERM to its tritonserver child."""
    command = [sys.executable, "-m", "tritonrag.triton.serve", "--model-repository", str(repo)]
    command += ["--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"])]
    command += ["--metrics-port", str(ports["metrics"]), "--exit-timeout", str(EXIT_TIMEOUT)]
    usage = subprocess.run([*command[:3], "--help"], capture_output=True, text=True, timeout=60).stdout
    return command + (["--openai-port", "0"] if "--openai-port" in usage else [])  # tritonserver only


@pytest.fixture(params=["exec", "serve"])
def serve(request, tmp_path):
    (tmp_path / "repo" / "slow" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "slow" / "1" / "model.py").write_text(MODEL)
    (tmp_path / "repo" / "slow" / "config.pbtxt").write_text(CONFIG)
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    log = open(tmp_path / "serve.log", "w")
    command = {"exec": exec_command, "serve": serve_command}[request.param](tmp_path / "repo", ports)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: ready(ports["http"]) == 200, 180), (tmp_path / "serve.log").read_text()[-3000:]
        yield process, ports, tmp_path / "serve.log"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        log.close()


def ready(port: int):
    try:
        with requests.Session() as session:
            return session.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code
    except requests.RequestException as exc:
        return type(exc).__name__


def infer_slow(grpc_port: int, seconds: float) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        tensor = grpcclient.InferInput("seconds", [1], "FP32")
        tensor.set_data_from_numpy(np.array([seconds], dtype=np.float32))
        return client.infer("slow", [tensor]).as_numpy("done")


@pytest.mark.server
def test_sigterm_drains_in_flight_requests_and_exits_cleanly(serve):
    process, ports, log = serve
    results = {}
    worker = threading.Thread(target=lambda: results.update(done=infer_slow(ports["grpc"], 4.0)))
    worker.start()
    time.sleep(1.0)  # the request is in the model now
    process.send_signal(signal.SIGTERM)

    assert wait_for(lambda: ready(ports["http"]) != 200, 10), "still ready after SIGTERM"
    worker.join(EXIT_TIMEOUT + 30)
    assert results.get("done") is not None and results["done"].tolist() == [1], "the in-flight request was cut"
    assert process.wait(EXIT_TIMEOUT + 60) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Exit timeout expired" not in text, "the drain ran into its timeout (an HTTP connection left open?)"
    assert "successfully unloaded 'slow'" in text


# ---- the preStop drain ------------------------------------------------------------------------------------


class EngineGauges:
    """A stand-in for tritonserver's metrics endpoint: the engine's gauges for two versions, as served."""

    def __init__(self, in_flight: list[int]):
        self.in_flight = in_flight  # one value per scrape; the last one repeats
        self.scrapes = 0
        gauges = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                value = gauges.in_flight[min(gauges.scrapes, len(gauges.in_flight) - 1)]
                gauges.scrapes += 1
                body = (
                    f"# TYPE {RUNNING.name} gauge\n"
                    f'{RUNNING.name}{{model="generator",version="1"}} {value}\n'
                    f'{RUNNING.name}{{model="generator",version="2"}} 0\n'
                    f"# TYPE {WAITING.name} gauge\n"
                    f'{WAITING.name}{{model="generator",version="1"}} 0\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"

    def close(self):
        self.server.shutdown()


def test_drain_waits_until_the_engine_is_idle_twice():
    gauges = EngineGauges([3, 2, 1, 0, 2, 0, 0, 0])  # a request arrived between two idle scrapes
    try:
        outcome = drain.wait_until_idle(gauges.url, max_wait=30, interval=0.01)
    finally:
        gauges.close()
    assert outcome.startswith("idle") and gauges.scrapes == 7


def test_drain_gives_up_at_its_bound():
    gauges = EngineGauges([1])
    try:
        outcome = drain.wait_until_idle(gauges.url, max_wait=0.3, interval=0.05)
    finally:
        gauges.close()
    assert outcome.startswith("gave up") and "1 requests" in outcome


def test_drain_returns_when_the_server_is_gone():
    assert drain.wait_until_idle(f"http://127.0.0.1:{free_port()}/metrics", max_wait=30).startswith("metrics endpoint")
