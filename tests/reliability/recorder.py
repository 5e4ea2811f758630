"""What the reliability tests measured, and docs/RELIABILITY.md made from it.

A test takes the `measured` fixture and records what it measured, next to the assertions that measure it:

    lost = measured.compare("rows", expected=rows_in_the_database, actual=rows_in_the_backup)
    assert lost == 0
    assert measured.retried(converged=retry.success)   # after the test removed the fault and re-ran the operation

    measured.count(tried=1, located_validate=1, located_sensor=1, crashes=0)   # figures summed over a corpus

At the end of the session (`pytest_sessionfinish`, so the order the tests ran in does not matter) the records of the
tests that passed are joined with the outcomes of every test that ran, and docs/RELIABILITY.md is rendered from them:

- the fault table's last two cells of each row ("retried after the fault was removed", "data lost") come from the
  records of that row's test — "not recorded" when the test records nothing (then it is not counted as recovered);
- the summary is computed from the fault table and the figures below it, never typed;
- the bad-input figures are derived from the corpus (`tests/reliability/test_bad_input.py`, imported) and, when every
  case of the corpus ran, from what each case measured; the secret figures from `tests/reliability/test_secret_hunt.py`
  (the values it hunts, imported; its hits are 0 when it passed, since it asserts none).

What happens to the doc:
- a full run (all of `tests/`, nothing deselected, every test passed): the doc is rewritten from the run;
- any other run: only what ran is rendered into the doc, and the run fails when the result differs from the doc
  (a test that now retries while its row says "not retried", …);
- `PRODG_RELIABILITY_DOC=write` rewrites the rows and figures of what ran even on a partial run, `=check` never
  writes (it fails a full run whose doc is stale instead), `=off` does nothing.

The records of the session are also written to tests/output/reliability/records.jsonl.

Under pytest-xdist (the README's command runs two workers) each worker's records travel to the controller on the
teardown reports (`user_properties`) and each worker's collection in `workeroutput`; only the controller renders.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "RELIABILITY.md")
RECORDS = os.path.join(ROOT, "tests", "output", "reliability", "records.jsonl")
MODE_ENV = "PRODG_RELIABILITY_DOC"
BAD_INPUT_TEST = ("tests/reliability/test_bad_input.py::"
                  "test_every_invalid_config_is_a_located_error_for_validate_and_for_the_sensor")
SECRET_HUNT_TEST = "tests/reliability/test_secret_hunt.py::test_no_secret_value_anywhere_prodg_writes"

__all__ = ["measured", "pytest_collection_finish", "pytest_deselected", "pytest_runtest_logreport",
           "pytest_sessionfinish", "pytest_terminal_summary", "pytest_testnodedown"]
RECORD_PROPERTY = "prodg_measured"  # the user_properties key a test's record travels under


# -- what a test records ---------------------------------------------------------------------------------------------
def lost_between(expected, actual) -> tuple[int, int]:
    """(lost, compared): what of `expected` is missing from `actual`. A mapping of counts (rows per table) loses
    the rows `actual` lacks; a mapping of anything else (a sha256 per object) loses every key whose value differs or
    is absent; a collection loses the members `actual` lacks."""
    if isinstance(expected, Mapping):
        actual = dict(actual)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in expected.values()):
            return (sum(max(0, n - int(actual.get(k, 0))) for k, n in expected.items()),
                    sum(expected.values()))
        return sum(1 for k, v in expected.items() if actual.get(k) != v), len(expected)
    expected = set(expected)
    return len(expected - set(actual)), len(expected)


class Measured:
    """What one test measured (the `measured` fixture)."""

    def __init__(self, nodeid: str):
        self.nodeid = nodeid
        self.retries: list[bool] = []
        self.comparisons: list[dict] = []
        self.counts: dict[str, int] = defaultdict(int)

    def retried(self, converged: bool) -> bool:
        """The test removed the fault and re-ran the same operation; `converged`: the retry succeeded."""
        self.retries.append(bool(converged))
        return bool(converged)

    def compare(self, what: str, expected, actual) -> int:
        """Records what of `expected` (the data before the fault) is missing from `actual` (after the retry), in units
        of `what` ("rows", "objects", …); returns how much was lost, for the test to assert it is 0."""
        lost, compared = lost_between(expected, actual)
        self.comparisons.append({"what": what, "lost": lost, "compared": compared})
        return lost

    def count(self, **figures: int) -> None:
        for name, value in figures.items():
            self.counts[name] += int(value)

    def as_record(self) -> dict:
        return {"test": self.nodeid, "retries": self.retries, "comparisons": self.comparisons,
                "counts": dict(self.counts)}


@dataclass
class _Session:
    records: list[dict] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)
    items: list[str] = field(default_factory=list)
    fault_functions: set[str] = field(default_factory=set)
    deselected: int = 0
    messages: list[str] = field(default_factory=list)


STATE = _Session()


@pytest.fixture()
def measured(request) -> Measured:
    m = Measured(request.node.nodeid)
    yield m
    # collected from the teardown report (pytest_runtest_logreport), in this process or on the xdist controller
    request.node.user_properties.append((RECORD_PROPERTY, m.as_record()))


def function_of(nodeid: str) -> str:
    return nodeid.split("[", 1)[0]


# -- hooks (imported into tests/conftest.py) -------------------------------------------------------------------------
def pytest_deselected(items):
    STATE.deselected += len(items)


def pytest_collection_finish(session):
    STATE.items = [item.nodeid for item in session.items]
    STATE.fault_functions = {function_of(item.nodeid) for item in session.items if item.get_closest_marker("fault")}


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        STATE.records += [value for key, value in report.user_properties if key == RECORD_PROPERTY]
    before = STATE.outcomes.get(report.nodeid)
    if report.failed:
        STATE.outcomes[report.nodeid] = "failed"
    elif report.skipped and before != "failed":
        STATE.outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and before is None:
        STATE.outcomes[report.nodeid] = "passed"


def _full_run(session, exitstatus) -> bool:
    if exitstatus != 0 or STATE.deselected or not STATE.items:
        return False
    tests_dir = os.path.join(ROOT, "tests")
    args = []
    for arg in session.config.args:
        path = os.path.abspath(os.path.join(str(session.config.invocation_params.dir), arg))
        if not os.path.exists(path):
            path = os.path.abspath(os.path.join(str(session.config.rootpath), arg))
        args.append(path)
    if not args or any(a not in (tests_dir, ROOT) for a in args):
        return False
    return all(STATE.outcomes.get(n) == "passed" for n in STATE.items)


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: what a worker collected (the controller collects nothing itself)."""
    collected = getattr(node, "workeroutput", {}).get("prodg_collected")
    if collected:
        STATE.items = STATE.items or collected["items"]
        STATE.fault_functions |= set(collected["fault_functions"])
        STATE.deselected = max(STATE.deselected, collected["deselected"])


def pytest_sessionfinish(session, exitstatus):
    if _is_worker(session.config):
        session.config.workeroutput["prodg_collected"] = {
            "items": STATE.items, "fault_functions": sorted(STATE.fault_functions), "deselected": STATE.deselected}
        return
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode == "off" or session.config.option.collectonly or not STATE.items:
        return
    try:
        os.makedirs(os.path.dirname(RECORDS), exist_ok=True)
        with open(RECORDS, "w", encoding="utf-8") as fh:
            for record in STATE.records:
                fh.write(json.dumps({**record, "outcome": STATE.outcomes.get(record["test"])}) + "\n")
    except OSError as exc:
        STATE.messages.append(f"could not write {RECORDS}: {exc}")
    full = _full_run(session, exitstatus)
    with open(DOC, encoding="utf-8") as fh:
        doc = fh.read()
    try:
        new = render(doc, Run.of(STATE))
    except Exception as exc:  # noqa: BLE001 — the doc cannot be derived (a test module does not import)
        STATE.messages.append(f"docs/RELIABILITY.md not checked: {type(exc).__name__}: {exc}")
        if full or mode == "check":
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    if new == doc or (not full and mode != "write" and _normalised(new) == _normalised(doc)):
        STATE.messages.append("docs/RELIABILITY.md agrees with what ran" + (" (a full run)" if full else ""))
        return
    changed = [ln for ln in new.splitlines() if ln not in doc.splitlines()]
    if mode == "write" or (full and mode != "check"):
        with open(DOC, "w", encoding="utf-8") as fh:
            fh.write(new)
        STATE.messages.append(f"docs/RELIABILITY.md rewritten from what ran ({len(changed)} lines changed):")
        STATE.messages += [f"  {ln}" for ln in changed]
    else:
        STATE.messages.append("docs/RELIABILITY.md disagrees with what ran; these lines would change (a full run, or "
                              f"{MODE_ENV}=write, rewrites them):")
        STATE.messages += [f"  {ln}" for ln in changed]
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _normalised(text: str) -> str:
    """Without the sizes of the comparisons ("0 of 402,544 rows" -> "0 of … rows"): a partial run of a parametrised
    test compares less than the full run, and only what was lost must agree."""
    return re.sub(r"(\d[\d,]*) of [\d,]+ ", r"\1 of … ", text)


def pytest_terminal_summary(terminalreporter):
    if STATE.messages:
        terminalreporter.section("docs/RELIABILITY.md")
        for line in STATE.messages:
            terminalreporter.write_line(line)


# -- what ran, per test function ---------------------------------------------------------------------------------------
NOT_RECORDED = "not recorded"
NOT_RETRIED = "not retried"
CONVERGED = "converged"
NOT_CONVERGED = "did not converge"
NOT_COMPARED = "not compared"


@dataclass
class Run:
    cells: dict[str, tuple[str, str]]  # fault test function -> (retry cell, data-lost cell), for those that passed
    bad_input: dict[str, int] | None  # summed counts when every case of the corpus ran and passed
    secret_hunt_passed: bool

    @classmethod
    def of(cls, state: _Session) -> "Run":
        items = defaultdict(list)
        for nodeid in state.items:
            items[function_of(nodeid)].append(nodeid)
        passed = {f for f, ns in items.items() if all(state.outcomes.get(n) == "passed" for n in ns)}
        records = defaultdict(list)
        for record in state.records:
            if state.outcomes.get(record["test"]) == "passed":
                records[function_of(record["test"])].append(record)
        cells = {f: fault_cells(records[f], len(items[f])) for f in state.fault_functions & passed}
        bad_input = None
        if BAD_INPUT_TEST in passed:
            from tests.reliability.test_bad_input import ITEMS
            ran = {r["test"] for r in records[BAD_INPUT_TEST]}
            if len(ran) == len(ITEMS) == len(items[BAD_INPUT_TEST]):
                bad_input = defaultdict(int)
                for record in records[BAD_INPUT_TEST]:
                    for k, v in record["counts"].items():
                        bad_input[k] += v
        return cls(cells, bad_input, SECRET_HUNT_TEST in passed)


def fault_cells(records: list[dict], items: int) -> tuple[str, str]:
    """The retry and data-lost cells of one fault test, from the records of its items (parametrised variants)."""
    if not records or len(records) < items:
        return NOT_RECORDED, NOT_RECORDED
    if any(not r["retries"] for r in records):
        retry = NOT_RETRIED
    elif all(all(r["retries"]) for r in records):
        retry = CONVERGED
    else:
        retry = NOT_CONVERGED
    lost, compared = defaultdict(int), defaultdict(int)
    for r in records:
        for c in r["comparisons"]:
            lost[c["what"]] += c["lost"]
            compared[c["what"]] += c["compared"]
    data = "; ".join(f"{lost[w]:,} of {compared[w]:,} {w}" for w in lost) or NOT_COMPARED
    return retry, data


# -- the doc -----------------------------------------------------------------------------------------------------------
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)
FAULT_ROW = re.compile(r"^\|(?P<fault>[^|]+)\|(?P<happens>[^|]+)\|\s*`(?P<test>tests/[^`]+::\w+)`\s*"
                       r"\|(?P<retry>[^|]+)\|(?P<lost>[^|]+)\|\s*$")
FAULT_HEADER = ("| fault | what happens | test | retried after the fault was removed | data lost |\n"
                "|---|---|---|---|---|\n")
LOST_PART = re.compile(r"^(?P<lost>[\d,]+) of (?P<compared>[\d,]+) (?P<what>.+)$")
RECOVERED = "recovered (the test removed the fault, re-ran the operation, and the retry converged)"


@dataclass
class Row:
    fault: str
    happens: str
    test: str
    retry: str
    lost: str

    def line(self) -> str:
        return f"| {self.fault} | {self.happens} | `{self.test}` | {self.retry} | {self.lost} |"

    def data_lost(self) -> int | None:
        """Summed over the row's comparisons; None when nothing was compared (or recorded)."""
        parts = [LOST_PART.match(p.strip()) for p in self.lost.split(";")]
        if not all(parts):
            return None
        return sum(int(m["lost"].replace(",", "")) for m in parts)


def blocks(doc: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer(doc)}


def replace_block(doc: str, name: str, body: str) -> str:
    found = [m for m in BLOCK.finditer(doc) if m["name"] == name]
    assert len(found) == 1, f"docs/RELIABILITY.md needs one '<!-- generated: {name} -->' … '<!-- end: {name} -->'"
    m = found[0]
    return doc[:m.start("body")] + body + doc[m.end("body"):]


def fault_rows(doc: str) -> list[Row]:
    body = blocks(doc).get("faults", "")
    return [Row(*(m[k].strip() for k in ("fault", "happens", "test", "retry", "lost")))
            for line in body.splitlines() if (m := FAULT_ROW.match(line))]


def table_figures(body: str) -> dict[str, str]:
    return {m[1].strip(): m[2].strip() for line in body.splitlines()
            if (m := re.match(r"^\|([^|]+)\|([^|]+)\|\s*$", line)) and not set(m[1].strip()) <= {"-"}}


def corpus_counts() -> dict[str, int]:
    """The sizes of the bad-input corpus, from the corpus itself."""
    from tests.reliability import test_bad_input as bad
    from tests.spec.test_loader import CASES

    counts = {"items": len(bad.ITEMS), "hand_written": len(CASES), "services": len(bad.SERVICES),
              "per_service": len(bad.SERVICE_MUTATIONS), "sections": len(bad.SECTIONS),
              "section_values": len(bad.SECTION_VALUES), "hostile": len(bad.HOSTILE)}
    parts = (counts["hand_written"] + counts["services"] * counts["per_service"]
             + counts["sections"] * counts["section_values"] + counts["hostile"])
    assert parts == counts["items"], f"the corpus' parts ({parts}) do not add up to its {counts['items']} items"
    return counts


BAD_INPUT_LABELS = {
    "tried": "invalid configs tried",
    "located_validate": "located errors from `prodg validate` (`file:line: field: message`)",
    "located_sensor": "located errors from the git sensor (commit skipped, nothing deployed, cursor kept)",
    "crashes": "crashes / tracebacks",
}


def bad_input_block(figures: dict[str, str], c: dict[str, int]) -> str:
    rows = "".join(f"| {BAD_INPUT_LABELS[k]} | {figures[k]} |\n" for k in BAD_INPUT_LABELS)
    return f"""| what | figure |
|---|---|
{rows}
The corpus (`tests/reliability/test_bad_input.py`, one test per config): the {c['hand_written']} hand-written cases of
`tests/spec/test_loader.py`; for every one of the {c['services']} services of `config/` {c['per_service']} mutations
(an unknown key, a port list that is a string, a misspelt `x-prodg`, a bad restart policy, a volume leaving the config
tree, a host path outside `host.bind_roots`, an undeclared `${{SECRET}}`, a port bound to `localhost`, a
self-dependency and a Docker socket mount on a T3 service); each of {c['sections']} `prodg.yaml` sections replaced by
{c['section_values']} values (a number, a list, a boolean and null); and {c['hostile']} hostile files (a Compose file
that is a list, empty files, non-UTF-8 bytes, NUL bytes, tabs, 5,000-deep nesting, a billion-laughs alias bomb, a
1.2 MB file, two documents, a `!python/object` tag, duplicate keys, a `compose_file` escaping the tree or missing):
{c['items']} configs. The counts in this paragraph are those of the corpus; the figures above are what the last run
of every case measured. Peak memory of the corpus run is bounded (asserted below 512 MB after every case, traced from
the first case to the last; the loader caps files at 1 MiB, nesting at 64, alias expansion at 100,000 values).
`tests/spec/test_fuzz.py` adds property-based mutations (hypothesis) of the valid config.
"""


SECRET_LABELS = {
    "hunted": "secret values hunted after deploy, failing deploy + rollback, Telegram notification, a secret rotated "
              "in the env file and one in Infisical (deployed by the rotation sensor), a Postgres backup to S3 (moto), "
              "its restore drill and `prodg restore`",
    "places": "places searched",
    "hits": "hits",
}


def secrets_block(hunted: int, places: str, hits: str) -> str:
    return (f"| what | figure |\n|---|---|\n| {SECRET_LABELS['hunted']} | {hunted} |\n"
            f"| {SECRET_LABELS['places']} | {places} |\n| {SECRET_LABELS['hits']} | {hits} |\n")


def summary_block(rows: list[Row], bad: dict[str, str], hits: str) -> str:
    status = [r.retry for r in rows]
    compared = [r.data_lost() for r in rows if r.data_lost() is not None]
    located = min(int(bad["located_validate"]), int(bad["located_sensor"]))
    figures = [
        ("faults injected", len(rows)),
        (RECOVERED, status.count(CONVERGED)),
        ("fault tests that do not retry", status.count(NOT_RETRIED) + status.count(NOT_CONVERGED)),
        ("fault tests that record no retry (not counted as recovered)", status.count(NOT_RECORDED)),
        ("data lost", sum(compared)),
        ("fault tests that compare the data before the fault with the data after the retry", len(compared)),
        ("invalid inputs tried", bad["tried"]),
        ("located errors (`file:line: field: message`) from both `prodg validate` and the git sensor", located),
        ("crashes / tracebacks", bad["crashes"]),
        ("secret hits", hits),
    ]
    return "| figure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in figures)


def render(doc: str, run: Run | None = None) -> str:
    """docs/RELIABILITY.md with every generated part derived again: from `run` where it measured something, from the
    doc's own measured cells elsewhere, from the corpora (imported) for the counts."""
    parts = blocks(doc)
    rows = fault_rows(doc)
    if run:
        for row in rows:
            if row.test in run.cells:
                row.retry, row.lost = run.cells[row.test]
    bad = table_figures(parts.get("bad-input", "").split("\n\n")[0])
    bad = {k: bad.get(label, "0") for k, label in BAD_INPUT_LABELS.items()}
    counts = corpus_counts()
    bad["tried"] = str(counts["items"])
    if run and run.bad_input is not None:
        for k in ("located_validate", "located_sensor", "crashes"):
            bad[k] = str(run.bad_input.get(k, 0))
        assert run.bad_input.get("tried") == counts["items"], run.bad_input
    secrets = table_figures(parts.get("secrets", ""))
    hits = "0" if run and run.secret_hunt_passed else secrets.get(SECRET_LABELS["hits"], "not measured")
    from tests.reliability.test_secret_hunt import HUNTED

    doc = replace_block(doc, "faults", FAULT_HEADER + "".join(r.line() + "\n" for r in rows))
    doc = replace_block(doc, "bad-input", bad_input_block(bad, counts))
    doc = replace_block(doc, "secrets", secrets_block(len(HUNTED), secrets.get(SECRET_LABELS["places"], ""), hits))
    doc = replace_block(doc, "summary", summary_block(rows, bad, hits))
    return doc


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.reliability.recorder [RECORDS]`: renders docs/RELIABILITY.md from the records a session wrote
    (tests/output/reliability/records.jsonl by default) — the rows of the fault tests whose every record passed, the
    bad-input figures when every case of the corpus passed — as `PRODG_RELIABILITY_DOC=write` would have at the end of
    that session."""
    import sys

    path = (argv if argv is not None else sys.argv[1:] or [RECORDS])[0]
    state = _Session()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            state.records.append(record)
            state.items.append(record["test"])
            state.outcomes[record["test"]] = record.get("outcome") or "failed"
    with open(DOC, encoding="utf-8") as fh:
        doc = fh.read()
    state.fault_functions = {row.test for row in fault_rows(doc)}
    new = render(doc, Run.of(state))
    changed = [ln for ln in new.splitlines() if ln not in doc.splitlines()]
    if new != doc:
        with open(DOC, "w", encoding="utf-8") as fh:
            fh.write(new)
    print(f"docs/RELIABILITY.md: {len(changed)} lines changed from {path}")
    for line in changed:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
