"""admission.routes: which policies a request matches, found through an index, not a scan.

Patterns are "[METHOD ]PATH". Literal paths are dictionary keys; prefixes ("/api/*") are
looked up by the request path cut at each distinct prefix length; templates ("/users/{id}")
are grouped by segment count and first segment, and only that small group is tried. Every
matching pattern counts, and a request gets each matching policy once, in the order the
policies were given. A websocket handshake is a GET.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Generic, TypeVar

from admission.policies import split_pattern

T = TypeVar("T")
ANY = ""
# A template's wildcard segment, for grouping by first segment.
_PARAM = "\x00"


class Router(Generic[T]):
    """Router maps (method, path) to the items whose patterns match, in the order given.

    `routes` pairs each item with its patterns. `match` is a few dictionary lookups whatever
    the number of literal patterns: one per method/path pair, one per distinct prefix length,
    and a regex per template only among templates of the same shape.
    """

    def __init__(self, routes: Sequence[tuple[T, Sequence[str]]]) -> None:
        self._items = [item for item, _ in routes]
        self._literal: dict[tuple[str, str], list[int]] = {}
        self._prefix: dict[tuple[str, str], list[int]] = {}
        self._templates: dict[tuple[int, str], list[tuple[str, re.Pattern[str], int]]] = {}
        self._everything: list[tuple[str, int]] = []
        lengths: set[int] = set()
        for index, (_, patterns) in enumerate(routes):
            for pattern in patterns:
                method, path = split_pattern(pattern)
                method = method or ANY
                if path == "*":
                    self._everything.append((method, index))
                elif path.endswith("*"):
                    prefix = path[:-1]
                    lengths.add(len(prefix))
                    self._prefix.setdefault((method, prefix), []).append(index)
                elif "{" in path:
                    segments = path.split("/")
                    first = segments[1] if not segments[1].startswith("{") else _PARAM
                    regex = re.compile(
                        "/".join("[^/]+" if s.startswith("{") else re.escape(s) for s in segments)
                    )
                    shape = (len(segments), first)
                    self._templates.setdefault(shape, []).append((method, regex, index))
                else:
                    self._literal.setdefault((method, path), []).append(index)
        # Longest first does not matter for correctness (every match counts); sorted for a
        # stable lookup order.
        self._lengths = sorted(lengths)
        self._cache_empty = not (self._prefix or self._templates or self._everything)

    def __len__(self) -> int:
        return len(self._items)

    def match(self, method: str, path: str) -> list[T]:
        """match is every item with a pattern matching `method` and `path`, in route order;
        an empty list when none does."""
        literal = self._literal
        found: list[int] = []
        hit = literal.get((ANY, path))
        if hit:
            found += hit
        hit = literal.get((method, path))
        if hit:
            found += hit
        if not self._cache_empty:
            found += self._match_patterns(method, path)
        if not found:
            return []
        if len(found) > 1:
            found = sorted(set(found))
        items = self._items
        return [items[i] for i in found]

    def _match_patterns(self, method: str, path: str) -> list[int]:
        found: list[int] = []
        for m, index in self._everything:
            if m in (ANY, method):
                found.append(index)
        if self._prefix:
            prefixes = self._prefix
            size = len(path)
            for length in self._lengths:
                if length > size:
                    break
                cut = path[:length]
                hit = prefixes.get((ANY, cut))
                if hit:
                    found += hit
                hit = prefixes.get((method, cut))
                if hit:
                    found += hit
        if self._templates:
            segments = path.split("/")
            count = len(segments)
            first = segments[1] if count > 1 else ""
            for shape in ((count, first), (count, _PARAM)):
                for m, regex, index in self._templates.get(shape, ()):
                    if m in (ANY, method) and regex.fullmatch(path):
                        found.append(index)
        return found
