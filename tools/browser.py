"""A headless Chromium for the clinician page's tests (`tests/serving/test_ui.py`).

    .venv/bin/python -m tools.browser    # install Debian's chromium when missing (root only)

Playwright's own `playwright install` downloads a browser build from the internet, which this
project's machines cannot reach; Debian's `chromium` package comes through the package index like
every other system package, and Playwright drives it by `executable_path`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


def chromium() -> Path | None:
    """The Chromium binary, or None when none is installed."""
    if CHROMIUM.is_file():
        return CHROMIUM
    found = shutil.which("chromium")
    return Path(found) if found else None


def ensure_chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing (root only; else the command to run
    is named)."""
    found = chromium()
    if found is not None:
        return found
    if os.geteuid() != 0:
        sys.exit("spinecast browser tests: chromium missing; install it (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)  # a fresh machine has no lists
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
        check=True,
        env=env,
    )
    found = chromium()
    if found is None:
        sys.exit("spinecast browser tests: apt-get installed chromium, but no binary was found")
    return found


if __name__ == "__main__":
    print(ensure_chromium())
