"""sections.py: re-reading a file section by section gives what parsing it whole gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.sections import parse_reusing, split
from addon.state import Conversation, State, Status
from addon.statefile import FOOTER, HEADER, StateFile, StateFileError, dumps, parse
from addon.synccache import SyncCache
from tests.unit.conftest import NOW, build_account

HERE = Path("state.toml")


def sample(accounts: int = 4, conversations: int = 5) -> State:
    made = [build_account(f"a{i}", primary=i * 2.5) for i in range(accounts)]
    return State(
        accounts=made,
        conversations=[
            Conversation(key=f"k{i}", account_id=made[i % accounts].id, seen_at=NOW + i)
            for i in range(conversations)
        ],
    )


def written(state: State) -> tuple[bytes, dict[bytes, object]]:
    """The bytes the proxy's save writes for `state`, and its texts of each item."""
    cache = SyncCache()
    raw = b"".join(cache.pieces(state, "# header\n"))
    cache.commit(state)
    return raw, cache.texts(state)


def whole(raw: bytes) -> State:
    return parse(raw.decode(), HERE)


def test_sections_start_at_the_blank_line_before_their_header() -> None:
    raw, _ = written(sample(2, 1))
    head, sections, kinds = split(raw)
    assert head + b"".join(sections) == raw and kinds == {"accounts", "conversations"}
    assert [s.split(b"\n")[1] for s in sections] == [b"[[accounts]]"] * 2 + [b"[[conversations]]"]
    assert split(b"version = 1\n") == (b"version = 1\n", [], set())


def test_the_closing_line_is_not_part_of_the_last_section() -> None:
    state = sample(2, 2)
    cache = SyncCache()
    raw = b"".join(cache.pieces(state, HEADER, FOOTER))
    cache.commit(state)
    end = len(raw) - len(FOOTER)
    assert raw[end:] == FOOTER.encode()
    _head, sections, _kinds = split(raw, end)
    assert FOOTER.encode() not in sections[-1]
    read = parse_reusing(raw, cache.texts(state), end)
    assert read == state and read is not None
    assert read.conversations[-1] is state.conversations[-1]


def test_unchanged_sections_come_back_as_the_objects_written() -> None:
    state = sample()
    raw, reuse = written(state)
    read = parse_reusing(raw, reuse)
    assert read == whole(raw) == state
    assert read is not None
    assert all(x is y for x, y in zip(read.accounts, state.accounts, strict=True))
    assert all(x is y for x, y in zip(read.conversations, state.conversations, strict=True))


def test_a_section_another_writer_changed_is_parsed_anew() -> None:
    state = sample()
    raw, reuse = written(state)
    edited = raw.replace(b'status = "active"', b'status = "paused"', 1)  # the first account
    read = parse_reusing(edited, reuse)
    assert read is not None and read == whole(edited)
    assert read.accounts[0].status is Status.PAUSED and read.accounts[0] is not state.accounts[0]
    assert all(x is y for x, y in zip(read.accounts[1:], state.accounts[1:], strict=True))


def test_files_written_whole_by_the_cli_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "state.toml"
    state = sample(3, 40)  # long enough for tomli_w to write sections, not an inline array
    StateFile(path).edit(
        lambda s: (s.accounts.extend(state.accounts), s.conversations.extend(state.conversations))
    )
    raw = path.read_bytes()
    assert parse_reusing(raw, {}) == whole(raw)
    short = dumps(sample(2, 1)).encode()  # one conversation: written as an inline array
    assert b"conversations = [" in short
    assert parse_reusing(short, {}) == whole(short)


@pytest.mark.parametrize(
    "change",
    [
        lambda raw: raw.replace(b'email = "a1@example.com"', b'email = """a1\n[[accounts]]\n"""'),
        lambda raw: raw.replace(b"version = 1", b"version = 1\nconversations = []"),
        lambda raw: raw.replace(b'name = "a2"', b'name = "a 2"'),
        lambda raw: raw.replace(b'name = "a2"', b'name = "a1"'),
        lambda raw: raw.replace(b"version = 1", b"version = 99"),
        lambda raw: raw.replace(b"version = 1", b"version = 1\nsurprise = true"),
        lambda raw: raw.replace(b"[[conversations]]\nkey", b"[[conversations]]\nnope = 1\nkey", 1),
        lambda raw: raw.replace(b"requests = 0", b"requests = ", 1),
        lambda raw: raw + b"\n[elsewhere]\nx = 1\n",
        lambda raw: raw.replace(b"a3", b"\xff3", 1),
    ],
)
def test_anything_unusual_is_left_to_the_whole_parse(change: object) -> None:
    state = sample()
    raw, reuse = written(state)
    edited = change(raw)  # type: ignore[operator]
    assert edited != raw
    try:
        expected: State | None = whole(edited)
    except (StateFileError, UnicodeDecodeError):
        expected = None  # an error: only the whole parse may describe it
    result = parse_reusing(edited, reuse)
    assert result is None or (expected is not None and result == expected)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 8), st.sampled_from(["drop", "swap", "edit", "dup", "blank"])),
        max_size=4,
    )
)
def test_edited_files_read_as_a_whole_parse_reads_them(edits: list[tuple[int, str]]) -> None:
    state = sample()
    raw, reuse = written(state)
    head, sections, _kinds = split(raw)
    for n, edit in edits:
        i = n % len(sections)
        if edit == "drop" and len(sections) > 1:
            del sections[i]
        elif edit == "swap":
            j = (i + 1) % len(sections)
            sections[i], sections[j] = sections[j], sections[i]
        elif edit == "edit":
            sections[i] = (
                sections[i]
                .replace(b"seen_at = ", b"seen_at = 1", 1)
                .replace(b"requests = 0", b"requests = 7", 1)
            )
        elif edit == "dup":
            sections.insert(i, sections[i])
        elif edit == "blank":
            sections[i] = sections[i].lstrip(b"\n")  # no blank line before the header
    edited = head + b"".join(sections)
    try:
        expected: State | None = whole(edited)
    except StateFileError:
        expected = None
    assert parse_reusing(edited, reuse) == expected


def test_a_proxy_rereads_another_writers_file_reusing_what_it_wrote(tmp_path: Path) -> None:
    from addon.pool import Pool

    path = tmp_path / "state.toml"
    StateFile(path).edit(lambda s: s.accounts.extend(sample(5).accounts))
    file = StateFile(path)
    pool = Pool(file.load())
    file.sync(pool.state, {})  # the proxy's first save
    assert file._known is not None
    before = file._known[1].accounts
    StateFile(path).edit(lambda s: setattr(s.accounts[2], "status", Status.PAUSED))  # the CLI
    merged, outside = file.sync(pool.state, {})
    assert outside is not None and outside.accounts == {before[2].id: 2}
    assert merged.accounts[2].status is Status.PAUSED
    same = [a is b for a, b in zip(merged.accounts, before, strict=True)]
    assert same == [True, True, False, True, True]  # only the changed one is new
