"""admission.ratelimit.routes: which policies a request matches, found through an index, not a scan.

Patterns are "[METHOD ]PATH". Literal paths are dictionary keys; prefixes ("/api/*") are
looked up by the request path cut at each distinct prefix length; templates ("/users/{id}")
are grouped by segment count and first segment, and only that small group is tried. Every
matching pattern counts, and a request gets each matching policy once, in the order the
policies were given. A websocket handshake is a GET, and a `GET` pattern matches `HEAD` too:
it is the same resource without its content (RFC 9110), and Starlette runs a GET route's
handler for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Generic, TypeVar

from admission.config.policies import split_pattern

T = TypeVar("T")
ANY = ""
# A template's wildcard segment, for grouping by first segment.
_PARAM = "\x00"
_NONE: tuple[tuple[object, ...], tuple[int, ...]] = ((), ())


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
            for method, path in _expanded(patterns):
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
        self._lengths = sorted(lengths)
        self._patterns = bool(self._prefix or self._templates or self._everything)
        # Literal paths answer with one lookup of the path, then one of the method: every
        # method's items (those of any method merged in) are laid out in advance, with their
        # positions for merging with pattern matches.
        self._by_path: dict[str, dict[str, tuple[tuple[T, ...], tuple[int, ...]]]] = {}
        for method, path in self._literal:
            self._by_path.setdefault(path, {})[method] = ((), ())
        for path, methods in self._by_path.items():
            any_ = self._literal.get((ANY, path), [])
            for method in methods:
                merged = tuple(sorted(set(any_ + self._literal.get((method, path), []))))
                methods[method] = (tuple(self._items[i] for i in merged), merged)

    def __len__(self) -> int:
        return len(self._items)

    def match(self, method: str, path: str) -> tuple[T, ...]:
        """match is every item with a pattern matching `method` and `path`, in route order;
        empty when none does."""
        methods = self._by_path.get(path)
        literal: tuple[tuple[T, ...], tuple[int, ...]] = _NONE  # type: ignore[assignment]
        if methods is not None:
            found = methods.get(method) or methods.get(ANY)
            if found is not None:
                literal = found
        if not self._patterns:
            return literal[0]
        more = self._match_patterns(method, path)
        if not more:
            return literal[0]
        items = self._items
        return tuple(items[i] for i in sorted({*more, *literal[1]}))

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


def _expanded(patterns: Sequence[str]) -> list[tuple[str, str]]:
    """_expanded is each pattern as (method, path), `ANY` for no method, with a `HEAD` twin
    for every `GET`."""
    out = []
    for pattern in patterns:
        method, path = split_pattern(pattern)
        out.append((method or ANY, path))
        if method == "GET":
            out.append(("HEAD", path))
    return out
