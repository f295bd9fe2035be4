"""Run tritonserver on the model repository in the foreground; optionally ask one streamed question.

python -m tritonrag.triton.serve [--demo "question"] [--exit-after-demo] [--grpc-port 8001 ...] [--openai-port 9000]
                                [--bind 0.0.0.0] [--exit-timeout 30] [--inference-key-env TRITONRAG_INFERENCE_KEY]

SIGTERM is passed on to tritonserver, which then shuts down as it does on its own SIGTERM (its HTTP
endpoint closes at once; in-flight requests get up to --exit-timeout seconds; the models unload).
Inference is locked with a key when $TRITONRAG_INFERENCE_KEY is set (or the variable --inference-key-env
names): the key is read from the environment, never from this command line, and reaches the demo and the
OpenAI service through theirs (tritonrag.triton.inference_key).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tritonrag.paths import MODEL_REPOSITORY
from tritonrag.triton.inference_key import INFERENCE_KEY_ENV, inference_key
from tritonrag.triton.server import GrpcTls, TritonServer


def client_environment(server: TritonServer) -> dict[str, str]:
    """The environment of our clients of `server` (demo, OpenAI service): its inference key, or none."""
    env = dict(os.environ)
    if server.inference_key is not None:
        env[INFERENCE_KEY_ENV] = server.inference_key
    else:
        env.pop(INFERENCE_KEY_ENV, None)
    return env


def ask_demo(server: TritonServer, question: str) -> None:
    """Ask through the streaming CLI as a user would, in its own process (the server side imports no client)."""
    print(f"\n>>> {question}\n", flush=True)
    tls = ["--root-cert", str(server.tls.root)] if server.tls is not None else []
    command = [sys.executable, "-m", "tritonrag_clients.ask", question, "--url", server.grpc_url, *tls]
    subprocess.run(command, check=True, env=client_environment(server))


def forward_sigterm(server: TritonServer) -> None:
    """Pass SIGTERM on to tritonserver; this process then waits for it to exit.

    Without this, SIGTERM ends this process at once and leaves tritonserver running without it.
    """

    def handler(signum, frame):
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


def start_openai(server: TritonServer, host: str, port: int) -> subprocess.Popen | None:
    """The OpenAI-compatible API and the ask page (`python -m tritonrag.openai`) in their own process."""
    if not port:
        return None
    command = [sys.executable, "-m", "tritonrag.openai", "--triton-url", server.grpc_url, "--host", host]
    if server.tls is not None:
        command += ["--triton-root-cert", str(server.tls.root)]
    return subprocess.Popen([*command, "--port", str(port)], env=client_environment(server))


def wait_openai(process: subprocess.Popen, port: int, timeout: float = 300.0) -> bool:
    """True once the service accepts connections (uvicorn listens only after its start-up is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.5)
    return False


def _shown(server: TritonServer) -> list[str]:
    """The command line as printed: the keys masked (the console and its logs need not hold them)."""
    keys = [k for k in (server.admin_key, server.inference_key) if k]
    masked = []
    for arg in server.command():
        for key in keys:
            arg = arg.replace(key, "***")
        masked.append(arg)
    return masked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--demo", default=None, help="a question to ask once the server is ready")
    parser.add_argument("--exit-after-demo", action="store_true")
    parser.add_argument("--openai-port", type=int, default=9000, help="the OpenAI API and ask page (0: not started)")
    parser.add_argument("--bind", default="127.0.0.1", help="HTTP and gRPC address (0.0.0.0 in a container)")
    parser.add_argument(
        "--exit-timeout", type=int, default=30, help="seconds in-flight requests get after SIGTERM or Ctrl-C"
    )
    parser.add_argument("--grpc-tls-cert", type=Path, default=None, help="gRPC over TLS: the server certificate")
    parser.add_argument("--grpc-tls-key", type=Path, default=None, help="gRPC over TLS: its private key")
    parser.add_argument(
        "--grpc-tls-root", type=Path, default=None, help="what verifies the certificate (default: the certificate)"
    )
    parser.add_argument(
        "--inference-key-env",
        metavar="NAME",
        default=INFERENCE_KEY_ENV,
        help="lock inference with the key in this environment variable (unset or empty: inference open)",
    )
    args = parser.parse_args(argv)
    if (args.grpc_tls_cert is None) != (args.grpc_tls_key is None):
        parser.error("--grpc-tls-cert and --grpc-tls-key go together")
    tls = None
    if args.grpc_tls_cert is not None:
        tls = GrpcTls(args.grpc_tls_cert, args.grpc_tls_key, args.grpc_tls_root or args.grpc_tls_cert)

    server = TritonServer(
        args.model_repository,
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        bind_address=args.bind,
        extra_args=[f"--exit-timeout-secs={args.exit_timeout}"],
        tls=tls,
        inference_key=inference_key(args.inference_key_env),
    )
    print("starting tritonserver: " + " ".join(_shown(server)), flush=True)
    server.start(foreground=True)
    forward_sigterm(server)
    started = time.monotonic()
    openai: subprocess.Popen | None = None
    try:
        server.wait_ready(timeout=600)
        print(f"\nserver ready in {time.monotonic() - started:.0f} s: every model loaded and warmed up", flush=True)
        openai = None if args.exit_after_demo else start_openai(server, args.bind, args.openai_port)
        if args.demo:
            ask_demo(server, args.demo)
            if args.exit_after_demo:
                return 0
        print(
            f'\nAsk it something:  make ask Q="How do I read a file line by line?"\n'
            f"  gRPC {server.grpc_url}   HTTP {server.http_url}   metrics {server.metrics_url}\n"
            "Ctrl-C stops the server.",
            flush=True,
        )
        if openai is not None and wait_openai(openai, args.openai_port):
            base = f"http://127.0.0.1:{args.openai_port}"
            print(
                f"  OpenAI API  {base}/v1   (keys from TRITONRAG_API_KEYS, if set)\n  Ask page    {base}/", flush=True
            )
        return server.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if openai is not None:
            openai.terminate()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
