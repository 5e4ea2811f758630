"""Which image a service runs: built from the config tree at a commit (`build:`), found on the Engine, pulled from
its registry (or from the registry mirror, PRODG_REGISTRY_MIRROR: `NAME` is pulled as `MIRROR/NAME` and tagged
`NAME`). No image name is ever substituted.

Compose's `pull_policy` is honoured as `missing` (the default; `if_not_present` is the same): pull when the Engine
lacks the reference; `always`: pull at every deploy, so a moved tag is deployed; `never`: never pull; `build`: the
service is built (`build:`). Checks and plans never pull. A build and a pull are each bounded by prodg.yaml's
`deploy.build_timeout_s` / `deploy.pull_timeout_s` (engine.deadline)."""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Callable

from ..contract import LABEL_SERVICE
from ..desired.model import DIGEST_REFERENCE, DesiredState, ServiceSpec
from ..lazy import docker_errors as errors
from .deadline import Deadline, streamed
from .facts import image_id
from .failures import ApplyFailed, ImageUnavailable

if TYPE_CHECKING:
    import docker


def split_reference(ref: str) -> tuple[str, str]:
    """(repository, tag or digest) of an image reference; the tag defaults to `latest`."""
    m = DIGEST_REFERENCE.match(ref)
    if m:
        return m.group("repo"), m.group("digest")
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = ref.rpartition(":")
        return repo, tag
    return ref, "latest"


def mirrored(ref: str, mirror: str) -> str:
    """Where `ref` is pulled from: `MIRROR/ref` with a mirror, else `ref` itself."""
    return f"{mirror.rstrip('/')}/{ref}" if mirror else ref


def pull(client: docker.DockerClient, service: str, ref: str, mirror: str, timeout_s: float = 600.0) -> str:
    """Pull `ref` (through `mirror`), tagged as `ref` itself; the image id. A reference the registry does not hold is
    ImageUnavailable naming it; so is a pull still running after `timeout_s` (deploy.pull_timeout_s), which is cut
    off — the Engine cancels it. The running container is not touched."""
    source = mirrored(ref, mirror)
    repo, tag = split_reference(source)
    where = f"the registry mirror {mirror}" if mirror else "its registry"
    finished = False  # the Engine's last word on a pull: "Status: Downloaded newer image …" / "… is up to date …"
    try:
        with Deadline(client.api, timeout_s, "/images/create") as bound:
            for line in streamed(client.api.pull(repo, tag=tag, stream=True, decode=True), bound):
                if line.get("error"):
                    raise errors.APIError(str(line["error"]))
                finished = finished or str(line.get("status", "")).startswith("Status: ")
    except (errors.NotFound, errors.APIError) as exc:
        detail = getattr(exc, "explanation", None) or str(exc)
        raise ImageUnavailable(f"{service}: image {ref} is not in {where} (pulling {source}: {detail})") from None
    if bound.passed and not finished:
        raise ImageUnavailable(f"{service}: pulling image {ref} from {where} ({source}) did not finish within "
                               f"{timeout_s:g}s (deploy.pull_timeout_s): the pull was stopped and nothing of it "
                               f"is used; the running container is untouched")
    if source != ref and not DIGEST_REFERENCE.match(ref):
        own_repo, own_tag = split_reference(ref)
        client.api.tag(source, own_repo, own_tag)
    found = image_id(client, ref if not DIGEST_REFERENCE.match(ref) else source)
    if not found:
        raise ImageUnavailable(f"{service}: image {ref} was pulled from {source} but the Engine does not show it")
    return found


STEP = re.compile(r"^Step \d+/\d+ : (?P<instruction>\S+)", re.I)
STEP_IMAGE = re.compile(r"^ ---> (?P<id>[0-9a-f]{12,64})$")
STEP_CONTAINER = re.compile(r"^ ---> Running in (?P<id>[0-9a-f]{12,64})$")


def build_image(client: docker.DockerClient, spec: ServiceSpec, context: str, tag: str, timeout_s: float = 1800.0,
                log: Callable[[str], None] = lambda _: None) -> str:
    """Build `spec`'s image from the folder `context`, tagged `tag`; the image id. A build that fails is ApplyFailed
    with the Engine's words; one still running after `timeout_s` (deploy.build_timeout_s) is stopped — the Engine
    kills its running step — and what it made is removed: the step's container and the images of the steps it
    finished (cached steps, made by an earlier build, are kept)."""
    assert spec.build is not None
    made: list[str] = []  # images of the steps this build ran (not cached, not FROM), in order
    running = ""  # the container of the step running now
    step, cached, finished = "", False, False
    try:
        with Deadline(client.api, timeout_s, "/build") as bound:
            lines = client.api.build(path=context, dockerfile=spec.build.dockerfile, tag=tag,
                                     buildargs=dict(spec.build.args) or None, rm=True, forcerm=True,
                                     labels={LABEL_SERVICE: spec.name}, decode=True)
            for line in streamed(lines, bound):
                if line.get("error"):
                    raise errors.BuildError(str(line["error"]).strip(), [])
                for text in str(line.get("stream") or "").splitlines():
                    if m := STEP.match(text):
                        step, cached, running = m["instruction"].upper(), False, ""
                        log(f"{spec.name}: build {text[:200]}")
                    elif text.strip() == "---> Using cache":
                        cached = True
                    elif m := STEP_CONTAINER.match(text):
                        running = m["id"]
                    elif (m := STEP_IMAGE.match(text)) and step != "FROM" and not cached:
                        made.append(m["id"])
                        running = ""
                    finished = finished or text.startswith("Successfully built ")
    except (errors.BuildError, errors.APIError) as exc:
        raise ApplyFailed(spec.name, f"image build from {spec.build.context} failed: {exc}") from None
    if bound.passed and not finished:
        _remove_build_leftovers(client, running, made)
        raise ApplyFailed(spec.name, f"image build from {spec.build.context} did not finish within {timeout_s:g}s "
                                     f"(deploy.build_timeout_s): the build was stopped"
                                     + (f" during step {step}" if step else "")
                                     + " and what it made removed; the running container is untouched")
    found = image_id(client, tag)
    if not found:
        raise ApplyFailed(spec.name, f"image build from {spec.build.context} ended without an image {tag}")
    return found


def _remove_build_leftovers(client: docker.DockerClient, container: str, images: list[str],
                            wait_s: float = 30.0) -> None:
    """The stopped build's step container (the Engine removes it as it cancels the build: waited for, else removed
    here) and the images of its finished steps, newest first, each alone (its parents may be another build's)."""
    deadline = time.monotonic() + wait_s
    while container and time.monotonic() < deadline:
        try:
            client.api.inspect_container(container)
        except errors.NotFound:
            break
        time.sleep(0.2)
    else:
        if container:
            try:
                client.api.remove_container(container, force=True)
            except errors.NotFound:
                pass
    for image in reversed(images):
        try:
            client.api.remove_image(image, noprune=True)
        except errors.NotFound:
            pass
        except errors.APIError:  # used by something else by now (a build of the same source that came after)
            pass


def image_digest(client: docker.DockerClient, image: str, ref: str, mirror: str = "") -> str:
    """The registry digest (`sha256:…`) `image` (an id or reference) was pulled as, for `ref` (through `mirror`);
    "" for an image never pulled (built here, or a local stand-in)."""
    m = DIGEST_REFERENCE.match(ref)
    if m:
        return m.group("digest")
    try:
        repo_digests = client.api.inspect_image(image).get("RepoDigests") or []
    except errors.NotFound:
        return ""
    own = split_reference(ref)[0]
    entries = [e.partition("@")[::2] for e in repo_digests]
    for match in (lambda r: r == split_reference(mirrored(ref, mirror))[0], lambda r: r == own,
                  lambda r: r.endswith("/" + own)):  # the mirror in use, the name itself, a mirror used before
        for repo, digest in entries:
            if match(repo):
                return digest
    return ""


def registry_digest(client: docker.DockerClient, ref: str, mirror: str = "") -> str:
    """The digest the registry serves for `ref` now (the manifest a pull would get), asked without pulling."""
    m = DIGEST_REFERENCE.match(ref)
    if m:
        return m.group("digest")
    try:
        return client.api.inspect_distribution(mirrored(ref, mirror))["Descriptor"]["digest"]
    except (errors.NotFound, errors.APIError, KeyError) as exc:
        detail = getattr(exc, "explanation", None) or str(exc)
        raise ImageUnavailable(f"image {ref} is not in {mirror or 'its registry'}: {detail}") from None


def resolve_image(client: docker.DockerClient, spec: ServiceSpec, state: DesiredState, commit: str,
                  build_root: str | None = None, build: bool = True, mirror: str = "",
                  refresh: bool = False, log: Callable[[str], None] = lambda _: None) -> tuple[str, str]:
    """(image reference, image id) the service runs. A `build:` service is built from the config tree at
    `commit` and tagged with the commit; another is taken from the Engine or pulled as its `pull_policy` says (only
    when `build`, i.e. when deploying)."""
    if spec.build is not None:
        repo = spec.image.rsplit(":", 1)[0] if ":" in spec.image.rsplit("/", 1)[-1] else spec.image
        source_tag = f"{repo}:src-{spec.build.digest[:16]}"
        tag = f"{repo}:{commit[:12]}" if commit else source_tag
        # what a check compares with: the image this commit deployed (its tag), else the source's build; a rebuild
        # of the same source (another image id) is not drift for a commit that already runs its own
        existing = (image_id(client, tag) if not build and tag != source_tag else None) or image_id(client, source_tag)
        if not existing and build:
            context = os.path.join(build_root or "", spec.build.context)
            existing = build_image(client, spec, context, source_tag, state.settings.deploy.build_timeout_s, log)
        if not existing:
            raise ImageUnavailable(f"{spec.name}: image {source_tag} has not been built yet")
        if build and tag != source_tag:
            client.api.tag(existing, repo, tag.rsplit(":", 1)[1])  # lineage: the commit that deployed it
        return tag, existing
    policy = spec.pull_policy
    pull_timeout = state.settings.deploy.pull_timeout_s
    if build and policy == "always":
        return spec.image, pull(client, spec.name, spec.image, mirror, pull_timeout)
    found = image_id(client, spec.image)
    if found and build and refresh and policy != "never" and not DIGEST_REFERENCE.match(spec.image):
        try:
            served = registry_digest(client, spec.image, mirror)  # self-heal: follow a tag the registry moved
        except ImageUnavailable:
            served = ""  # the registry does not answer: heal with the image the Engine has
        if served and served != image_digest(client, found, spec.image, mirror):
            return spec.image, pull(client, spec.name, spec.image, mirror, pull_timeout)
    if found:
        return spec.image, found
    if build and policy != "never":
        return spec.image, pull(client, spec.name, spec.image, mirror, pull_timeout)
    why = "pull_policy: never" if policy == "never" else "not pulled by a check or a plan"
    raise ImageUnavailable(f"{spec.name}: image {spec.image} is not on the Engine ({why})")
