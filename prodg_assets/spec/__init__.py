"""Desired state: the config tree, validated and resolved into pure data. Imports nothing else of ours."""

from .errors import ConfigInvalid, SpecError
from .loader import load_desired_state, validate
from .model import LAYERS, DesiredState, ServiceSpec, asset_name, sha256_hex
from .tree import ConfigTree, DirTree

__all__ = [
    "LAYERS", "ConfigInvalid", "ConfigTree", "DesiredState", "DirTree", "ServiceSpec", "SpecError", "asset_name",
    "load_desired_state", "sha256_hex", "validate",
]
