"""Decorator registries for models and losses (README "Add a baseline").

A package (models/, losses/) creates one `Registry`, exposes `register`, `build` and
`available`, and calls `import_all` so that every module in the package registers itself:
adding a baseline is one new file.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path
from types import UnionType
from typing import Any, Callable

from ldct.errors import LdctError


class RegistryError(LdctError, KeyError):
    """Unknown or duplicate registry name; the message lists what exists."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._silent: dict[str, str] = {}  # module name -> file, of the package's modules that register nothing

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items and self._items[name] is not obj:
                raise RegistryError(
                    f"{self.kind} {name!r} is registered twice "
                    f"({self._items[name].__module__} and {obj.__module__})"
                )
            self._items[name] = obj
            return obj

        return deco

    def unknown(self, name: str) -> str:
        """The message for a name not registered: what exists, and where a file of that name
        registers nothing, that its decorator is missing."""
        hint = ""
        if name in self._silent:
            hint = f" ({self._silent[name]} registers nothing: decorate its class with @register({name!r}))"
        return f"unknown {self.kind} {name!r}{hint}; available: {', '.join(self.available())}"

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            raise RegistryError(self.unknown(name))
        return self._items[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        cls = self.get(name)
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise TypeError(f"cannot build {self.kind} {name!r} with {kwargs}: {err}") from err

    def arguments(self, name: str) -> list[str] | None:
        """The keyword arguments `name`'s constructor takes; None when it takes any (**kwargs)."""
        obj = self.get(name)
        params = inspect.signature(obj).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            # a class with no __init__ of its own inherits torch's Module(*args, **kwargs): it takes none
            owner = next((c for c in getattr(obj, "__mro__", ()) if "__init__" in vars(c)), None)
            return [] if owner is not None and owner.__module__.startswith("torch.") else None
        return [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]

    def type_errors(self, name: str, kwargs: dict) -> list[str]:
        """Arguments whose value does not fit the constructor's annotation, as messages:
        a float (int accepted) must be a finite number, an int an integer, a bool true/false,
        a str a string; `X | None` also takes null. Other annotations (lists, tuples, modules)
        are the constructor's to check."""
        import math
        import typing

        try:
            hints = typing.get_type_hints(self.get(name).__init__)
        except Exception:  # an annotation that cannot be evaluated: nothing to check against
            return []
        scalar = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
        out = []
        for key, value in kwargs.items():
            hint = hints.get(key)
            options = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, UnionType) else {hint}
            optional = type(None) in options
            kinds = [t for t in options - {type(None)}]
            if len(kinds) != 1 or kinds[0] not in scalar or (value is None and optional):
                continue
            kind = kinds[0]
            ok = (isinstance(value, bool) if kind is bool else
                  isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  if kind is float else
                  isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, str))
            if not ok:
                out.append(f"{key} must be {scalar[kind]}{' or null' if optional else ''}, got {value!r}")
        return out

    def available(self) -> list[str]:
        return sorted(self._items)

    def import_all(self, package: str, path: list[str]) -> None:
        """Import every module of `package` so their decorators run; a public module that
        registers nothing is remembered, for the error naming its name (`get`)."""
        for info in pkgutil.iter_modules(path):
            before = len(self._items)
            module = importlib.import_module(f"{package}.{info.name}")
            if len(self._items) == before and not info.name.startswith("_"):
                self._silent[info.name] = getattr(module, "__file__", info.name)


PROJECT_PACKAGES = ("models", "losses")  # the packages whose files a trained model's code is read from


def imported_names(path: str | Path, package: str) -> list[str]:
    """Every module name a Python file imports, anywhere in it (absolute; relative imports
    resolved against `package`, the file's own package), with `module.name` for each name taken
    from a module (`from models import _blocks` may import a module)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            # `from ._blocks import x` (level 1) is models._blocks: resolved against the package
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(x for x in (base, node.module) if x)
            if module:
                names += [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def source_files(*objs: Callable[..., Any]) -> list[str]:
    """The files of the modules defining `objs` (registered classes) and of every models/ or
    losses/ module they import, transitively, with the packages' __init__.py: a trained model's
    own code. The workflow lists them as a training job's inputs, so editing them retrains it
    and adding an unrelated model file does not."""
    todo = [inspect.getmodule(o).__name__ for o in objs]
    found: dict[str, str] = {}
    while todo:
        name = todo.pop()
        if name in found:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # `from models import register`: a name, not a module
            spec = None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        found[name] = spec.origin
        todo.append(name.split(".")[0])  # the package's __init__.py
        package = name if spec.origin.endswith("__init__.py") else name.rpartition(".")[0]
        todo += [n for n in imported_names(spec.origin, package) if n.split(".")[0] in PROJECT_PACKAGES]
    return sorted(found.values())


def library_files(root: str | Path, *modules: str) -> list[str]:
    """`root`/ldct/<module>.py for each of `modules` and for every ldct module they import,
    transitively (ldct/__init__.py left out): the library code a workflow rule's output depends
    on, listed as its inputs so that editing any of it (a metric's window in ldct/hu.py, the
    tables' averaging in ldct/metrics.py) reruns the rule."""
    folder = Path(root, "ldct")
    missing = [m for m in modules if not (folder / f"{m}.py").is_file()]
    if missing:
        raise LdctError(f"library_files: no module {', '.join(missing)} in {folder}")
    todo, found = list(modules), {}
    while todo:
        name = todo.pop()
        path = folder / f"{name}.py"
        if name in found or not path.is_file():  # `from ldct.io import write_csv`: write_csv is not a module
            continue
        found[name] = str(path)
        todo += [n.split(".")[1] for n in imported_names(path, "ldct") if n.startswith("ldct.")]
    return sorted(found.values())
