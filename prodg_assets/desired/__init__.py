"""The desired state: the config tree, validated and resolved into pure data. Imports nothing of ours but
`settings` (the typed views of prodg.yaml it fills in).

errors (located errors) · tree (where files are read from) · yamldoc (YAML with line numbers, the only loader) ·
schema (prodg.yaml's fields) · interpolate (the one ${VAR}/$$/secret resolver) · compose (the Compose subset) ·
model (the pure data) · loader (orchestrates: tree → DesiredState)."""

from .errors import ConfigInvalid, SpecError
from .loader import load_desired_state, validate
from .model import LAYERS, DesiredState, ServiceSpec, asset_name, content_tree, sha256_hex
from .tree import ConfigTree, DirTree

__all__ = [
    "LAYERS", "ConfigInvalid", "ConfigTree", "DesiredState", "DirTree", "ServiceSpec", "SpecError", "asset_name",
    "content_tree", "load_desired_state", "sha256_hex", "validate",
]
