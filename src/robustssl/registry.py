"""One registry per kind (datasets, encoders, attacks, objectives, corruptions, methods).

A registry maps a name to a factory; ``create(name, **kw)`` builds one, ``names(pattern)`` lists them.
Unknown names raise :class:`UnknownNameError`, which lists the valid names, so a typo is one glance away.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that is not in a registry. The message lists the valid names and the closest matches."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, valid
        close = difflib.get_close_matches(name, valid, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Valid {kind} names: {', '.join(valid)}")


class Registry(Generic[T]):
    """Name -> factory, with per-entry metadata (e.g. which targets a dataset carries)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(
        self, name: str | None = None, **meta: Any
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("name", key=value)`` (the name defaults to the function's)."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            key = name or factory.__name__
            if key in self._entries and self._entries[key] is not factory:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = factory
            self._meta[key] = dict(meta)
            return factory

        return decorate

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self.names())
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> T:
        """``factory(**kwargs)``; an option the factory does not take is a ``ValueError`` that names it and
        lists the accepted ones (or, for factories that forward ``**kwargs``, points at their docstring)."""
        factory = self.get(name)
        accepted = _keyword_options(factory)
        if accepted is not None:
            unknown = sorted(set(kwargs) - set(accepted))
            if unknown:
                raise ValueError(
                    f"{self.kind} {name!r} has no option(s) {', '.join(map(repr, unknown))}; "
                    f"accepted: {', '.join(accepted) or '(none)'}"
                )
        try:
            return factory(**kwargs)
        except TypeError as exc:
            found = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            if found is None or found.group(1) not in kwargs:
                raise
            doc = (inspect.getdoc(factory) or "").strip().replace("\n", " ")
            raise ValueError(
                f"{self.kind} {name!r} has no option {found.group(1)!r}" + (f"; {doc}" if doc else "")
            ) from exc

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _keyword_options(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword names ``factory`` accepts, or None when it takes ``**kwargs`` (or has no signature)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
