"""Every measured figure the docs quote comes from a recorded row: each time, size or rate in the measured and
baseline columns of the benchmark tables (the README's headline figures and docs/DEVELOPMENT.md's "Benchmarks") is
written, with its unit, in bench/RESULTS.md, which the bench scripts append to. Ratios and verdicts (the last
column) are computed from those. Prose outside the tables quotes no duration or size that is not in RESULTS.md
either: settings (a tick, a timeout) are named by their setting, not typed as a figure."""

from __future__ import annotations

import glob
import os
import re

import pytest

from tests.conftest import ROOT

FIGURE = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?) ?(ms|s|MB|GiB|GB)(?![\w])")
TABLES = ("README.md", os.path.join("docs", "DEVELOPMENT.md"))
# prose that states settings and bounds (not measurements) in these units; RELIABILITY.md is written by the suite
NOT_FIGURES = {"docs/RELIABILITY.md"}


def recorded() -> str:
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), encoding="utf-8") as fh:
        return fh.read().replace(",", "")


def in_results(number: str, unit: str, results: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(number.replace(',', ''))} ?{re.escape(unit)}(?!\w)", results) is not None


def table_figures(rel: str) -> list[tuple[str, str, str]]:
    """(row's first cell, number, unit) of every figure in the measured and baseline columns of the tables whose
    header is `| figure | measured | baseline (same run) | …`."""
    with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    found, inside = [], False
    for line in lines:
        if line.startswith("| figure | measured | baseline"):
            inside = True
            continue
        if not line.startswith("|"):
            inside = False
        if inside and not line.startswith("|---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            found += [(cells[0][:60], n, u) for cell in cells[1:3] for n, u in FIGURE.findall(cell)]
    return found


@pytest.mark.parametrize("rel", TABLES)
def test_every_figure_of_the_benchmark_tables_is_in_a_recorded_row(rel):
    figures = table_figures(rel)
    assert len(figures) >= 10, f"{rel}: no benchmark table found"
    results = recorded()
    missing = [f"{row}: {n} {u}" for row, n, u in figures if not in_results(n, u, results)]
    assert missing == [], f"{rel} quotes figures bench/RESULTS.md does not record:\n" + "\n".join(missing)


def test_no_approximate_figure_is_typed_into_the_docs():
    """"about 4 minutes", "~15 s": a figure typed by hand. Quote the recorded row, or name the setting."""
    typed = re.compile(r"(?:about|around|roughly|~) ?\d+(?:\.\d+)?(?:–\d+(?:\.\d+)?)? ?(?:ms|s|min|minutes|MB|GiB|GB|×)"
                       r"(?![\w])")
    found = {}
    for path in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]:
        rel = os.path.relpath(path, ROOT)
        if rel in NOT_FIGURES:
            continue
        with open(path, encoding="utf-8") as fh:
            hits = typed.findall(fh.read())
        if hits:
            found[rel] = hits
    assert found == {}, found
