"""Run a real tritonserver from the nvidia-pytriton wheel: backend directory, environment, readiness.

The wheel bundles tritonserver 2.51, the Python backend and one stub per Python
version. The stub finds its interpreter's prefix through `python3` on PATH (it
ignores PYTHONPATH), so the server is started with this virtualenv's bin/ first
on PATH; then every model imports the virtualenv's packages, ours included.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from tritonrag.paths import MODEL_REPOSITORY, REPO_ROOT, artifacts_dir
from tritonrag.triton.inference_key import INFERENCE_APIS, INFERENCE_HEADER, INFERENCE_KEY_ENV, restricted_rule
from tritonrag.triton.loopback import GRPC_ROOT_CERT_ENV, GRPC_URL_ENV

BACKEND_NAME = "tritonrag_llm"
PYTRITON_DIR = "pytriton/tritonserver"


def _site_packages() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parents[1]


def tritonserver_binary() -> Path:
    return _site_packages() / PYTRITON_DIR / "bin" / "tritonserver"


def server_library_dirs() -> list[str]:
    """The wheel's bundled libraries, and the libpython of the interpreter behind this venv.

    The stub links `libpython3.X.so.1.0` by soname and would find the system's copy; when
    this venv's interpreter is another build (pyenv, say), its stdlib extension modules
    need its own libpython (e.g. `_ssl` fails with an undefined symbol otherwise).
    """
    dirs = [str(_site_packages() / "nvidia_pytriton.libs")]
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and library and (Path(libdir) / library).exists():
        dirs.insert(0, libdir)
    return dirs


def assemble_backend_dir(target: Path | None = None) -> Path:
    """Build `<target>/python` (Triton's Python backend) and `<target>/tritonrag_llm` (ours).

    Our backend directory is a symlink to the repository's `backends/tritonrag_llm`, so
    edits take effect on the next server start without re-assembling.
    """
    target = target or artifacts_dir() / "backends"
    bundled = _site_packages() / PYTRITON_DIR
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = {
        "libtriton_python.so": bundled / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": bundled / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": bundled / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    for name, source in sources.items():
        dest = python_dir / name
        if not dest.exists() or dest.stat().st_mtime < source.stat().st_mtime:
            shutil.copy2(source, dest)
    ours = target / BACKEND_NAME
    if not ours.is_symlink():
        if ours.exists():
            shutil.rmtree(ours)
        ours.symlink_to(REPO_ROOT / "backends" / BACKEND_NAME, target_is_directory=True)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_key() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class GrpcTls:
    """TLS on Triton's gRPC endpoint: the server's certificate and key, and the root certificate(s)
    that verify it (for a self-signed certificate, the certificate itself). The certificate must name
    the address clients dial, and 127.0.0.1 too: the `llm` router dials its own server there."""

    cert: Path
    key: Path
    root: Path

    def args(self) -> list[str]:
        return ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]


ADMIN_KEY_ENV = "TRITONRAG_ADMIN_KEY"
ADMIN_HEADER = "tritonrag-admin-key"  # lower case: gRPC metadata keys are
ADMIN_APIS = ("shared-memory", "model-repository", "trace", "logging")  # load/unload, log and trace settings


@dataclass
class TritonServer:
    """A tritonserver child process on loopback ports; a context manager for tests and tools."""

    model_repository: Path = MODEL_REPOSITORY
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    bind_address: str = "127.0.0.1"  # HTTP and gRPC; a container binds 0.0.0.0 so probes and Services reach it
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    tls: GrpcTls | None = None  # gRPC over TLS (Triton's HTTP endpoint has no TLS: bind it to loopback)
    process: subprocess.Popen | None = None
    # Triton's admin APIs (ADMIN_APIS) answer only with this key in the ADMIN_HEADER header (HTTP and
    # gRPC metadata): $TRITONRAG_ADMIN_KEY, else a random key no one knows (admin calls refused). None: open.
    admin_key: str | None = field(default_factory=lambda: os.environ.get(ADMIN_KEY_ENV) or new_key(), repr=False)
    # An option: inference (INFERENCE_APIS) answers only with this key in the INFERENCE_HEADER header, and the
    # llm router's loopback sends it (tritonrag.triton.inference_key). $TRITONRAG_INFERENCE_KEY; None: open.
    inference_key: str | None = field(default_factory=lambda: os.environ.get(INFERENCE_KEY_ENV) or None, repr=False)

    @classmethod
    def on_free_ports(cls, **kwargs) -> TritonServer:
        return cls(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), **kwargs)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={assemble_backend_dir()}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.bind_address}",
            f"--grpc-address={self.bind_address}",
            "--allow-metrics=true",
            "--allow-cpu-metrics=true",
            "--allow-gpu-metrics=false",
            # Triton's own latency distributions per model: quantile summaries (nv_inference_*_summary_us)
            # in 2.51; histograms (nv_inference_first_response_histogram_ms) from 2.52, which 2.51 ignores.
            "--metrics-config=summary_latencies=true",
            "--metrics-config=histogram_latencies=true",
            *self.restricted_args(),
            *(self.tls.args() if self.tls is not None else []),
            *self.extra_args,
        ]

    def restricted_args(self) -> list[str]:
        """Triton 2.51's restricted-API flags: the admin groups need the admin key; inference needs the inference
        key when there is one (a flag per rule, each rule its own header; checked: both hold); health never."""
        rules = []
        if self.admin_key is not None:
            rules.append(restricted_rule(ADMIN_APIS, ADMIN_HEADER, self.admin_key))
        if self.inference_key is not None:
            rules.append(restricted_rule(INFERENCE_APIS, INFERENCE_HEADER, self.inference_key))
        return [
            arg for rule in rules for arg in (f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}")
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (*server_library_dirs(), env.get("LD_LIBRARY_PATH", "")) if p
        )
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("TRITONRAG_ARTIFACTS", str(artifacts_dir()))
        # The llm router reaches the generator through this server's own gRPC endpoint (tritonrag.triton.loopback).
        loopback = "127.0.0.1" if self.bind_address in ("0.0.0.0", "127.0.0.1", "") else self.bind_address
        env[GRPC_URL_ENV] = f"{loopback}:{self.grpc_port}"
        if self.tls is not None:
            env[GRPC_ROOT_CERT_ENV] = str(self.tls.root)
        else:
            env.pop(GRPC_ROOT_CERT_ENV, None)
        # The router's loopback sends the key it finds here (model_repository/llm); none when inference is open.
        if self.inference_key is not None:
            env[INFERENCE_KEY_ENV] = self.inference_key
        else:
            env.pop(INFERENCE_KEY_ENV, None)
        return env

    def start(self, foreground: bool = False) -> TritonServer:
        out = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "w")
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=not foreground,
        )
        return self

    def exec(self) -> NoReturn:
        """Become tritonserver (execve): a container's PID 1 then gets the kubelet's SIGTERM itself and drains.

        No readiness wait and no child to forward signals to: what deploy/docker/entrypoint.sh runs.
        """
        command = self.command()
        os.execve(command[0], command, self.environment())

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Wait until every model is loaded (server ready), or raise with the log's tail."""
        import tritonclient.http as httpclient

        deadline = time.monotonic() + timeout
        # Closed when done: tritonserver's shutdown waits (up to its exit timeout) for open HTTP
        # connections, and a keep-alive one left here would make every stop run into that timeout.
        client = httpclient.InferenceServerClient(self.http_url)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"tritonserver exited with {self.process.returncode}\n{self.log_tail()}")
                try:
                    if client.is_server_ready():
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.5)
        finally:
            client.close()
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL) if self.process.pid else None
            self.process.wait(10)

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except Exception:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
