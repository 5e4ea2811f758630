"""The one resolver of `${VAR}`, `${VAR:-default}`, `$VAR`, `$$` and secret references.

At load time (`LoadContext.interpolate`) declared variables are substituted, declared secrets stay `${NAME}`
references (allowed only in `environment`), `$$` stays escaped in `environment` and is unescaped elsewhere. When a
container is created (`resolve_env`) the references become their values and `$$` becomes `$`, in one pass, so a
secret value holding `$$` is passed as it is. Everything that reads a service's environment goes through here.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Callable, Mapping, Protocol

from .errors import SpecError
from .tree import ConfigTree
from .yamldoc import Doc, Path

VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class HasEnvironment(Protocol):
    """What the resolver needs of a service (model.ServiceSpec): its resolved `environment` pairs."""

    environment: tuple[tuple[str, str], ...]


class LoadContext:
    """One load of a config tree: the tree, the environment, prodg.yaml's variables and declared secrets, and every
    located error found so far."""

    def __init__(self, tree: ConfigTree, env: Mapping[str, str]):
        self.tree, self.env = tree, env
        self.errors: list[SpecError] = []
        self.variables: dict[str, str] = {}
        self.secrets: set[str] = set()

    def file(self, rel: str) -> str:
        return posixpath.join(self.tree.label, rel)

    def interpolate(self, doc: Doc, path: Path, value: str, allow_secrets: bool = False) -> str:
        """Compose-style `${VAR}` / `${VAR:-default}` / `$$`. Declared variables are substituted; declared secrets
        stay as `${NAME}` references (resolved only when a container is created) and are allowed only where
        `allow_secrets`; anything else is an error."""

        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$$"
            name = m.group(1) or m.group(3)
            if name in self.secrets:
                if not allow_secrets:
                    self.errors.append(doc.error(path, f"secret ${{{name}}} may only be used in `environment`"))
                return "${" + name + "}"
            if name in self.variables:
                return self.variables[name]
            if m.group(2) is not None:
                return m.group(2)
            self.errors.append(doc.error(path, f"references ${{{name}}}, which is neither a variable of "
                                               f"prodg.yaml nor a declared secret"))
            return ""

        if "$" not in value:
            return value
        out = VAR.sub(sub, value)
        # In `environment` the `$$` escape stays for the engine, which resolves secret references and `$$` in one
        # pass when it creates the container; elsewhere it is unescaped here.
        return out if allow_secrets else out.replace("$$", "$")

    def interpolate_all(self, doc: Doc, path: Path, value: Any, allow_secrets: Callable[[Path], bool]) -> Any:
        """`interpolate` over every string of a YAML value."""
        if isinstance(value, str):
            return self.interpolate(doc, path, value, allow_secrets(path))
        if isinstance(value, dict):
            return {k: self.interpolate_all(doc, path + (k,), v, allow_secrets) for k, v in value.items()}
        if isinstance(value, list):
            return [self.interpolate_all(doc, path + (i,), v, allow_secrets) for i, v in enumerate(value)]
        return value


def secret_names(value: str) -> list[str]:
    """The secrets a resolved `environment` value references (`$$` escapes are not references)."""
    return SECRET_REF.findall(value.replace("$$", ""))


def resolve_value(value: str, secrets: Mapping[str, str]) -> str:
    """An `environment` value as the container gets it: `${SECRET}` → its value, `$$` → `$`."""
    return SECRET_REF.sub(lambda m: secrets.get(m.group(1), ""), value.replace("$$", "\0")).replace("\0", "$")


def resolve_env(spec: HasEnvironment, secrets: Mapping[str, str]) -> dict[str, str]:
    """The container's environment with `${SECRET}` references replaced by their values (`$$` → `$`)."""
    return {key: resolve_value(value, secrets) for key, value in spec.environment}


def env_value(spec: HasEnvironment, name: str, secrets: Mapping[str, str]) -> str:
    """The service's environment variable `name` as its container gets it ("" when it has none)."""
    return resolve_value(dict(spec.environment).get(name, ""), secrets)


def secret_reference(spec: HasEnvironment | None, name: str) -> tuple[str, str]:
    """(literal value, secret name) of the environment variable `name`: one of the two is empty."""
    value = dict(spec.environment).get(name, "") if spec else ""
    ref = SECRET_REF.fullmatch(value)
    return ("", ref.group(1)) if ref else (resolve_value(value, {}), "")
