"""Shared test fixtures: where the provided media and reference vectors live."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LATENTSYNC_SHARED_DIR", REPO.parent / "shared"))
ASSETS = SHARED / "assets"
REFERENCE = SHARED / "reference"

pytest_plugins = ("tests.app_server",)  # the web app server, shared by test_app.py and test_browser.py


def pytest_configure(config):
    if not REFERENCE.is_dir():
        raise pytest.UsageError(
            f"Test data not found at {SHARED}: place the shared/ folder beside the repository "
            "or point LATENTSYNC_SHARED_DIR at it."
        )


def pytest_terminal_summary(terminalreporter):
    from tests.parity import summary_lines

    lines = summary_lines()
    if lines:
        terminalreporter.write_sep("-", "distance from the official reference vectors (tests/parity.py)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def reference() -> Path:
    return REFERENCE
