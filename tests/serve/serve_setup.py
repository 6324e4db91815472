"""What the server tests share: the image limits the test server runs with, and starting `eve-ms serve`."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

MAX_IMAGE_BYTES = 64 * 1024  # small limits, so oversized images stay cheap to send
MAX_IMAGE_PIXELS = 1_000_000
STARTUP_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(checkpoint: str, log_path: Path, *extra: str):
    """`eve-ms serve` in a subprocess; yields its base URL once /health answers; stops it afterwards."""
    import httpx

    port = free_port()
    env = dict(os.environ, GLOG_v="3", EVE_DEVICE_TARGET="CPU")
    command = [sys.executable, "-m", "eve_ms.cli", "serve", "--checkpoint", checkpoint, "--port", str(port),
               "--log-level", "warning", *extra]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"eve-ms serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"eve-ms serve did not answer in {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # uvicorn shuts down cleanly, then re-raises the SIGTERM it caught: -15 here, and no traceback in the log
    log = log_path.read_text()
    assert process.returncode in (0, -signal.SIGTERM) and "Traceback" not in log, log[-3000:]
