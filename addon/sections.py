"""Re-reading a state file section by section, reusing what is unchanged since it was written.

When another writer (the CLI, a second proxy) changes the file, the proxy reads it back. At
10,000 accounts that is 21 MiB of TOML: parsed whole, it takes seconds of CPU in the saver's
thread, several single C calls over the whole text (decoding, tomllib's newline pass) that each
hold the GIL for tens of milliseconds, and a quarter of a million new objects for the garbage
collector to walk on the event loop. Yet such a writer changes one account, or a few.

So the text is cut at its `[[accounts]]` / `[[conversations]]` header lines, and a section whose
bytes are exactly what this process wrote for an account or conversation gives back that very
object (`reuse`, by text). Only the other sections are parsed, each on its own, and validated
one item at a time. The result equals `statefile.parse` of the whole text; anything unusual
(a multi-line string, an inline array mixed with sections, any error) returns None, and the
caller parses the whole text as before, with its exact error messages.
"""

from __future__ import annotations

import mmap
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from addon.state import Account, Conversation, State, validate_in_steps

KINDS = {"accounts": Account, "conversations": Conversation}
_HEADER = re.compile(rb"^\[\[(accounts|conversations)\]\]$", re.MULTILINE)


def split(raw: bytes | mmap.mmap, end: int | None = None) -> tuple[bytes, list[bytes], set[str]]:
    """The text before the first section header line, each section, and their kinds, up to
    `end` (the file's closing line starts there). A section starts at the newline before its
    header line (the blank line synccache.section writes first). Slices of an mmap are bytes."""
    end = len(raw) if end is None else end
    found = [(max(0, m.start() - 1), m[1]) for m in _HEADER.finditer(raw, 0, end)]
    if not found:
        return raw[:end], [], set()
    starts = [start for start, _kind in found]
    ends = [*starts[1:], end]
    kinds = {kind.decode() for _start, kind in found}
    return raw[: starts[0]], [raw[a:b] for a, b in zip(starts, ends, strict=True)], kinds


def _load(chunk: bytes) -> dict[str, Any] | None:
    if b'"""' in chunk or b"'''" in chunk:
        return None  # a multi-line string may hold a line that looks like a header
    try:
        return tomllib.loads(chunk.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return None


def parse_reusing(
    raw: bytes | mmap.mmap, reuse: Mapping[bytes, Any], end: int | None = None
) -> State | None:
    """statefile.parse of `raw[:end]`, with the objects of `reuse` (by their exact section
    text) in place of the sections holding that text; None: parse the whole text instead."""
    head, sections, kinds = split(raw, end)
    data = _load(head)
    if data is None:
        return None
    lists: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    for kind in KINDS:
        if kind in data:
            if kind in kinds:  # an inline array and [[sections]] of one kind: invalid TOML
                return None
            items = data.pop(kind)
            if not isinstance(items, list):
                return None
            lists[kind].extend(items)
    try:
        for chunk in sections:
            known = reuse.get(chunk)
            if known is not None:
                lists["accounts" if isinstance(known, Account) else "conversations"].append(known)
                continue
            table = _load(chunk)
            if table is None or not table.keys() <= KINDS.keys():
                return None
            for kind, items in table.items():
                lists[kind].extend(items)
        return validate_in_steps(data, lists["accounts"], lists["conversations"])
    except ValueError:  # pydantic's ValidationError too: the whole parse describes it
        return None
