"""docs/RELIABILITY.md is made from what the suite observed (tests/reliability/recorder.py renders it at the end of a
session from the records of every test that ran). These checks need no other test to have run, so they hold in any
order and on any subset: the tables name exactly the tests that declare a row, with the words they declare; every
measured cell is one the recorder writes; every figure of the summary is what the rows give. And the recorder itself:
records of tests that failed — a loss, a secret found, a load that lost a push — come out as failed rows and as figures
in the summary, from records built here and from a deliberately broken pytest session run in a scratch folder."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

from tests.conftest import ROOT
from tests.reliability.recorder import (
    CONVERGED,
    DOC_PATH_ENV,
    FAILED,
    HITS,
    MODE_ENV,
    NOT_COMPARED,
    NOT_CONVERGED,
    NOT_RECORDED,
    NOT_RETRIED,
    NOT_RUN,
    NOTHING,
    RECORDS_PATH_ENV,
    RECOVERED,
    Measured,
    Run,
    _Session,
    blocks,
    corpus_counts,
    declared_tests,
    fault_rows,
    load_rows,
    render,
    table_figures,
)

DOC = os.path.join(ROOT, "docs", "RELIABILITY.md")


def read(path: str = DOC) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def figure(label: str, doc: str | None = None) -> str:
    m = re.search(rf"^\| {re.escape(label)} \| ([^|]+) \|$", doc if doc is not None else read(), re.M)
    assert m, f"docs/RELIABILITY.md has no '| {label} | … |' row"
    return m.group(1)


def test_every_fault_and_load_test_declares_its_row_and_the_tables_are_exactly_those_rows():
    declared = declared_tests()
    faults = {t: d for t, d in declared.items() if d["marker"] == "fault"}
    loads = {t: d for t, d in declared.items() if d["marker"] == "load"}
    assert len(faults) >= 15 and loads, sorted(declared)
    for test, d in declared.items():
        for key in ("fault", "happens") if d["marker"] == "fault" else ("load", "happens"):
            assert d.get(key), f"{test}: @pytest.mark.{d['marker']} declares no {key}= (the row's words)"
            assert "|" not in d[key] and "\n" not in d[key], f"{test}: {key}= would break the table's row"
    doc = read()
    rendered = [(r.test, r.prose) for r in fault_rows(doc)]
    assert rendered == [(t, [d["fault"], d["happens"]]) for t, d in faults.items()], \
        "the fault table is not the declared fault tests with their words (a run, or PRODG_RELIABILITY_DOC=write, " \
        "renders it)"
    assert [(r.test, r.prose) for r in load_rows(doc)] == [(t, [d["load"], d["happens"]]) for t, d in loads.items()]


def test_every_measured_cell_is_one_the_recorder_writes():
    doc = read()
    lost = re.compile(r"^[\d,]+ of [\d,]+ [^;]+(; [\d,]+ of [\d,]+ [^;]+)*$")
    for row in fault_rows(doc):
        assert len(row.cells) == 2, row
        assert row.retry in (CONVERGED, NOT_RETRIED, NOT_CONVERGED, NOT_RECORDED, NOT_RUN), row
        cell = row.lost.removeprefix(FAILED)
        assert cell in (NOT_COMPARED, NOT_RECORDED, NOT_RUN) or lost.match(cell), row
        assert (row.retry == NOT_RECORDED) == (cell == NOT_RECORDED), row  # a test records both or neither
    counts = re.compile(r"^[^:,]+: [\d,]+(, [^:,]+: [\d,]+)*$")
    for row in load_rows(doc):
        assert len(row.cells) == 3, row
        for cell in row.cells:
            cell = cell.removeprefix(FAILED)
            assert cell in (NOTHING, NOT_RECORDED, NOT_RUN) or counts.match(cell), row


def test_the_summary_is_what_the_rows_and_tables_give():
    """Every figure of the summary counted again from the rows below it (failed rows, losses, retries), the secret
    hits from the hunt's table, the corpus sizes from the corpora; and render() of the doc changes nothing."""
    doc = read()
    assert set(blocks(doc)) == {"summary", "bad-input", "secrets", "load", "faults"}
    faults, loads = fault_rows(doc), load_rows(doc)
    assert int(figure("faults injected")) == len(faults)
    assert int(figure("fault tests that failed (their row says FAILED)")) == sum(r.failed for r in faults)
    assert int(figure(RECOVERED)) == sum(r.retry == CONVERGED and not r.failed for r in faults)
    assert int(figure("fault tests whose retry did not converge")) == sum(r.retry == NOT_CONVERGED for r in faults)
    assert int(figure("data lost")) == sum(r.data_lost() or 0 for r in faults)
    assert int(figure("fault tests that compare the data before the fault with the data after the retry")) == \
        sum(r.data_lost() is not None for r in faults)
    assert int(figure("loads thrown at a listener")) == len(loads)
    assert int(figure("lost under load")) == sum(r.load_lost() for r in loads)
    hits = table_figures(blocks(doc)["secrets"]).get(HITS, "not measured")
    assert figure("secret hits") == hits
    counts = corpus_counts()
    assert int(figure("invalid inputs tried")) == counts["items"]
    assert f"the {counts['hand_written']} hand-written cases" in doc
    expected = render(doc)
    assert expected == doc, "\n".join(
        ["docs/RELIABILITY.md is not what its own rows, declarations and the corpora give; derived lines:"]
        + [ln for ln in expected.splitlines() if ln not in doc.splitlines()])


def session_of(*tests: tuple[str, str, Measured | None]) -> _Session:
    """A session that ran `tests`: (test id, outcome, what it recorded)."""
    state = _Session()
    for nodeid, outcome, measured in tests:
        state.items.append(nodeid)
        state.outcomes[nodeid] = outcome
        if measured is not None:
            state.records[nodeid] = measured.as_record()
    return state


def test_records_of_failed_tests_become_failed_rows_and_count_in_the_summary():
    """What failing tests recorded — 3 rows missing after the retry, a retry that did not converge, nothing at all, a
    secret value found in run tags, a signed push lost under load — is what their rows and the summary say."""
    lossy, stuck, silent, hunt, flood = (f"tests/scratch/test_broken.py::test_{n}"
                                         for n in ("lossy", "stuck", "silent", "hunt", "flood"))
    m_lossy, m_stuck, m_hunt, m_flood = Measured(lossy), Measured(stuck), Measured(hunt), Measured(flood)
    assert m_lossy.retried(converged=True)
    assert m_lossy.compare("rows", expected={"a": 10, "b": 5}, actual={"a": 10, "b": 2}) == 3
    assert not m_stuck.retried(converged=False)
    assert m_stuck.compare("objects", expected={"k1": "sha-1"}, actual={"k1": "sha-other"}) == 1
    assert m_hunt.searched("run tags", hunted={"TOKEN": "v1", "KEY": "v2"},
                           found={"run r1": ["TOKEN"], "run r2": []}) == {"run r1": ["TOKEN"]}
    assert m_hunt.searched("logs", hunted=["TOKEN", "KEY"], found={"a.log": []}) == {}
    assert m_flood.load(sent={"unsigned requests": 1000, "signed pushes": 1},
                        kept_answering={"unsigned requests": 1000}, lost={"signed pushes": 1}) == 1
    state = session_of((lossy, "failed", m_lossy), (stuck, "failed", m_stuck), (silent, "failed", None),
                       (hunt, "failed", m_hunt), (flood, "failed", m_flood))
    state.declared = {lossy: {"marker": "fault", "fault": "lossy fault", "happens": "loses rows"},
                      stuck: {"marker": "fault", "fault": "stuck fault", "happens": "never converges"},
                      silent: {"marker": "fault", "fault": "silent fault", "happens": "fails at once"},
                      flood: {"marker": "load", "load": "a flood", "happens": "a push lost"}}
    before = read()
    doc = render(before, Run.of(state))
    rows = {r.test: r for r in fault_rows(doc) + load_rows(doc)}
    assert rows[lossy].line() == f"| lossy fault | loses rows | `{lossy}` | {CONVERGED} | FAILED: 3 of 15 rows |"
    assert rows[stuck].cells == [NOT_CONVERGED, "FAILED: 1 of 1 objects"]
    assert rows[silent].cells == [NOT_RECORDED, "FAILED: not recorded"]  # failed before recording: still a row
    assert rows[flood].cells == ["unsigned requests: 1,000, signed pushes: 1", "unsigned requests: 1,000",
                                 "FAILED: signed pushes: 1"]
    was = {r.test: r for r in fault_rows(before)}
    assert int(figure("data lost", doc)) == 3 + 1 + sum(r.data_lost() or 0 for r in was.values())
    assert int(figure("fault tests that failed (their row says FAILED)", doc)) == \
        3 + sum(r.failed for r in was.values())
    assert int(figure(RECOVERED, doc)) == sum(r.retry == CONVERGED and not r.failed for r in was.values())
    assert int(figure("lost under load", doc)) == 1
    assert figure("secret hits", doc) == "1"
    assert "| run tags | 1: TOKEN (in run r1) |" in doc and "| logs | 0 |" in doc
    assert f"| hunted by | `{hunt}` FAILED |" in doc


SCRATCH_CONFTEST = '''
import os
import sqlite3

import pytest

from tests.reliability.recorder import *  # noqa: F401,F403 — the recorder, as tests/conftest.py loads it


def backup(source: str, target: str) -> None:
    """The operation under test: SQLite's online backup of `source` into `target`."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    if os.environ.get("SCRATCH_DEFECT") == "drop-rows":  # the defect this run injects: the copy loses 3 rows
        with sqlite3.connect(target) as dst:
            dst.execute("DELETE FROM orders WHERE id IN (SELECT id FROM orders LIMIT 3)")


@pytest.fixture()
def database(tmp_path):
    path = str(tmp_path / "shop.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO orders (item) VALUES (?)", [(f"item {n}",) for n in range(20)])
        db.executemany("INSERT INTO customers (name) VALUES (?)", [(f"name {n}",) for n in range(10)])
    return path
'''

SCRATCH_TEST = '''
import os
import sqlite3

import pytest

from conftest import backup


def rows(path: str) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("orders", "customers")}


@pytest.mark.fault(fault="the backup's first copy is cut off", happens="the retry copies every row")
def test_the_retried_backup_holds_every_row(database, tmp_path, measured):
    target = str(tmp_path / "copy.db")
    with open(target, "w") as fh:
        fh.write("half a copy")  # the fault: what a cut-off first attempt left behind
    with pytest.raises(sqlite3.DatabaseError):
        backup(database, target)
    os.remove(target)  # the fault removed, the same backup again
    backup(database, target)
    assert measured.retried(converged=True)
    assert measured.compare("rows", expected=rows(database), actual=rows(target)) == 0


def test_nothing_secret_in_the_log(tmp_path, measured):
    log = tmp_path / "backup.log"
    log.write_text("backed up shop.db" + (" with password hunter2" if os.environ.get("SCRATCH_DEFECT") else ""))
    hunted = {"SHOP_PASSWORD": "hunter2"}
    found = {str(log.name): [k for k, v in hunted.items() if v in log.read_text()]}
    assert measured.searched("the backup's log", hunted=hunted, found=found) == {}
'''


def scratch_session(tmp_path, defect: str | None) -> tuple[subprocess.CompletedProcess, str]:
    """A pytest session (two xdist workers) of the scratch tests above, rendering a copy of docs/RELIABILITY.md in
    `tmp_path`; `defect` set: the backup loses rows and the log leaks the password. The run's output, the doc."""
    scratch = tmp_path / ("broken" if defect else "healthy")
    scratch.mkdir()
    (scratch / "conftest.py").write_text(textwrap.dedent(SCRATCH_CONFTEST))
    (scratch / "test_scratch_backup.py").write_text(textwrap.dedent(SCRATCH_TEST))
    (scratch / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\nmarkers =\n    fault(fault, happens)\n"
                                        "    load(load, happens)\n")
    doc = scratch / "RELIABILITY.md"
    shutil.copy(DOC, doc)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRODG_RELIABILITY", "PYTEST_", "SCRATCH_"))}
    env.update({"PYTHONPATH": ROOT, MODE_ENV: "write", DOC_PATH_ENV: str(doc),
                RECORDS_PATH_ENV: str(scratch / "records.jsonl")})
    if defect:
        env["SCRATCH_DEFECT"] = defect
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2",
                           f"--basetemp={scratch / 'tmp'}", "--rootdir", str(scratch), str(scratch)],
                          cwd=str(scratch), env=env, capture_output=True, text=True, timeout=300)
    return proc, doc.read_text()


def test_a_broken_run_says_in_the_doc_what_it_lost(tmp_path):
    """The same scratch fault test and hunt, run healthy and then with a defect injected (the backup drops 3 rows,
    the log leaks the password): the broken run fails, and still writes its doc — its row FAILED with the 3 rows
    lost, the summary's data lost and secret hits up by what it observed, the hunt naming where it found the
    value. docs/RELIABILITY.md itself is not touched."""
    original = read()
    base_lost = int(figure("data lost"))
    base_failed = int(figure("fault tests that failed (their row says FAILED)"))
    test = "test_scratch_backup.py::test_the_retried_backup_holds_every_row"
    row = "| the backup's first copy is cut off | the retry copies every row | `" + test + "` | converged | "

    healthy, doc = scratch_session(tmp_path, None)
    assert healthy.returncode == 0, healthy.stdout[-3000:] + healthy.stderr[-3000:]
    assert row + "0 of 30 rows |" in doc, healthy.stdout[-3000:]
    assert int(figure("data lost", doc)) == base_lost
    assert figure("secret hits", doc) == "0"

    broken, doc = scratch_session(tmp_path, "drop-rows")
    out = broken.stdout + broken.stderr
    assert broken.returncode == 1, out[-3000:]
    assert "2 failed" in out and "RELIABILITY.md rewritten from what ran" in out, out[-3000:]
    assert row + "FAILED: 3 of 30 rows |" in doc, out[-3000:]
    assert int(figure("data lost", doc)) == base_lost + 3
    assert int(figure("fault tests that failed (their row says FAILED)", doc)) == base_failed + 1
    assert figure("secret hits", doc) == "1"
    assert "| the backup's log | 1: SHOP_PASSWORD (in backup.log) |" in doc
    assert "| hunted by | `test_scratch_backup.py::test_nothing_secret_in_the_log` FAILED |" in doc
    assert read() == original
