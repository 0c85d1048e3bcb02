"""The one registry type: datasets, models, guides, priors, likelihoods, objectives, architectures.

A registry maps a name to an :class:`Entry`: what to build, a one-line description and the
options the entry declares. The CLI builds its choices, flags and help from these tables, the
tutorials, benchmarks and tests read the same ones, and an unknown name is the same one-line
error everywhere.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import PyroVAEError


@dataclass(frozen=True)
class Option:
    """A declared option of an entry: its default and a line of help for the CLI flag."""

    default: Any
    help: str = ""


@dataclass(frozen=True)
class Entry:
    """``build`` with a one-line ``about``, ``declared`` options (name -> :class:`Option`), a
    ``reference`` (paper and arXiv id, where the idea comes from one) and free ``meta`` facts
    (a dataset's default likelihood, a model's use of labels, ...), read as attributes."""

    name: str
    build: Callable
    about: str
    declared: dict = field(default_factory=dict)
    reference: str = ""
    meta: dict = field(default_factory=dict)

    def __getattr__(self, key):
        meta = self.__dict__.get("meta", {})
        if key in meta:
            return meta[key]
        raise AttributeError(f"{self.__dict__.get('name', 'entry')!r} has no attribute {key!r}")

    def options(self) -> dict:
        """The declared options and their default values."""
        return {name: option.default for name, option in self.declared.items()}


class Registry:
    """name -> :class:`Entry` for one kind of thing (``kind`` names it in error messages)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, build: Callable, about: str, options: dict | None = None, reference: str = "",
            **meta) -> Entry:
        """Register ``build`` as ``name``; ``options`` maps option names to :class:`Option`s (or to
        help strings, the default then read from ``build``'s signature)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        declared = {}
        signature = _keyword_defaults(build)
        for key, value in (options or {}).items():
            declared[key] = value if isinstance(value, Option) else Option(signature[key], value)
        entry = Entry(name, build, about, declared, reference, meta)
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> Entry:
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise PyroVAEError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}")
        return entry

    def check(self, name: str) -> Entry:
        return self[name]

    def check_options(self, name: str, options: dict) -> dict:
        """The entry's defaults updated by ``options``; unknown option names are an error."""
        entry = self[name]
        if not isinstance(options, dict):
            raise PyroVAEError(f"options of {self.kind} {name!r} must be a mapping of names to values, got {options!r}")
        unknown = sorted(set(options) - set(entry.declared))
        if unknown:
            known = ", ".join(entry.declared)
            raise PyroVAEError(f"{self.kind} {name!r} takes no option {', '.join(unknown)}"
                               + (f"; its options: {known}" if known else "; it takes no options"))
        return {**entry.options(), **options}

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def get(self, name: str, default=None):
        return self._entries.get(name, default)

    def choices(self) -> str:
        """``name (about); name (about)``: the help text of a flag choosing an entry."""
        return "; ".join(f"{name}: {entry.about}" for name, entry in self._entries.items())

    def all_options(self) -> dict[str, tuple[Option, list[str]]]:
        """Every option declared by some entry: (its first declaration, the entries declaring it)."""
        found: dict[str, tuple[Option, list[str]]] = {}
        for name, entry in self._entries.items():
            for key, option in entry.declared.items():
                found.setdefault(key, (option, []))[1].append(name)
        return found


def _keyword_defaults(fn: Callable) -> dict:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
