"""Headless Chromium (docker/prod/install-chromium.sh) looking at the Dagster UI as a person would: the page's DOM
once its queries have answered, and a screenshot of it kept in tests/output/."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Callable

from tests.conftest import ROOT

OUTPUT = os.path.join(ROOT, "tests", "output")


def chromium() -> str:
    """The browser's path, installed if missing."""
    proc = subprocess.run(["bash", os.path.join(ROOT, "docker", "prod", "install-chromium.sh")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def shown(text: str, dom: str) -> bool:
    """`text` is a whole text node of the page (a group's label; asset names such as docker_network don't count)."""
    return re.search(rf">\s*{re.escape(text)}\s*<", dom) is not None


def look(url: str, profile: str, screenshot: str, ready: Callable[[str], bool]) -> tuple[str, str]:
    """Load `url` with growing virtual-time budgets until ready(dom) (the page's GraphQL queries and layout take a
    while on a loaded machine); then a screenshot of it at the same budget. Returns (dom, screenshot path)."""
    browser = chromium()
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--window-size=1800,1100", "--hide-scrollbars"]
    dom = ""
    budget = 0
    for budget in (15000, 30000, 60000):
        proc = subprocess.run([*base, f"--virtual-time-budget={budget}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=180)
        dom = proc.stdout
        if ready(dom):
            break
    os.makedirs(OUTPUT, exist_ok=True)
    shot = os.path.join(OUTPUT, screenshot)
    subprocess.run([*base, f"--virtual-time-budget={budget}", f"--screenshot={shot}", url],
                   capture_output=True, text=True, timeout=180)
    return dom, shot
