"""The one way SDKs are imported on first use: the code location's load does not pay for docker, requests, boto3 or
zstandard. `LazyModule` is a module imported on first attribute access; except clauses name their classes through
it (`except docker_errors.NotFound`): the attribute is looked up only when an exception reaches the clause."""

import importlib


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


docker_errors = LazyModule("docker.errors")
boto_errors = LazyModule("botocore.exceptions")


def docker_sdk():
    """The Docker SDK with its errors and types submodules loaded."""
    import docker.errors  # noqa: F401 (loads the submodule)
    import docker.types  # noqa: F401 (loads the submodule)

    import docker

    return docker
