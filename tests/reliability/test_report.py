"""docs/RELIABILITY.md is kept true by the suite. Its fault table names, for every fault, the test that injects it;
this test checks that the table and the `@pytest.mark.fault` tests are the same set, and that the summary counts
match the table. (A fault test that fails fails the suite, so on a green suite every listed fault was recovered
from; the bad-input and secret figures are asserted by test_bad_input.py and test_secret_hunt.py.)"""

import ast
import os
import re

from tests.conftest import ROOT

DOC = os.path.join(ROOT, "docs", "RELIABILITY.md")
ROW = re.compile(r"^\|(?P<fault>[^|]+)\|(?P<happens>[^|]+)\|\s*`(?P<test>tests/[^`]+::\w+)`\s*\|\s*$")


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
        return [(m["fault"].strip(), m["happens"].strip(), m["test"]) for line in fh if (m := ROW.match(line))]


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
    assert figure("recovered (reported clearly, nothing half-changed, a retry converged)") == len(rows)
    assert figure("data lost") == 0
