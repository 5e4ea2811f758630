"""Work that never ends, on a deploy, against the real Engine: a 1 GB build context, a Dockerfile whose build never
finishes, a healthcheck that never returns. Each is bounded by a prodg.yaml setting (set small here, through the
setting), fails the service's step with a message naming what stalled and the bound, leaves nothing running or
half-written (no build container, no image of the stopped build, no content tree, no trial container, no process),
and the serving Hermes container is untouched and answers throughout. The fault removed, the same deploy converges.

Why a size for the build context, not a time: its size is known from git's tree listing before a byte of it is read,
while every step after that reads all of it (the loader hashes it, the run lays it out, the SDK tars it, the Engine
stores it) — so a time bound would only stop the work after gigabytes were copied. `deploy.build_context_max_mb`
makes it a located validation error, like any bad config: `prodg validate` names it before the push, and a run of
that commit changes nothing."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid

import pytest
import requests

from tests.conftest import PRODG_CLI, ROOT, Testbed, make_testbed

pytestmark = pytest.mark.docker

HERMES = "hermes_api"
DEPLOYED = "docker_network,secrets_env,hermes_api"


def failure_text(result) -> str:
    return "\n".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)


@pytest.fixture(scope="module")
def bed(tmp_path_factory, docker_client):
    """Hermes (built from git) deployed on a bed of this module's own; everything removed afterwards."""
    bed = make_testbed(str(tmp_path_factory.mktemp("bounded")), docker_client, f"prodgw{uuid.uuid4().hex[:8]}")
    old_env = dict(os.environ)
    os.environ.update(bed.env)  # the asset code reads prodg.yaml variables from the process environment
    try:
        bed.cleanup()
        assert bed.materialize(DEPLOYED).success
        yield bed
    finally:
        bed.cleanup()
        os.environ.clear()
        os.environ.update(old_env)


@pytest.fixture(autouse=True)
def at_baseline(bed):
    """Each test starts from the bed's first commit, converged; whatever it committed is put back afterwards."""
    yield
    if bed.reset_to(bed.commits[0]):
        assert bed.materialize(DEPLOYED).success


class Serving:
    """Probes the serving Hermes container's /health from a thread while a deploy runs: every answer recorded; and
    whether a process whose command line holds `stalled` (the work that never ends) was seen running meanwhile."""

    def __init__(self, bed: Testbed, stalled: str = ""):
        self.url = f"http://127.0.0.1:{bed.published_port('hermes-api', 8000)}/health"
        self.answers: list = []
        self.stalled, self.seen = stalled, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.answers.append(requests.get(self.url, timeout=5).status_code)
            except requests.RequestException as exc:
                self.answers.append(type(exc).__name__)
            self.seen = self.seen or bool(self.stalled and processes_running(self.stalled))
            self._stop.wait(0.3)

    def __enter__(self) -> "Serving":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def assert_untouched_and_serving(bed: Testbed, before, serving: Serving) -> None:
    live = bed.containers()["hermes-api"]
    assert live.id == before.id and live.status == "running"
    assert live.labels["prodg.commit"] == before.labels["prodg.commit"]
    names = sorted(c.name for c in bed.containers().values())
    assert names == [f"{bed.project}-hermes-api"], names  # no trial container, no kept previous one
    assert serving.answers and set(serving.answers) == {200}, serving.answers
    assert requests.get(serving.url, timeout=5).status_code == 200


def set_deploy(bed: Testbed, **bounds) -> None:
    """prodg.yaml `deploy:` fields set (the bed's own replaced, others added)."""
    for name, value in bounds.items():
        path = os.path.join(bed.repo, "config", "prodg.yaml")
        line = next((li for li in open(path, encoding="utf-8").read().splitlines(keepends=True)
                     if li.startswith(f"  {name}: ")), "")
        if line:
            bed.edit("prodg.yaml", line, f"  {name}: {value}\n")
        else:
            bed.edit("prodg.yaml", "  stop_timeout_s: 5\n", f"  stop_timeout_s: 5\n  {name}: {value}\n")


def processes_running(marker: str) -> list[str]:
    """Command lines of this machine's processes (the Engine's containers' included) that contain `marker`."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(cmdline.strip())
    return found


@pytest.mark.fault(
    fault="a 1 GiB build context (a sparse file in Hermes' build folder)",
    happens=('`prodg validate` and the deploy of that commit refuse it, located, naming the service, its size and '
        '`deploy.build_context_max_mb`, before a byte of it is read; nothing laid out; the serving container '
        'untouched (every probe answered); the file taken out, the deploy converges'))
def test_a_one_gigabyte_build_context_is_refused_before_a_byte_is_read(bed, measured):
    before = bed.containers()["hermes-api"]
    trees_before = sorted(os.listdir(bed.env["PRODG_DEPLOY_ROOT"]))
    big = os.path.join(bed.repo, "config", "hermes-api", "dataset.bin")
    try:
        with open(big, "wb") as fh:  # sparse: 1 GiB of apparent size, no disk written
            fh.truncate(1 << 30)
        # the working folder, as an operator validates it before pushing: located, and instant (sizes only)
        check = subprocess.run([*PRODG_CLI, "validate", os.path.join(bed.repo, "config")], capture_output=True,
                               text=True, env=bed.env, cwd=ROOT)
        assert check.returncode == 1, check.stdout + check.stderr
        said = check.stdout + check.stderr
        assert "compose/docker-compose.yml:" in said and "services.hermes-api.build.context" in said, said
        assert "build context 'hermes-api' is 1,073.7 MB" in said and "deploy.build_context_max_mb (100.0 MB)" in said
        bed.commit("hermes: a gigabyte in its build context")
        with Serving(bed) as serving:
            result = bed.materialize(HERMES)
        assert not result.success
        text = failure_text(result)
        assert "services.hermes-api.build.context" in text and "1,073.7 MB" in text, text
        assert "deploy.build_context_max_mb" in text, text
        assert_untouched_and_serving(bed, before, serving)
        # nothing laid out for it: no content tree of the new context, nothing left aside half-written
        assert sorted(os.listdir(bed.env["PRODG_DEPLOY_ROOT"])) == trees_before
    finally:
        if os.path.exists(big):
            os.remove(big)
    bed.commit("hermes: the gigabyte taken out again")
    retry = bed.materialize(HERMES)
    assert measured.retried(converged=retry.success), failure_text(retry)


def step_images(client, marker: str) -> list[str]:
    """Images on the Engine made by a build step whose command holds `marker`."""
    return [i for i in client.api.images(all=True, quiet=True)
            if marker in " ".join((client.api.inspect_image(i).get("ContainerConfig") or {}).get("Cmd") or [])]


@pytest.mark.fault(
    fault='a Dockerfile whose build never finishes (`RUN sleep`)',
    happens=('stopped at `deploy.build_timeout_s`: the step fails naming the build and the bound; no step '
        'container, no process, no image of the steps it finished left; the serving container untouched '
        '(every probe answered); the release put back, the deploy converges'))
def test_a_build_that_never_finishes_is_stopped_at_the_build_timeout_and_leaves_nothing(bed, measured):
    before = bed.containers()["hermes-api"]
    marker = f"prodg-endless-build-{uuid.uuid4().hex[:10]}"
    endless = f"sleep {86400 + int(uuid.uuid4().hex[:4], 16)}"  # this test's own, found among the processes
    client = bed.client
    bed.edit("hermes-api/Dockerfile", "COPY app /app",
             f"COPY app /app\nRUN echo {marker} > /prodg-marker\nRUN {endless}")
    set_deploy(bed, build_timeout_s=45)
    bed.commit("hermes: a build step that never ends")
    with Serving(bed, stalled=endless) as serving:
        result = bed.materialize(HERMES)
    assert not result.success
    text = failure_text(result)
    assert "image build from hermes-api did not finish within 45s (deploy.build_timeout_s)" in text, text
    assert "the running container is untouched" in text, text
    assert_untouched_and_serving(bed, before, serving)
    # nothing of the build left: its step container and process (seen running before the bound), the image of the
    # step it finished
    assert serving.seen, f"`{endless}` was never seen running: the bound passed before the endless step began ({text})"
    assert processes_running(endless) == []
    assert [c.name for c in client.containers.list(all=True)
            if endless in " ".join(c.attrs["Config"].get("Cmd") or [])] == []
    assert step_images(client, marker) == []
    # the fault removed (the release put back as it was): the same deploy converges
    bed.reset_to(bed.commits[0])
    retry = bed.materialize(HERMES)
    assert measured.retried(converged=retry.success and bed.containers()["hermes-api"].status == "running"), \
        failure_text(retry)


HEALTHCHECK = ("    healthcheck:\n      test: [CMD, python3, -c, \"import urllib.request; "
               "urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)\"]\n"
               "      interval: 1s\n      timeout: 5s\n      retries: 15\n")


@pytest.mark.fault(
    fault="a healthcheck that never returns (the health wait's bound, and the Engine's per-run `healthcheck.timeout`)",
    happens=('the step fails naming the healthcheck command and the bound; the trial container and its probe '
        'process gone; the serving container untouched (every probe answered); the release put back, the '
        'deploy converges (2 variants)'))
@pytest.mark.parametrize("bound", ["health-wait", "probe-timeout"])
def test_a_healthcheck_that_never_returns_is_cut_off_and_the_service_keeps_serving(bed, measured, bound):
    """`health-wait`: the probe's own Compose timeout is 10 minutes, so the health wait (deploy.health_timeout_s)
    is what ends it; `probe-timeout`: the Engine cuts each run off at the Compose healthcheck.timeout (2 s), and the
    container turns unhealthy."""
    before = bed.containers()["hermes-api"]
    seconds = str(86400 + int(uuid.uuid4().hex[:4], 16))  # this test's own `sleep N`, found among the processes
    timeout, retries = ("10m", 3) if bound == "health-wait" else ("2s", 2)
    bed.edit("compose/docker-compose.yml", HEALTHCHECK,
             f"    healthcheck:\n      test: [CMD, sleep, \"{seconds}\"]\n      interval: 1s\n"
             f"      timeout: {timeout}\n      retries: {retries}\n")
    set_deploy(bed, health_timeout_s=10 if bound == "health-wait" else 60)
    bed.commit(f"hermes: a healthcheck that never returns ({bound})")
    with Serving(bed, stalled=f"sleep {seconds}") as serving:
        result = bed.materialize(HERMES)
    assert not result.success
    text = failure_text(result)
    if bound == "health-wait":
        assert "new container not healthy after 10s (deploy.health_timeout_s)" in text, text
        assert f"its healthcheck `sleep {seconds}` has not returned once" in text, text
    else:
        assert "new container failed its healthcheck" in text, text
        assert f"its healthcheck `sleep {seconds}` did not return within 2s (healthcheck.timeout)" in text, text
    assert "the previous container kept serving throughout" in text, text
    assert_untouched_and_serving(bed, before, serving)
    assert serving.seen, f"the probe `sleep {seconds}` was never seen running"
    assert processes_running(f"sleep {seconds}") == []  # the trial container's removal ended the probe
    bed.reset_to(bed.commits[0])
    retry = bed.materialize(HERMES)
    live = bed.containers()["hermes-api"]
    assert measured.retried(converged=retry.success and live.status == "running"), failure_text(retry)
