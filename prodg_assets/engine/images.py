"""Which image a service runs: built from the config tree at a commit (`build:`), found on the Engine, or replaced
by its local stand-in (prodg.yaml images.local). Nothing is pulled here."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..contract import LABEL_SERVICE
from ..desired.model import DesiredState, ServiceSpec
from ..lazy import docker_errors as errors
from .facts import image_id
from .failures import ApplyFailed, ImageUnavailable

if TYPE_CHECKING:
    import docker


def resolve_image(client: docker.DockerClient, spec: ServiceSpec, state: DesiredState, commit: str,
                  build_root: str | None = None, build: bool = True) -> tuple[str, str]:
    """(image reference, image id) the service runs. A `build:` service is built from the config tree at
    `commit` and tagged with the commit; an image the Engine lacks is replaced by its local stand-in
    (prodg.yaml images.local) — never pulled here, since the mainframe's images come pre-pulled or built."""
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
    found = image_id(client, spec.image)
    if found:
        return spec.image, found
    local = state.settings.images.local.get(spec.image)
    if local:
        found = image_id(client, local)
        if found:
            return local, found
    hint = f" or its local stand-in {local}" if local else ""
    raise ImageUnavailable(f"{spec.name}: image {spec.image}{hint} is not on the Engine and no registry is "
                           f"reachable from here (docker/images/build.sh builds the stand-ins)")
