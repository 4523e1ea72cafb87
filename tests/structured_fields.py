"""tests.structured_fields: a small RFC 8941 (Structured Field Values) list parser, enough for
the tests to validate the RateLimit fields."""

from __future__ import annotations

import re

_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,3})?")

BareItem = int | float | str | bool


def parse_sf_list(text: str) -> list[tuple[BareItem, dict[str, BareItem]]]:
    """parse_sf_list parses a Structured Field List of items (no inner lists); ValueError if
    `text` is not one."""
    pos = 0
    members: list[tuple[BareItem, dict[str, BareItem]]] = []

    def bare(i: int) -> tuple[BareItem, int]:
        if i >= len(text):
            raise ValueError("item expected")
        c = text[i]
        if c == '"':
            out, i = [], i + 1
            while i < len(text):
                ch = text[i]
                if ch == "\\":
                    if i + 1 >= len(text) or text[i + 1] not in '"\\':
                        raise ValueError("bad escape")
                    out.append(text[i + 1])
                    i += 2
                elif ch == '"':
                    return "".join(out), i + 1
                elif not (0x20 <= ord(ch) <= 0x7E):
                    raise ValueError("bad string character")
                else:
                    out.append(ch)
                    i += 1
            raise ValueError("unterminated string")
        if c == "?":
            if text[i + 1 : i + 2] in ("0", "1"):
                return text[i + 1] == "1", i + 2
            raise ValueError("bad boolean")
        number = _NUMBER.match(text, i)
        if number:
            raw = number.group(0)
            return (float(raw) if "." in raw else int(raw)), number.end()
        token = _TOKEN.match(text, i)
        if token:
            return token.group(0), token.end()
        raise ValueError(f"unexpected {c!r}")

    while True:
        item, pos = bare(pos)
        params: dict[str, BareItem] = {}
        while pos < len(text) and text[pos] == ";":
            pos += 1
            while pos < len(text) and text[pos] == " ":
                pos += 1
            key = _KEY.match(text, pos)
            if not key:
                raise ValueError("parameter key expected")
            pos = key.end()
            value: BareItem = True
            if pos < len(text) and text[pos] == "=":
                value, pos = bare(pos + 1)
            params[key.group(0)] = value
        members.append((item, params))
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text):
            return members
        if text[pos] != ",":
            raise ValueError(f"',' expected at {pos}")
        pos += 1
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text):
            raise ValueError("trailing comma")
