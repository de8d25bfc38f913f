"""Downloading an output: streamed to a file, retried when the transfer breaks, checked for length
(and content hash where one is known)."""

import time
from pathlib import Path

import httpx

from ..files import sha256_of


class TransferError(RuntimeError):
    """The output could not be fetched intact."""


def download(url: str, target: Path, sha256: str | None = None, attempts: int = 4) -> None:
    """Fetch `url` into `target` (overwritten), retrying broken transfers with backoff."""
    for attempt in range(1, attempts + 1):
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
                response.raise_for_status()
                expected = response.headers.get("content-length")
                with open(target, "wb") as file:
                    for block in response.iter_bytes(1024 * 1024):
                        file.write(block)
            if expected is not None and target.stat().st_size != int(expected):
                raise httpx.ReadError(f"the output arrived short ({target.stat().st_size} of {expected} bytes)")
            break
        except httpx.TransportError:
            if attempt == attempts:
                raise
            time.sleep(0.5 * 2**attempt)
    if sha256 is not None and sha256_of(target) != sha256:
        raise TransferError(f"The output fetched from the fleet does not match its sha256 {sha256[:12]}.")
