"""docs/RELIABILITY.md is made from what the suite measured (tests/reliability/recorder.py renders it at the end of a
session from the records of the tests that ran). These checks need no other test to have run, so they hold in any
order and on any subset: the fault table names exactly the `@pytest.mark.fault` tests, every measured cell is one the
recorder writes, and every derived part of the doc — the summary (from the table), the corpus counts (from the
corpora, imported) — is what the recorder derives from the doc as it stands."""

import ast
import os
import re

from tests.conftest import ROOT
from tests.reliability.recorder import (
    CONVERGED,
    NOT_COMPARED,
    NOT_CONVERGED,
    NOT_RECORDED,
    NOT_RETRIED,
    RECOVERED,
    blocks,
    corpus_counts,
    fault_rows,
    render,
)

DOC = os.path.join(ROOT, "docs", "RELIABILITY.md")


def marked_fault_tests() -> set[str]:
    found = set()
    for dirpath, _, files in os.walk(os.path.join(ROOT, "tests")):
        for name in files:
            if not (name.startswith("test_") and name.endswith(".py")):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and any(
                        ast.unparse(d).replace(" ", "") in ("pytest.mark.fault", "pytest.mark.fault()")
                        for d in node.decorator_list):
                    found.add(f"{os.path.relpath(path, ROOT)}::{node.name}")
    return found


def doc_rows() -> list[tuple[str, str, str]]:
    with open(DOC, encoding="utf-8") as fh:
        return [(r.fault, r.happens, r.test) for r in fault_rows(fh.read())]


def figure(label: str) -> int:
    with open(DOC, encoding="utf-8") as fh:
        m = re.search(rf"^\| {re.escape(label)} \| (\d+) \|$", fh.read(), re.M)
    assert m, f"docs/RELIABILITY.md has no '| {label} | N |' row"
    return int(m.group(1))


def test_every_injected_fault_is_in_the_reliability_table_and_the_counts_match():
    rows = doc_rows()
    marked = marked_fault_tests()
    named = {test for _, _, test in rows}
    assert len(marked) >= 15, sorted(marked)
    assert named - marked == set(), f"rows naming tests that do not exist or are not marked fault: {named - marked}"
    assert marked - named == set(), f"fault tests missing from docs/RELIABILITY.md: {marked - named}"
    assert all(happens for _, happens, _ in rows)
    assert figure("faults injected") == len(rows)
    # recovered: only the rows whose test recorded that it retried and the retry converged
    with open(DOC, encoding="utf-8") as fh:
        measured = fault_rows(fh.read())
    assert figure(RECOVERED) == sum(r.retry == CONVERGED for r in measured)
    assert figure("data lost") == 0
    assert figure("data lost") == sum(r.data_lost() or 0 for r in measured)


def test_every_measured_cell_of_the_fault_table_is_one_the_recorder_writes():
    with open(DOC, encoding="utf-8") as fh:
        rows = fault_rows(fh.read())
    assert rows
    for row in rows:
        assert row.retry in (CONVERGED, NOT_RETRIED, NOT_CONVERGED, NOT_RECORDED), row
        assert row.lost in (NOT_COMPARED, NOT_RECORDED) or row.data_lost() is not None, row
        assert (row.retry == NOT_RECORDED) == (row.lost == NOT_RECORDED), row  # a test records both or neither


def test_the_derived_parts_of_the_doc_are_what_the_recorder_derives():
    """Summary from the table, bad-input and secret counts from the corpora: render() of the doc changes nothing."""
    with open(DOC, encoding="utf-8") as fh:
        doc = fh.read()
    assert set(blocks(doc)) == {"summary", "bad-input", "secrets", "faults"}
    expected = render(doc)
    assert expected == doc, "\n".join(
        ["docs/RELIABILITY.md is not what its own measurements and the corpora give; derived lines:"]
        + [ln for ln in expected.splitlines() if ln not in doc.splitlines()])
    counts = corpus_counts()
    assert figure("invalid inputs tried") == counts["items"]
    assert f"the {counts['hand_written']} hand-written cases" in doc
