"""The fenced code blocks of README.md and docs/*.md, and how each one is run.

By its language (tests/test_docs.py): `python` is executed in a fresh directory, its `app`, if
it makes one, started with a request to admission's `/healthz`; `toml` is a policy file, read by
admission's policy loader; `json` is parsed; `sh` and `console` lines run: `admission config`
as a process, `admission serve` and `admission bench` parsed as those commands parse their
flags with the settings their variables give and their app imported, `uvicorn` parsed by
uvicorn with its app started, and lines of variables alone (`export ADMISSION_X=...`) built
into `Settings`, so a typo fails. Any other block, or command, needs a mark.

A block may be preceded, in the Markdown source, by HTML comments (invisible on the page) that
say how it runs:

- `<!-- file: NAME -->`: the block is the file NAME in the page's directory, written there
  before any block of the page runs (so `mymodule:app` or `policies.toml` in a later block of
  the page is this one);
- `<!-- given: CODE -->`: Python run first, in the block's namespace (stand-ins for what the
  page leaves to the reader, such as `app` or `fetch`);
- `<!-- then: CODE -->`: Python run after a Python block, with its namespace and, when it
  made an `app`, `client`, an open `TestClient` on it: what the block is meant to do, checked;
- `<!-- after: CODE -->`: Python run once the `app`'s lifespan has shut down (what the
  shutdown released, checked);
- `<!-- peer: MODULE -->`: the block shows another library (a migration page's "before"): its
  `app` is started and its `then:` run without admission in front; skipped where MODULE
  isn't installed (it comes with the `bench` extra, which CI installs);
- `<!-- output of: COMMAND -->`: the block is what COMMAND prints; the command runs and each
  line of the block must be a line of its output (a line ending in ` ...` a prefix of one);
- `<!-- run by: tests/FILE.py::TEST -->`: another test runs what the block shows;
- `<!-- not run: REASON -->`: the block can't run in a test, and why.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<lang>[^`\s]*)\s*$")
MARK = re.compile(r"<!--\s*(?P<kind>[a-z ]+):(?P<value>.*?)-->", re.DOTALL)
KINDS = {"file", "given", "then", "after", "peer", "output of", "run by", "not run"}


@dataclass(frozen=True)
class Block:
    """Block is one fenced code block: its page, the line of its opening fence, its language,
    its text (dedented as far as its fence was indented) and the marks above it."""

    page: Path
    line: int
    lang: str
    text: str
    marks: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _marks_above(lines: list[str], fence: int) -> dict[str, str]:
    """_marks_above reads the HTML comments that end right above line `fence` (0-based)."""
    marks: dict[str, str] = {}
    end = fence
    while end > 0 and lines[end - 1].strip().endswith("-->"):
        start = end - 1
        while "<!--" not in lines[start]:
            start -= 1
        comment = "\n".join(lines[start:end])
        for found in MARK.finditer(comment):
            kind = found.group("kind").strip()
            assert kind in KINDS, f"unknown mark {kind!r} above line {fence + 1}"
            marks[kind] = textwrap.dedent(found.group("value").strip("\n")).strip()
        end = start
    return marks


def blocks(page: Path) -> list[Block]:
    """blocks lists the page's fenced code blocks, in order."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = len(opening.group("indent")), opening.group("fence")
        j = i + 1
        while not lines[j].strip().startswith(fence):
            j += 1
        body = "".join(line[indent:] + "\n" for line in lines[i + 1 : j])
        found.append(Block(page, i + 1, opening.group("lang"), body, _marks_above(lines, i)))
        i = j + 1
    return found


def every_block() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def files_of(page: Path) -> dict[str, str]:
    """files_of is the page's `file:` blocks, by name."""
    return {b.marks["file"]: b.text for b in blocks(page) if "file" in b.marks}


@dataclass
class Command:
    """Command is one shell command of a block: its variables, its words, and the output a
    console block shows after it."""

    env: dict[str, str]
    argv: list[str]
    output: list[str] = field(default_factory=list)


ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def commands(block: Block) -> list[Command]:
    """commands splits a sh/console block into commands: continuation lines joined, comments
    dropped, `export A=B` and bare `A=B` lines kept as variables of every later command (as a
    shell does); in a console block only `$ ` lines are commands, the others their output."""
    import shlex

    exported: dict[str, str] = {}
    found: list[Command] = []
    lines = block.text.splitlines()
    console = block.lang == "console"
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if console:
            if not line.startswith("$ "):
                assert found, f"{block.id}: output before any command"
                found[-1].output.append(line)
                continue
            line = line[2:]
        while line.rstrip().endswith("\\"):
            line = line.rstrip()[:-1] + " " + lines[i]
            i += 1
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "export":
            exported.update(w.split("=", 1) for w in words[1:])  # type: ignore[misc]
            continue
        env = dict(exported)
        while words and ASSIGNMENT.match(words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        if not words:
            exported.update(env)
            continue
        found.append(Command(env, words))
    if not found and exported:
        found.append(Command(exported, []))
    return found


def lines_match(expected: str, output: str) -> list[str]:
    """lines_match is the lines of `expected` that no line of `output` matches (a line ending in
    ` ...` matches as a prefix)."""
    got = [line.rstrip() for line in output.splitlines()]
    missing = []
    for want in expected.splitlines():
        want = want.rstrip()
        if not want:
            continue
        if want.endswith(" ..."):
            ok = any(line.startswith(want[:-4]) for line in got)
        else:
            ok = want in got
        if not ok:
            missing.append(want)
    return missing
