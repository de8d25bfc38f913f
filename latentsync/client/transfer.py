"""Downloading an output: streamed to a file, retried when the transfer breaks, checked for length."""

import time
from pathlib import Path

import httpx


def download(url: str, target: Path, attempts: int = 4) -> None:
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
