"""A corpus of invalid configs (hand-written cases, systematic mutations of every service and section, hostile YAML),
each pushed as a real commit: `prodg validate` and the git sensor must both end with a located error — no
traceback, no run requested, bounded memory."""

import io
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from contextlib import redirect_stderr, redirect_stdout
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml

import prodg_assets
from prodg_assets.cli import main as prodg_main
from prodg_assets.contract import SENSOR_NAME
from tests.conftest import ROOT, git, init_repo
from tests.spec.test_loader import CASES

COMPOSE = "compose/docker-compose.yml"
PRODG = "prodg.yaml"
LOCATED = re.compile(r"^\S*config(@[0-9a-f]{12})?/[^:\s]+:\d+: \S+: .+$", re.M)


# for every service of config/: (id suffix, what to insert under the service's name)
SERVICE_MUTATIONS = [
    ("unknown-key", lambda name: "    privileged: true\n"),
    ("ports-string", lambda name: "    ports: 8080\n"),
    ("bad-layer", lambda name: "    x-prodg-typo: 1\n"),
    ("restart", lambda name: "    restart: sometimes\n"),
    ("volume-escape", lambda name: "    volumes: [\"../../../etc:/etc-host\"]\n"),
    ("volume-outside-roots", lambda name: "    volumes: [\"/etc/shadow:/s:ro\"]\n"),
    ("undeclared-secret", lambda name: "    environment: {X: \"${NOT_DECLARED}\"}\n"),
    ("localhost-port", lambda name: "    ports: [\"localhost:1:1\"]\n"),
    ("self-dependency", lambda name: f"    depends_on: [{name}]\n"),
    ("socket", lambda name: "    volumes: [\"/var/run/docker.sock:/s\"]\n"
                            "    x-prodg: {layer: hermes, trust_tier: T3}\n"),
]
SECTIONS = ("host", "dns", "tls", "secrets", "backups", "notifications", "deploy", "integrations")
SECTION_VALUES = ("3", "[a, b]", "true", "~")
HOSTILE = [
    ("compose-is-a-list", COMPOSE, None, "- services\n- caddy\n"),
    ("compose-empty", COMPOSE, None, ""),
    ("prodg-is-a-string", PRODG, None, "just words\n"),
    ("non-utf8", COMPOSE, "name: compose", b"name: \xff\xfe compose"),
    ("nul-bytes", PRODG, "compose_file:", "\x00compose_file:"),
    ("tabs", COMPOSE, "name: compose\n", "name: compose\n\tbad: indent\n"),
    ("deep-nesting", PRODG, None, "a: " + "[" * 5000 + "]" * 5000 + "\n"),
    ("yaml-bomb", PRODG, None, "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))),
    ("huge-file", COMPOSE, None, "services:\n" + "#" * 80 + "\n" * 0 + ("# padding\n" * 120_000)),
    ("two-documents", PRODG, None, "a: 1\n---\nb: 2\n"),
    ("unknown-tag", PRODG, "compose_file:", "bad: !python/object:os.system x\ncompose_file:"),
    ("duplicate-service", COMPOSE, "\n  redis:\n", "\n  caddy:\n    image: x\n  redis:\n"),
    ("compose-file-escape", PRODG, "compose_file: compose/docker-compose.yml",
     "compose_file: ../../etc/passwd"),
    ("compose-file-missing", PRODG, "compose_file: compose/docker-compose.yml", "compose_file: nope.yml"),
]
SERVICES = list(yaml.safe_load(open(os.path.join(ROOT, "config", COMPOSE)).read())["services"])


def corpus() -> list[tuple[str, str, object, object]]:
    """(id, file, old, new): replace `old` by `new` in `file`; old None means: replace the whole file by `new`."""
    items = [(c.id, c.rel, c.old, c.new) for c in CASES]
    for name in SERVICES:
        head = f"\n  {name}:\n"
        items += [(f"{name}-{suffix}", COMPOSE, head, f"{head}{insert(name)}") for suffix, insert in SERVICE_MUTATIONS]
    for section in SECTIONS:
        for i, value in enumerate(SECTION_VALUES):
            items.append((f"{section}-is-{i}", PRODG, f"\n{section}:\n", f"\n{section}: {value}\n{section}-old:\n"))
    items += HOSTILE
    return items


ITEMS = corpus()


def apply(config: str, item) -> None:
    _, rel, old, new = item
    path = os.path.join(config, rel)
    if old is None:
        data = new.encode() if isinstance(new, str) else new
    else:
        raw = open(path, "rb").read()
        o = old.encode() if isinstance(old, str) else old
        assert o in raw, f"{item[0]}: {old!r} not in {rel}"
        data = raw.replace(o, new.encode() if isinstance(new, str) else new, 1)
    with open(path, "wb") as fh:
        fh.write(data)


def test_the_corpus_is_large_enough():
    assert len(ITEMS) >= 200
    assert len({i[0] for i in ITEMS}) == len(ITEMS)


@pytest.fixture(scope="module")
def config_repo(tmp_path_factory):
    repo = str(tmp_path_factory.mktemp("badinput") / "repo")
    shutil.copytree(os.path.join(ROOT, "config"), os.path.join(repo, "config"))
    init_repo(repo, "valid")
    return repo


@pytest.fixture(scope="module")
def corpus_run(config_repo):
    """What the cases share, as the one corpus run before them did: the definitions and sensor built once, one Dagster
    instance, the valid baseline commit — and memory traced from the first case to the last (each case asserts the
    peak so far, so the case that runs last asserts the peak of the whole corpus)."""
    env = {"PRODG_REPO": config_repo, "PATH": os.environ["PATH"], "TELEGRAM_CHAT_ID": "-1001234567890"}
    defs = prodg_assets.build_defs(env)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        with dg.instance_for_test() as instance:
            yield SimpleNamespace(defs=defs, sensor=defs.resolve_sensor_def(SENSOR_NAME), instance=instance,
                                  baseline=git(config_repo, "rev-parse", "HEAD"))
    finally:
        if started:
            tracemalloc.stop()


@pytest.mark.parametrize("item", ITEMS, ids=[i[0] for i in ITEMS])
def test_every_invalid_config_is_a_located_error_for_validate_and_for_the_sensor(config_repo, corpus_run, item,
                                                                                 measured):
    """One invalid config of the corpus, pushed as a real commit: `prodg validate` and the git sensor both end with a
    located error — no traceback, no run requested, the cursor kept. One test per config, so none comes near the
    timeout and a failure names its config."""
    defs, sensor, instance, baseline = corpus_run.defs, corpus_run.sensor, corpus_run.instance, corpus_run.baseline
    config = os.path.join(config_repo, "config")
    failures = []
    located_validate = located_sensor = crashed = 0
    git(config_repo, "reset", "-q", "--hard", baseline)
    apply(config, item)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = prodg_main(["validate", config])
    text = out.getvalue() + err.getvalue()
    crashed = int("Traceback" in text)
    if code != 1 or "Traceback" in text or not LOCATED.search(out.getvalue()):
        failures.append(f"validate {item[0]}: exit {code}: {text[:300]!r}")
    else:
        located_validate = 1
        git(config_repo, "commit", "-qam", f"invalid: {item[0]}")
        with dg.build_sensor_context(instance=instance, cursor=baseline, repository_def=defs.get_repository_def(),
                                     resources={"repo": defs.resources["repo"]}) as ctx:
            result = sensor.evaluate_tick(ctx)
            cursor = ctx.cursor
        skip = result.skip_message or ""
        if result.run_requests or cursor != baseline or "does not validate" not in skip \
                or not LOCATED.search(skip):
            failures.append(f"sensor {item[0]}: {len(result.run_requests)} runs, cursor moved "
                            f"{cursor != baseline}: {skip[:300]!r}")
        else:
            located_sensor = 1
    _, peak = tracemalloc.get_traced_memory()
    measured.count(tried=1, located_validate=located_validate, located_sensor=located_sensor, crashes=crashed)
    assert not failures, "\n".join(failures)
    assert peak < 512 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"
    # docs/RELIABILITY.md states these figures; keep them true
    doc = open(os.path.join(ROOT, "docs", "RELIABILITY.md")).read()
    assert f"| invalid configs tried | {len(ITEMS)} |" in doc


def test_the_cli_as_a_process_prints_located_errors_and_no_traceback(config_repo, tmp_path):
    config = str(tmp_path / "config")
    for item in [i for i in ITEMS if i[0] in ("yaml-bomb", "non-utf8", "compose-is-a-list", "redis-socket")]:
        shutil.rmtree(config, ignore_errors=True)
        shutil.copytree(os.path.join(ROOT, "config"), config)
        apply(config, item)
        proc = subprocess.run([sys.executable, "-m", "prodg_assets.cli", "validate", config], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 1, item[0]
        assert "Traceback" not in proc.stdout + proc.stderr
        assert re.search(r"^\S+:\d+: \S+: .+$", proc.stdout, re.M), (item[0], proc.stdout)
