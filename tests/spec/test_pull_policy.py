"""Compose's `pull_policy` and digest references: what prodg honours validates; what it does not is a located error
(file, line, field) before anything is pulled."""

from __future__ import annotations

from pathlib import Path

import pytest

from prodg_assets.desired import load_desired_state, validate

from .conftest import BUNDLED_ENV, COMPOSE_REL, copy_config, edit, find, line_of, tree

REDIS = "    image: redis:7-alpine\n"
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("written, kept", [("always", "always"), ("missing", "missing"),
                                           ("if_not_present", "missing"), ("never", "never")])
def test_honoured_pull_policies_validate(tmp_path: Path, written: str, kept: str) -> None:
    root = copy_config(tmp_path)
    edit(root, COMPOSE_REL, REDIS, f"{REDIS}    pull_policy: {written}\n")
    assert validate(tree(root), BUNDLED_ENV) == []
    assert load_desired_state(tree(root), BUNDLED_ENV).services["redis"].pull_policy == kept


@pytest.mark.parametrize("written, fragment", [("daily", "is not honoured"), ("every_12h", "is not honoured"),
                                               ("build", "goes with a `build:` section")])
def test_other_pull_policies_are_located_errors(tmp_path: Path, written: str, fragment: str) -> None:
    root = copy_config(tmp_path)
    text = edit(root, COMPOSE_REL, REDIS, f"{REDIS}    pull_policy: {written}\n")
    error = find(validate(tree(root), BUNDLED_ENV), "services.redis.pull_policy", fragment)
    assert error.file.endswith(COMPOSE_REL) and error.line == line_of(text, REDIS, "pull_policy")


def test_an_image_pinned_by_digest_validates_and_a_malformed_digest_does_not(tmp_path: Path) -> None:
    root = copy_config(tmp_path)
    edit(root, COMPOSE_REL, REDIS, f"    image: redis@{DIGEST}\n")
    assert validate(tree(root), BUNDLED_ENV) == []
    assert load_desired_state(tree(root), BUNDLED_ENV).services["redis"].image == f"redis@{DIGEST}"
    text = edit(root, COMPOSE_REL, f"    image: redis@{DIGEST}\n", "    image: redis@sha256:abc\n")
    error = find(validate(tree(root), BUNDLED_ENV), "services.redis.image", "@sha256:<64 hex digits>")
    assert error.line == line_of(text, "image: redis@sha256:abc")


def test_a_leftover_images_section_names_what_replaced_it(tmp_path: Path) -> None:
    root = copy_config(tmp_path)
    text = edit(root, "prodg.yaml", "\nintegrations:\n", "\nimages:\n  local: {redis:7-alpine: prodg/redis:bookworm}\n"
                                                       "integrations:\n")
    error = find(validate(tree(root), BUNDLED_ENV), "images", "PRODG_REGISTRY_MIRROR")
    assert error.file.endswith("prodg.yaml") and error.line == line_of(text, "\nimages:") + 1
