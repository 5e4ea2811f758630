"""A module imported on first attribute access: the SDKs (docker, botocore) stay out of the code location's load and
are imported by the first call that needs them. Except clauses name their classes through it (`except
errors.NotFound`): the attribute is looked up only when an exception reaches the clause."""

import importlib


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)
