"""What the reliability tests observed, and docs/RELIABILITY.md made from it.

A test takes the `measured` fixture and records what it observed *before* it asserts on it, so that a test that fails
still reports what it saw:

    lost = measured.compare("rows", expected=rows_in_the_database, actual=rows_in_the_backup)
    converged = measured.retried(converged=retry.success)  # after the test removed the fault and re-ran the operation
    measured.searched("run tags", hunted=HUNTED, found={run_id: names_found_in_its_tags})
    measured.load(sent={"unsigned requests": 1000}, kept_answering={"unsigned requests": answered},
                  lost={"signed pushes": 1 - accepted})
    measured.count(tried=1, located_validate=1, located_sensor=1, crashes=0)  # figures summed over a corpus
    assert lost == 0 and converged

What a row says in prose is declared once, on the test: `@pytest.mark.fault(fault="…", happens="…")` and
`@pytest.mark.load(load="…", happens="…")`. The recorder finds every such test (collected, or read from the test
files when it did not run) and renders its row from that declaration and from what the test recorded.

At the end of the session (`pytest_sessionfinish`, so the order the tests ran in does not matter) the records of
every test that ran — passed or failed — are joined with its outcome, and docs/RELIABILITY.md is rendered from them:

- a fault row's last two cells ("retried after the fault was removed", "data lost") come from its test's records:
  the retry it performed and whether it converged, what its comparisons found missing; a test that failed says so in
  its data-lost cell ("FAILED: 3 of 2,544 rows", "FAILED: not compared"), whatever it got to record;
- a load row's cells (what was sent, what kept answering, what was lost) come from `measured.load`;
- the secret figures from the searches the hunt recorded (which values it found, and where);
- the bad-input figures from what each case of the corpus counted, when every case ran;
- the summary is computed from those tables, never typed. A row whose test did not run keeps the cells of the doc.

What happens to the doc:
- a full run (all of `tests/`, nothing deselected, every test ran — failures included): the doc is rewritten from it;
- any other run: what ran is rendered into the doc, and the run fails when the result differs from the doc (a test
  that now loses a row, …), listing the lines that would change;
- `PRODG_RELIABILITY_DOC=write` rewrites the rows and figures of what ran even on a partial run, `=check` never
  writes (it fails a full run whose doc is stale instead), `=off` does nothing.
- `PRODG_RELIABILITY_DOC_PATH` renders another copy of the doc instead of docs/RELIABILITY.md (a scratch run's), and
  `PRODG_RELIABILITY_RECORDS` writes the records elsewhere than tests/output/reliability/records.jsonl.

Under pytest-xdist (the README's command runs two workers) a test's record travels to the controller on each of its
reports (`user_properties`: setup, call and teardown, the last one wins — a failed test's too) and each worker's
collection in `workeroutput`; only the controller renders.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "RELIABILITY.md")
RECORDS = os.path.join(ROOT, "tests", "output", "reliability", "records.jsonl")
MODE_ENV = "PRODG_RELIABILITY_DOC"
DOC_PATH_ENV = "PRODG_RELIABILITY_DOC_PATH"
RECORDS_PATH_ENV = "PRODG_RELIABILITY_RECORDS"
BAD_INPUT_TEST = ("tests/reliability/test_bad_input.py::"
                  "test_every_invalid_config_is_a_located_error_for_validate_and_for_the_sensor")
SECRET_HUNT_TEST = "tests/reliability/test_secret_hunt.py::test_no_secret_value_anywhere_prodg_writes"
DECLARED = {"fault": ("fault", "happens"), "load": ("load", "happens")}  # marker -> the prose it declares

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


def new_record(nodeid: str) -> dict:
    return {"test": nodeid, "retries": [], "comparisons": [], "counts": {}, "searches": [], "loads": []}


class Measured:
    """What one test observed (the `measured` fixture). Each call records at once and returns what it recorded, for
    the test to assert on afterwards."""

    def __init__(self, nodeid: str):
        self.nodeid = nodeid
        self.record = new_record(nodeid)

    def retried(self, converged: bool) -> bool:
        """The test removed the fault and re-ran the same operation; `converged`: the retry succeeded."""
        self.record["retries"].append(bool(converged))
        return bool(converged)

    def compare(self, what: str, expected, actual) -> int:
        """Records what of `expected` (the data before the fault) is missing from `actual` (after the retry), in units
        of `what` ("rows", "objects", …); returns how much was lost, for the test to assert it is 0."""
        lost, compared = lost_between(expected, actual)
        self.record["comparisons"].append({"what": what, "lost": lost, "compared": compared})
        return lost

    def count(self, **figures: int) -> None:
        for name, value in figures.items():
            self.record["counts"][name] = self.record["counts"].get(name, 0) + int(value)

    def searched(self, place: str, hunted: Collection[str], found: Mapping[str, Collection[str]]) -> dict[str, list]:
        """`place` ("run tags", …) was searched for the values named `hunted` (names only: a value is never
        recorded); `found` maps each location searched there (a file, a run id, …) to the names found in it. Returns
        the locations where something was found, for the test to assert there are none."""
        hits = {where: sorted(set(names)) for where, names in found.items() if names}
        self.record["searches"].append({"place": place, "hunted": sorted(set(hunted)), "found": hits})
        return hits

    def load(self, sent: Mapping[str, int], kept_answering: Mapping[str, int], lost: Mapping[str, int]) -> int:
        """What a load test sent (counts by kind), what was answered as it should be while it did, and what was lost
        (a request that had to get through and did not, …); returns how much was lost, for the test to assert 0."""
        entry = {k: {what: int(n) for what, n in v.items()}
                 for k, v in (("sent", sent), ("kept_answering", kept_answering), ("lost", lost))}
        self.record["loads"].append(entry)
        return sum(entry["lost"].values())

    def as_record(self) -> dict:
        return self.record


@dataclass
class _Session:
    records: dict[str, dict] = field(default_factory=dict)  # nodeid -> its latest record
    outcomes: dict[str, str] = field(default_factory=dict)
    items: list[str] = field(default_factory=list)
    declared: dict[str, dict] = field(default_factory=dict)  # test function -> {"marker": …, prose…} (collected)
    deselected: int = 0
    messages: list[str] = field(default_factory=list)


STATE = _Session()


@pytest.fixture()
def measured(request) -> Measured:
    m = Measured(request.node.nodeid)
    # The record rides on every report of the test from now on (setup, call, teardown) and is filled in place: what
    # the test recorded before an assertion failed reaches the controller on the call and teardown reports.
    request.node.user_properties.append((RECORD_PROPERTY, m.record))
    return m


def function_of(nodeid: str) -> str:
    return nodeid.split("[", 1)[0]


def declaration_of(item) -> dict | None:
    for marker in DECLARED:
        if (found := item.get_closest_marker(marker)) is not None:
            return {"marker": marker, **{k: str(v) for k, v in found.kwargs.items()}}
    return None


# -- hooks (imported into tests/conftest.py) -------------------------------------------------------------------------
def pytest_deselected(items):
    STATE.deselected += len(items)


def pytest_collection_finish(session):
    STATE.items = [item.nodeid for item in session.items]
    for item in session.items:
        if (declared := declaration_of(item)) is not None:
            STATE.declared[function_of(item.nodeid)] = declared


def pytest_runtest_logreport(report):
    for key, value in report.user_properties:
        if key == RECORD_PROPERTY:
            STATE.records[report.nodeid] = value
    before = STATE.outcomes.get(report.nodeid)
    if report.failed:
        STATE.outcomes[report.nodeid] = "failed"
    elif report.skipped and before != "failed":
        STATE.outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and before is None:
        STATE.outcomes[report.nodeid] = "passed"


def _full_run(session, exitstatus) -> bool:
    """All of tests/ collected, nothing deselected, every test ran to an outcome (failures count: the doc then shows
    them); not an interrupted run nor one stopped at its first failures."""
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) or STATE.deselected or not STATE.items:
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
    return all(n in STATE.outcomes for n in STATE.items)


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: what a worker collected (the controller collects nothing itself)."""
    collected = getattr(node, "workeroutput", {}).get("prodg_collected")
    if collected:
        STATE.items = STATE.items or collected["items"]
        STATE.declared.update(collected["declared"])
        STATE.deselected = max(STATE.deselected, collected["deselected"])


def pytest_sessionfinish(session, exitstatus):
    if _is_worker(session.config):
        session.config.workeroutput["prodg_collected"] = {
            "items": STATE.items, "declared": STATE.declared, "deselected": STATE.deselected}
        return
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode == "off" or session.config.option.collectonly or not STATE.items:
        return
    doc_path = os.environ.get(DOC_PATH_ENV) or DOC
    records_path = os.environ.get(RECORDS_PATH_ENV) or RECORDS
    name = os.path.relpath(doc_path, ROOT) if doc_path == DOC else doc_path
    try:
        os.makedirs(os.path.dirname(records_path), exist_ok=True)
        with open(records_path, "w", encoding="utf-8") as fh:
            for nodeid in STATE.items:
                if nodeid in STATE.outcomes:
                    record = STATE.records.get(nodeid) or new_record(nodeid)
                    declared = STATE.declared.get(function_of(nodeid))
                    fh.write(json.dumps({**record, "outcome": STATE.outcomes[nodeid],
                                         **({"declared": declared} if declared else {})}) + "\n")
    except OSError as exc:
        STATE.messages.append(f"could not write {records_path}: {exc}")
    full = _full_run(session, exitstatus)
    with open(doc_path, encoding="utf-8") as fh:
        doc = fh.read()
    try:
        new = render(doc, Run.of(STATE))
    except Exception as exc:  # noqa: BLE001 — the doc cannot be derived (a test module does not import)
        STATE.messages.append(f"{name} not checked: {type(exc).__name__}: {exc}")
        if full or mode == "check":
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    if new == doc or (not full and mode != "write" and _normalised(new) == _normalised(doc)):
        STATE.messages.append(f"{name} agrees with what ran" + (" (a full run)" if full else ""))
        return
    changed = [ln for ln in new.splitlines() if ln not in doc.splitlines()]
    if mode == "write" or (full and mode != "check"):
        with open(doc_path, "w", encoding="utf-8") as fh:
            fh.write(new)
        STATE.messages.append(f"{name} rewritten from what ran ({len(changed)} lines changed):")
        STATE.messages += [f"  {ln}" for ln in changed]
    else:
        STATE.messages.append(f"{name} disagrees with what ran; these lines would change (a full run, or "
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


# -- the tests that declare a row --------------------------------------------------------------------------------------
def declared_tests(tests_dir: str = os.path.join(ROOT, "tests")) -> dict[str, dict]:
    """Every test function marked `fault` or `load` under `tests_dir`, read from the source (whether or not it is
    collected): test id -> {"marker": …, and the prose its marker declares}. In file order, files sorted."""
    found: dict[str, dict] = {}
    for dirpath, dirnames, files in sorted(os.walk(tests_dir)):
        dirnames.sort()
        for name in sorted(files):
            if not (name.startswith("test_") and name.endswith(".py")):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            for node in tree.body:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for d in node.decorator_list:
                    call = d if isinstance(d, ast.Call) else None
                    marker = ast.unparse(call.func if call else d).replace(" ", "")
                    for kind in DECLARED:
                        if marker == f"pytest.mark.{kind}":
                            prose = {k.arg: str(ast.literal_eval(k.value)) for k in (call.keywords if call else ())}
                            found[f"{os.path.relpath(path, ROOT)}::{node.name}"] = {"marker": kind, **prose}
    return found


# -- what ran, per test function ---------------------------------------------------------------------------------------
NOT_RECORDED = "not recorded"
NOT_RETRIED = "not retried"
CONVERGED = "converged"
NOT_CONVERGED = "did not converge"
NOT_COMPARED = "not compared"
NOT_RUN = "not run yet"
FAILED = "FAILED: "
NOTHING = "nothing"


@dataclass
class Run:
    faults: dict[str, tuple[str, str]]  # fault test function that ran -> (retry cell, data-lost cell)
    loads: dict[str, tuple[str, str, str]]  # load test function that ran -> (sent, kept answering, lost)
    bad_input: dict[str, int] | None  # summed counts when every case of the corpus ran
    secrets: dict | None  # the searches recorded this run, when a test recorded any
    declared: dict[str, dict]  # what the collected tests declare

    @classmethod
    def of(cls, state: _Session) -> "Run":
        ran = defaultdict(list)  # test function -> its items that ran to a pass or a failure (a skip keeps the doc)
        for nodeid in dict.fromkeys([*state.items, *state.outcomes]):
            if state.outcomes.get(nodeid) in ("passed", "failed"):
                ran[function_of(nodeid)].append(nodeid)
        declared = {**declared_tests(), **state.declared}

        def records(f: str) -> list[tuple[dict | None, str]]:
            return [(state.records.get(n), state.outcomes[n]) for n in ran[f]]

        faults = {f: fault_cells(records(f)) for f, d in declared.items() if d["marker"] == "fault" and f in ran}
        loads = {f: load_cells(records(f)) for f, d in declared.items() if d["marker"] == "load" and f in ran}
        bad_input = None
        if BAD_INPUT_TEST in ran:
            from tests.reliability.test_bad_input import ITEMS

            if len(ran[BAD_INPUT_TEST]) == len(ITEMS):
                bad_input = {"tried": len(ITEMS), "failed": 0, "located_validate": 0, "located_sensor": 0,
                             "crashes": 0}
                for record, outcome in records(BAD_INPUT_TEST):
                    bad_input["failed"] += outcome == "failed"
                    for k in ("located_validate", "located_sensor", "crashes"):
                        bad_input[k] += (record or {}).get("counts", {}).get(k, 0)
        # the hunts: every test that recorded a search, and the secret hunt whatever it got to record
        hunts = [(n, state.records.get(n), state.outcomes[n]) for f in ran for n in ran[f]
                 if (state.records.get(n) or {}).get("searches") or f == SECRET_HUNT_TEST]
        return cls(faults, loads, bad_input, secret_figures(hunts) if hunts else None, declared)


def failed(outcomes: list[str]) -> bool:
    return "failed" in outcomes


def fault_cells(records: list[tuple[dict | None, str]]) -> tuple[str, str]:
    """The retry and data-lost cells of one fault test, from the records and outcomes of its items (parametrised
    variants) that ran."""
    outcomes = [o for _, o in records]
    kept = [r for r, _ in records if r is not None]
    prefix = FAILED if failed(outcomes) else ""
    if not kept:
        return NOT_RECORDED, prefix + NOT_RECORDED
    if any(not all(r["retries"]) for r in kept):
        retry = NOT_CONVERGED
    elif len(kept) == len(records) and all(r["retries"] for r in kept):
        retry = CONVERGED
    else:
        retry = NOT_RETRIED
    lost, compared = defaultdict(int), defaultdict(int)
    for r in kept:
        for c in r["comparisons"]:
            lost[c["what"]] += c["lost"]
            compared[c["what"]] += c["compared"]
    data = "; ".join(f"{lost[w]:,} of {compared[w]:,} {w}" for w in lost) or NOT_COMPARED
    return retry, prefix + data


def counted(figures: Mapping[str, int]) -> str:
    return ", ".join(f"{what}: {n:,}" for what, n in figures.items()) or NOTHING


def load_cells(records: list[tuple[dict | None, str]]) -> tuple[str, str, str]:
    outcomes = [o for _, o in records]
    prefix = FAILED if failed(outcomes) else ""
    loads = [entry for r, _ in records if r is not None for entry in r["loads"]]
    if not loads:
        return NOT_RECORDED, NOT_RECORDED, prefix + NOT_RECORDED
    sums = {k: defaultdict(int) for k in ("sent", "kept_answering", "lost")}
    for entry in loads:
        for k, figures in entry.items():
            for what, n in figures.items():
                sums[k][what] += n
    lost = {what: n for what, n in sums["lost"].items() if n}
    return counted(sums["sent"]), counted(sums["kept_answering"]), prefix + (counted(lost) if lost else NOTHING)


def secret_figures(hunts: list[tuple[str, dict | None, str]]) -> dict:
    """What the hunts of this run searched and found: {"hunted": n, "places": {place: {location: [names]}},
    "tests": {test: outcome}, "searched": bool}."""
    places: dict[str, dict[str, list[str]]] = {}
    hunted: set[str] = set()
    for _, record, _ in hunts:
        for search in (record or {}).get("searches", []):
            hunted |= set(search["hunted"])
            place = places.setdefault(search["place"], {})
            for where, names in search["found"].items():
                place[where] = sorted(set(place.get(where, [])) | set(names))
    return {"hunted": len(hunted), "places": places, "tests": {n: o for n, _, o in hunts}}


# -- the doc -----------------------------------------------------------------------------------------------------------
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)
FAULT_HEADER = ("| fault | what happens | test | retried after the fault was removed | data lost |\n"
                "|---|---|---|---|---|\n")
LOAD_HEADER = ("| load | what happens | test | what was sent | what kept answering | lost |\n"
               "|---|---|---|---|---|---|\n")
LOST_PART = re.compile(r"^(?P<lost>[\d,]+) of (?P<compared>[\d,]+) (?P<what>.+)$")
RECOVERED = "recovered (the test removed the fault, re-ran the operation, and the retry converged)"
HITS = "secret hits (hunted values found anywhere)"


@dataclass
class Row:
    """One row of a table whose rows name their test: the declared prose, the test, the measured cells."""
    prose: list[str]
    test: str
    cells: list[str]

    def line(self) -> str:
        return "| " + " | ".join([*self.prose, f"`{self.test}`", *self.cells]) + " |"

    @property
    def failed(self) -> bool:
        return any(c.startswith(FAILED) for c in self.cells)

    @property
    def retry(self) -> str:
        return self.cells[0]

    @property
    def lost(self) -> str:
        return self.cells[-1]

    def data_lost(self) -> int | None:
        """Summed over the row's comparisons; None when nothing was compared (or recorded)."""
        parts = [LOST_PART.match(p.strip()) for p in self.lost.removeprefix(FAILED).split(";")]
        if not all(parts):
            return None
        return sum(int(m["lost"].replace(",", "")) for m in parts)

    def load_lost(self) -> int:
        """Summed over the row's lost cell ("nothing", "signed pushes: 1", …)."""
        return sum(int(n.replace(",", "")) for n in re.findall(r": ([\d,]+)(?:, |$)", self.lost.removeprefix(FAILED)))


def blocks(doc: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer(doc)}


def replace_block(doc: str, name: str, body: str) -> str:
    found = [m for m in BLOCK.finditer(doc) if m["name"] == name]
    assert len(found) == 1, f"docs/RELIABILITY.md needs one '<!-- generated: {name} -->' … '<!-- end: {name} -->'"
    m = found[0]
    return doc[:m.start("body")] + body + doc[m.end("body"):]


def table_rows(body: str) -> list[Row]:
    """The rows of a generated table that name their test in a `code` cell: prose before it, measured cells after."""
    rows = []
    for line in body.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        at = next((i for i, c in enumerate(cells) if re.fullmatch(r"`[^`]+::\w+`", c)), None)
        if at is not None:
            rows.append(Row(cells[:at], cells[at].strip("`"), cells[at + 1:]))
    return rows


def fault_rows(doc: str) -> list[Row]:
    return table_rows(blocks(doc).get("faults", ""))


def load_rows(doc: str) -> list[Row]:
    return table_rows(blocks(doc).get("load", ""))


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
    "failed": "cases that failed",
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


def found_cell(found: Mapping[str, list[str]]) -> str:
    """"0", or how many hunted values were found in a place, which, and where (the first three locations)."""
    names = sorted({n for ns in found.values() for n in ns})
    if not names:
        return "0"
    where = sorted(found)
    more = f" and {len(where) - 3} more" if len(where) > 3 else ""
    return f"{len(names)}: {', '.join(names)} (in {', '.join(where[:3])}{more})"


def secrets_block(figures: dict) -> str:
    tests = "; ".join(f"`{t}` " + ("FAILED" if o == "failed" else o) for t, o in sorted(figures["tests"].items()))
    lines = ["| searched | hunted values found there |", "|---|---|"]
    lines += [f"| {place} | {found_cell(found)} |" for place, found in figures["places"].items()]
    every = {n for found in figures["places"].values() for ns in found.values() for n in ns}
    lines += [f"| secret values hunted | {figures['hunted']} |",
              f"| {HITS} | {len(every) if figures['places'] else FAILED + 'the hunt ended before it searched'} |",
              f"| hunted by | {tests} |"]
    return "\n".join(lines) + "\n"


def summary_block(faults: list[Row], loads: list[Row], bad: dict[str, str], hits: str) -> str:
    status = [r.retry for r in faults]
    compared = [r.data_lost() for r in faults if r.data_lost() is not None]
    located = min(int(bad["located_validate"]), int(bad["located_sensor"]))
    figures = [
        ("faults injected", len(faults)),
        ("fault tests that failed (their row says FAILED)", sum(r.failed for r in faults)),
        (RECOVERED, sum(r.retry == CONVERGED and not r.failed for r in faults)),
        ("fault tests whose retry did not converge", status.count(NOT_CONVERGED)),
        ("fault tests that do not retry", status.count(NOT_RETRIED)),
        ("fault tests that record no retry (not counted as recovered)",
         status.count(NOT_RECORDED) + status.count(NOT_RUN)),
        ("data lost", sum(compared)),
        ("fault tests that compare the data before the fault with the data after the retry", len(compared)),
        ("loads thrown at a listener", len(loads)),
        ("load tests that failed (their row says FAILED)", sum(r.failed for r in loads)),
        ("lost under load", sum(r.load_lost() for r in loads)),
        ("invalid inputs tried", bad["tried"]),
        ("located errors (`file:line: field: message`) from both `prodg validate` and the git sensor", located),
        ("crashes / tracebacks", bad["crashes"]),
        ("secret hits", hits),
    ]
    return "| figure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in figures)


def prose_of(declared: dict, marker: str) -> list[str]:
    return [declared.get(k) or f"(no `{k}=` declared on the test)" for k in DECLARED[marker]]


def render(doc: str, run: Run | None = None) -> str:
    """docs/RELIABILITY.md with every generated part derived again: the rows of the tests that declare one (their
    prose from the declaration), their cells from `run` where the test ran and from the doc's own cells elsewhere,
    the figures from the corpora (imported) and the tables."""
    parts = blocks(doc)
    declared = run.declared if run else declared_tests()
    previous = {r.test: r.cells for r in fault_rows(doc) + load_rows(doc)}
    faults, loads = [], []
    for test, d in declared.items():
        if d["marker"] == "fault":
            cells = (run.faults.get(test) if run else None) or previous.get(test) or [NOT_RUN, NOT_RUN]
            faults.append(Row(prose_of(d, "fault"), test, list(cells)))
        else:
            cells = (run.loads.get(test) if run else None) or previous.get(test) or [NOT_RUN] * 3
            loads.append(Row(prose_of(d, "load"), test, list(cells)))
    bad = table_figures(parts.get("bad-input", "").split("\n\n")[0])
    bad = {k: bad.get(label, "0") for k, label in BAD_INPUT_LABELS.items()}
    counts = corpus_counts()
    bad["tried"] = str(counts["items"])
    if run and run.bad_input is not None:
        bad.update({k: str(v) for k, v in run.bad_input.items()})
    if run and run.secrets is not None:
        secrets = secrets_block(run.secrets)
    else:
        secrets = parts.get("secrets", "")
    hits = table_figures(secrets).get(HITS, "not measured")

    doc = replace_block(doc, "faults", FAULT_HEADER + "".join(r.line() + "\n" for r in faults))
    doc = replace_block(doc, "load", LOAD_HEADER + "".join(r.line() + "\n" for r in loads))
    doc = replace_block(doc, "bad-input", bad_input_block(bad, counts))
    doc = replace_block(doc, "secrets", secrets)
    doc = replace_block(doc, "summary", summary_block(faults, loads, bad, hits))
    return doc


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.reliability.recorder [RECORDS]`: renders docs/RELIABILITY.md from the records a session wrote
    (tests/output/reliability/records.jsonl by default), as `PRODG_RELIABILITY_DOC=write` would have at the end of
    that session."""
    import sys

    path = (argv if argv is not None else sys.argv[1:] or [RECORDS])[0]
    state = _Session()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            state.items.append(record["test"])
            state.outcomes[record["test"]] = record.pop("outcome", None) or "failed"
            if declared := record.pop("declared", None):
                state.declared[function_of(record["test"])] = declared
            state.records[record["test"]] = record
    doc_path = os.environ.get(DOC_PATH_ENV) or DOC
    with open(doc_path, encoding="utf-8") as fh:
        doc = fh.read()
    new = render(doc, Run.of(state))
    changed = [ln for ln in new.splitlines() if ln not in doc.splitlines()]
    if new != doc:
        with open(doc_path, "w", encoding="utf-8") as fh:
            fh.write(new)
    print(f"{doc_path}: {len(changed)} lines changed from {path}")
    for line in changed:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
