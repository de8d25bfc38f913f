"""The worker's own Cog server, on 127.0.0.1 only, driven through Cog's HTTP API as Replicate's
own queue worker did: the image's `python -m cog.server.http` started by the worker (or one
already running beside it), one prediction at a time, the job key as the prediction id.

- `PUT /predictions/<key>` (no `Prefer: respond-async`) holds the request until the prediction
  ends and answers with it: output, error or canceled. The same schema, validation, cancel and
  outputs apply as on Replicate. A 422 is a bad input (the job fails at once); a 409 means the
  server is still busy with something else (it is asked again); a 202 means this id already runs
  there, left by a worker that died on this machine: it is canceled and sent again, never adopted
  (its result would be reported by no one).
- `POST /predictions/<key>/cancel` stops a prediction within about a denoising window.
- Cog's port has no authentication (`/predictions`, `/shutdown`): it listens on 127.0.0.1 and is
  never published. A server the worker starts dies with the worker (Linux: PR_SET_PDEATHSIG).
"""

import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx

REQUEST_TIMEOUT_S = 10.0  # every call but the prediction itself


class CogError(RuntimeError):
    """The local Cog server is gone or not usable: the job goes back to the queue."""


class InputRefused(ValueError):
    """Cog refused the input (422): the job fails at once, with Cog's sentence."""


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class LocalCog:
    """A Cog server on this machine's loopback (see the module doc).

    Args:
        url: a Cog server already running on 127.0.0.1; None starts one.
        upload_url: the --upload-url of a server this starts (where it puts outputs).
    """

    def __init__(self, url: str | None = None, upload_url: str | None = None):
        self.process = None
        if url is None:
            port = _free_port()
            env = {**os.environ, "PORT": str(port), "COG_MAX_CONCURRENCY": "1"}
            command = [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1", *(["--upload-url", upload_url] if upload_url else [])]
            self.process = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
            url = f"http://127.0.0.1:{port}"
        elif not is_loopback(urlsplit(url).hostname):
            raise ValueError(f"The Cog server must be on this machine's loopback (127.0.0.1): its port has no authentication; got {url}.")
        self.url = url.rstrip("/")
        self.port = urlsplit(self.url).port
        self.http = httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S)

    def wait_ready(self, timeout_s: float, stopping=None) -> None:
        """Until /health-check says READY (setup done); CogError if setup fails or the server exits."""
        deadline = time.time() + timeout_s
        while time.time() < deadline and not (stopping and stopping.is_set()):
            self.check_alive()
            health = self.health()
            if health and health.get("status") == "READY":
                return
            if health and health.get("status") in ("SETUP_FAILED", "DEFUNCT"):
                logs = [line for line in ((health.get("setup") or {}).get("logs") or "").splitlines() if line.strip()]
                raise CogError(f"The Cog server's setup failed: {logs[-1] if logs else health['status']}")
            time.sleep(0.5)
        if not (stopping and stopping.is_set()):
            raise CogError(f"The Cog server at {self.url} was not ready after {timeout_s:.0f} s.")

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise CogError(f"The Cog server exited (status {self.process.returncode}).")

    def health(self) -> dict | None:
        try:
            response = self.http.get("/health-check")
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def predict(self, key: str, inputs: dict, timeout_s: float) -> dict:
        """Run prediction `key` and return Cog's final record of it (succeeded, failed or canceled)."""
        waited_busy = 0.0
        while True:
            try:
                response = self.http.put(f"/predictions/{key}", json={"input": inputs}, timeout=httpx.Timeout(REQUEST_TIMEOUT_S, read=timeout_s))
            except httpx.ReadTimeout:
                self.cancel(key)
                raise CogError(f"The prediction ran for more than {timeout_s:.0f} s.") from None
            except httpx.HTTPError as error:
                raise CogError(f"The Cog server stopped answering ({type(error).__name__}).") from None
            if response.status_code == 422:
                raise InputRefused(_refusal(response))
            if response.status_code in (202, 409) and waited_busy < 120:  # an old prediction still runs there
                if response.status_code == 202:
                    self.cancel(key)
                time.sleep(1.0)
                waited_busy += 1.0
                continue
            if response.status_code != 200:
                raise CogError(f"The Cog server answered {response.status_code} to the prediction.")
            return response.json()

    def cancel(self, key: str) -> None:
        try:
            self.http.post(f"/predictions/{key}/cancel")
        except httpx.HTTPError:
            pass  # gone already: nothing runs there

    def stop(self) -> None:
        """Stop a server this started (SIGTERM, then SIGKILL after 30 s)."""
        self.http.close()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def _refusal(response: httpx.Response) -> str:
    """Cog's 422 as one sentence: "guidance_scale: 9 is greater than the maximum of 3.0"."""
    try:
        detail = response.json().get("detail") or response.json().get("error")
    except ValueError:
        return "the model refused the input"
    if isinstance(detail, list):
        parts = [f"{item.get('loc', ['', ''])[-1]}: {item.get('msg')}" for item in detail if isinstance(item, dict)]
        return "; ".join(parts) or "the model refused the input"
    return str(detail)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the worker dies, however the worker dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
