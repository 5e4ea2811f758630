"""Which image a service runs: built from the config tree at a commit (`build:`), found on the Engine, pulled from
its registry (or from the registry mirror, PRODG_REGISTRY_MIRROR: `NAME` is pulled as `MIRROR/NAME` and tagged
`NAME`). No image name is ever substituted.

Compose's `pull_policy` is honoured as `missing` (the default; `if_not_present` is the same): pull when the Engine
lacks the reference; `always`: pull at every deploy, so a moved tag is deployed; `never`: never pull; `build`: the
service is built (`build:`). Checks and plans never pull."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..contract import LABEL_SERVICE
from ..desired.model import DIGEST_REFERENCE, DesiredState, ServiceSpec
from ..lazy import docker_errors as errors
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


def pull(client: docker.DockerClient, service: str, ref: str, mirror: str) -> str:
    """Pull `ref` (through `mirror`), tagged as `ref` itself; the image id. A reference the registry does not hold is
    ImageUnavailable naming it (the running container is not touched)."""
    source = mirrored(ref, mirror)
    repo, tag = split_reference(source)
    try:
        client.api.pull(repo, tag=tag)
    except (errors.NotFound, errors.APIError) as exc:
        where = f"the registry mirror {mirror}" if mirror else "its registry"
        detail = getattr(exc, "explanation", None) or str(exc)
        raise ImageUnavailable(f"{service}: image {ref} is not in {where} (pulling {source}: {detail})") from None
    if source != ref and not DIGEST_REFERENCE.match(ref):
        own_repo, own_tag = split_reference(ref)
        client.api.tag(source, own_repo, own_tag)
    found = image_id(client, ref if not DIGEST_REFERENCE.match(ref) else source)
    if not found:
        raise ImageUnavailable(f"{service}: image {ref} was pulled from {source} but the Engine does not show it")
    return found


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
                  refresh: bool = False) -> tuple[str, str]:
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
            try:
                image, _ = client.images.build(path=context, dockerfile=spec.build.dockerfile,
                                               tag=source_tag, buildargs=dict(spec.build.args) or None,
                                               rm=True, forcerm=True, labels={LABEL_SERVICE: spec.name})
            except (errors.BuildError, errors.APIError) as exc:
                raise ApplyFailed(spec.name, f"image build from {spec.build.context} failed: {exc}") from None
            existing = image.id
        if not existing:
            raise ImageUnavailable(f"{spec.name}: image {source_tag} has not been built yet")
        if build and tag != source_tag:
            client.api.tag(existing, repo, tag.rsplit(":", 1)[1])  # lineage: the commit that deployed it
        return tag, existing
    policy = spec.pull_policy
    if build and policy == "always":
        return spec.image, pull(client, spec.name, spec.image, mirror)
    found = image_id(client, spec.image)
    if found and build and refresh and policy != "never" and not DIGEST_REFERENCE.match(spec.image):
        try:
            served = registry_digest(client, spec.image, mirror)  # self-heal: follow a tag the registry moved
        except ImageUnavailable:
            served = ""  # the registry does not answer: heal with the image the Engine has
        if served and served != image_digest(client, found, spec.image, mirror):
            return spec.image, pull(client, spec.name, spec.image, mirror)
    if found:
        return spec.image, found
    if build and policy != "never":
        return spec.image, pull(client, spec.name, spec.image, mirror)
    why = "pull_policy: never" if policy == "never" else "not pulled by a check or a plan"
    raise ImageUnavailable(f"{spec.name}: image {spec.image} is not on the Engine ({why})")
