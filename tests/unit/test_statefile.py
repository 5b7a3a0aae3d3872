"""statefile.py: atomic 0600 writes, clear errors that leave the file alone, the lock, sync."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon import statefile
from addon.pool import Choice, Pool
from addon.selection import Strategy
from addon.state import Account, Block, Credentials, Plan, State, Status, Window
from addon.statefile import (
    FOOTER,
    HEADER,
    StateFile,
    StateFileError,
    default_path,
    dumps,
    parse,
)
from addon.usage import LimitHit, UsageReport, WindowReport

ACCESS = "eyJhbGciOiJub25lIn0.eyJzZWNyZXQiOiJ0b2tlbiJ9.c2VjcmV0LXNpZ25hdHVyZQ"


def account(
    name: str, *, token: str = ACCESS, updated_at: float = 1000.0, **fields: object
) -> Account:
    return Account(
        name=name,
        plan=Plan.PLUS,
        credentials=Credentials(
            access_token=f"{token}-{name}",
            refresh_token=f"rt-secret-{name}",
            account_id=f"acct-{name}",
            updated_at=updated_at,
        ),
        **fields,  # type: ignore[arg-type]
    )


def write_state(path: Path, *accounts: Account) -> bytes:
    StateFile(path).edit(lambda state: state.accounts.extend(accounts))
    return path.read_bytes()


def others_in(directory: Path, path: Path) -> list[str]:
    """Files beside the state file other than it and its lock (leftover temp files)."""
    return sorted(
        p.name for p in directory.iterdir() if p.name not in (path.name, path.name + ".lock")
    )


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- reading and writing ---------------------------------------------------------------------


def test_a_missing_file_reads_as_nothing(state_path: Path) -> None:
    file = StateFile(state_path)
    assert file.read() is None
    assert file.load() == State()
    assert not state_path.exists()


def test_edit_creates_a_missing_file_and_its_directory(state_path: Path) -> None:
    state = StateFile(state_path).edit(lambda s: s.accounts.append(account("work")))
    assert state_path.read_text().startswith(HEADER)
    assert StateFile(state_path).read() == state
    assert [a.name for a in state.accounts] == ["work"]


def test_a_state_survives_the_round_trip(state_path: Path) -> None:
    full = account(
        "full",
        email="me@example.com",
        status=Status.REAUTH_REQUIRED,
        status_reason="invalid_grant",
        status_at=1234.5,
        priority=-3,
        max_primary_percent=70.5,
        primary=Window(
            used_percent=33.3, window_minutes=300, reset_at=2_000_000_000, observed_at=1.5
        ),
        secondary=Window(used_percent=100.0, observed_at=2.25),
        block=Block(until=2_000_000_100, reason="usage_limit_reached", observed_at=3.0),
        requests=17,
        last_used_at=1_900_000_000,
    )
    state = State(accounts=[full, account("bare")])
    StateFile(state_path).edit(lambda s: s.accounts.extend(state.accounts))
    assert StateFile(state_path).read() == state


@settings(max_examples=50)
@given(st.floats(0, 100), st.floats(0, 4e9), st.integers(0, 2**40 - 1))
def test_numbers_survive_the_round_trip_exactly(percent: float, seen: float, reset: int) -> None:
    window = Window(used_percent=percent, reset_at=reset, observed_at=seen)
    state = State(accounts=[account("a", primary=window)])
    assert parse(dumps(state), Path("mem.toml")) == state


def test_reading_item_by_item_gives_what_one_validation_gives() -> None:
    import tomllib

    from addon.state import Conversation

    state = State(
        accounts=[account(f"a{i}", requests=i, priority=i % 3) for i in range(40)],
        conversations=[
            Conversation(key=f"k{i}", account_id="x", seen_at=1_800_000_000 + i) for i in range(50)
        ],
    )
    text = dumps(state)
    read = parse(text, Path("mem.toml"))
    whole = State.model_validate(tomllib.loads(text))
    assert read == whole == state
    assert [type(a) for a in read.accounts] == [Account] * 40
    assert dumps(read) == text
    # One bad item anywhere: the error of a whole validation, naming it.
    bad = text.replace('name = "a31"', 'name = "a 31"')
    with pytest.raises(StateFileError, match=r"accounts\[31\]\.name"):
        parse(bad, Path("mem.toml"))
    with pytest.raises(StateFileError, match="share the name 'a1'"):
        parse(text.replace('name = "a2"', 'name = "a1"'), Path("mem.toml"))
    with pytest.raises(StateFileError, match="surprise: Extra inputs"):
        parse("surprise = 1\n" + text, Path("mem.toml"))


def test_the_file_is_private_even_with_umask_zero(state_path: Path, umask_zero: None) -> None:
    write_state(state_path, account("work"))
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_path.with_name(state_path.name + ".lock").stat().st_mode) == 0o600
    assert stat.S_IMODE(state_path.parent.stat().st_mode) == 0o700
    assert not StateFile(state_path).is_loose()


def test_a_loose_file_is_tightened_by_the_next_write(state_path: Path, umask_zero: None) -> None:
    write_state(state_path, account("work"))
    state_path.chmod(0o644)
    file = StateFile(state_path)
    assert file.is_loose()
    file.edit(lambda s: None)
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600


def test_a_write_replaces_the_file_by_renaming_a_new_one(state_path: Path) -> None:
    write_state(state_path, account("work"))
    before = state_path.stat().st_ino
    StateFile(state_path).edit(lambda s: None)
    assert state_path.stat().st_ino != before  # a new inode renamed over the old name
    assert others_in(state_path.parent, state_path) == []  # no temp file left behind


def test_a_failed_rename_leaves_the_file_and_no_temp_file(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = write_state(state_path, account("work"))

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(statefile.os, "replace", fail)
    with pytest.raises(OSError):
        StateFile(state_path).edit(lambda s: s.accounts.append(account("new")))
    assert state_path.read_bytes() == original
    assert others_in(state_path.parent, state_path) == []


def test_a_failed_write_halfway_leaves_the_file_and_no_temp_file(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = write_state(state_path, account("work"))
    real_write = os.write
    calls = 0

    def write_then_fail(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(28, "No space left on device")
        return real_write(fd, bytes(data[:10]))  # a short write: the rest must follow

    monkeypatch.setattr(statefile.os, "write", write_then_fail)
    with pytest.raises(OSError):
        StateFile(state_path).edit(lambda s: s.accounts.append(account("new")))
    assert state_path.read_bytes() == original
    assert others_in(state_path.parent, state_path) == []


def test_a_short_write_is_completed(state_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(statefile.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    state = StateFile(state_path).edit(lambda s: s.accounts.append(account("work")))
    monkeypatch.undo()
    assert StateFile(state_path).read() == state


def test_a_failing_change_leaves_the_file_untouched(state_path: Path) -> None:
    original = write_state(state_path, account("work"))

    def change(state: State) -> None:
        state.accounts.clear()
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        StateFile(state_path).edit(change)
    assert state_path.read_bytes() == original


def test_default_path_is_in_the_mitmproxy_confdir(tmp_path: Path) -> None:
    assert default_path(str(tmp_path)) == tmp_path / "router-state.toml"
    assert default_path().name == "router-state.toml"


# -- errors: name the file and the place, never touch the file -------------------------------


def assert_untouched_by_every_writer(path: Path, original: bytes) -> None:
    with pytest.raises(StateFileError):
        StateFile(path).edit(lambda s: s.accounts.append(account("new")))
    with pytest.raises(StateFileError):
        StateFile(path).sync(State(accounts=[account("mine")]), {})
    with pytest.raises(StateFileError):
        StateFile(path).load()
    assert path.read_bytes() == original


def test_corrupt_toml_names_the_file_and_the_line(state_path: Path) -> None:
    write_state(state_path, account("work"))
    corrupt = state_path.read_bytes() + b"\n[[accounts]\nname = 'broken\n"
    state_path.write_bytes(corrupt)
    lines = corrupt.count(b"\n")
    with pytest.raises(StateFileError) as caught:
        StateFile(state_path).read()
    message = str(caught.value)
    assert str(state_path) in message
    assert "TOML" in message and "line" in message
    assert any(f"line {n}" in message for n in range(lines - 2, lines + 1)), message
    assert_untouched_by_every_writer(state_path, corrupt)


def test_an_invalid_field_names_the_file_field_account_and_line(state_path: Path) -> None:
    write_state(
        state_path,
        account("first"),
        account("second", primary=Window(used_percent=50.0, observed_at=1.0)),
    )
    text = state_path.read_text()
    bad = text.replace("used_percent = 50.0", "used_percent = 150.0").encode()
    assert bad != text.encode()
    state_path.write_bytes(bad)
    table_line = [n for n, line in enumerate(text.splitlines(), 1) if line == "[[accounts]]"][1]
    with pytest.raises(StateFileError) as caught:
        StateFile(state_path).read()
    message = str(caught.value)
    assert str(state_path) in message
    assert "accounts[1].primary.used_percent" in message
    assert "'second'" in message
    assert f"line {table_line}" in message
    assert "\n" not in message
    assert_untouched_by_every_writer(state_path, bad)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('name = "work"', 'name = "has space"', "accounts[0].name"),
        ('status = "active"', 'status = "sleeping"', "accounts[0].status"),
        ("requests = 0", "requests = -1", "accounts[0].requests"),
        ("requests = 0", "requests = 1000000000000000000000", "accounts[0].requests"),
        # A CR/LF in a token or the account id would start an HTTP header of its own.
        (f'{ACCESS}-work"', f'{ACCESS}-work\\r\\nX-Evil: injected"', "credentials.access_token"),
        ('"rt-secret-work"', '"rt-secret-work\\nX: y"', "credentials.refresh_token"),
        ('"acct-work"', '"acct-work\\r\\nX-Evil: injected"', "credentials.account_id"),
        ('"acct-work"', '"acct-work x"', "credentials.account_id"),
        ("requests = 0", "requests = 0\ncolour = 'red'", "accounts[0].colour"),
        ("updated_at = 1000.0", "updated_at = nan", "accounts[0].credentials.updated_at"),
        ("updated_at = 1000.0", "updated_at = 1000.0\nexpires_at = -1", "expires_at"),
    ],
)
def test_invalid_fields_are_named_and_tokens_never_shown(
    state_path: Path, old: str, new: str, field: str
) -> None:
    write_state(state_path, account("work"))
    text = state_path.read_text()
    assert old in text
    bad = text.replace(old, new, 1).encode()
    state_path.write_bytes(bad)
    with pytest.raises(StateFileError) as caught:
        StateFile(state_path).read()
    message = str(caught.value)
    assert str(state_path) in message and field in message
    assert ACCESS not in message and "rt-secret" not in message
    assert_untouched_by_every_writer(state_path, bad)


def test_a_percent_that_is_not_a_number_is_named_as_such(state_path: Path) -> None:
    write_state(state_path, account("work"))
    text = state_path.read_text().replace(
        "max_primary_percent = 100.0", "max_primary_percent = nan"
    )
    state_path.write_text(text)
    with pytest.raises(StateFileError, match="finite number"):
        StateFile(state_path).read()


def test_two_accounts_with_one_name_are_an_error(state_path: Path) -> None:
    text = dumps(State(accounts=[account("twin")]))
    second = text[text.index("[[accounts]]") :].replace("id = ", 'id = "x', 1)
    second = second.replace('id = "x"', 'id = "other', 1)
    state_path.parent.mkdir(parents=True)
    whole = text + "\n" + second
    state_path.write_text(whole)
    line = whole[: whole.rindex("[[accounts]]")].count("\n") + 1  # the second one's header
    with pytest.raises(StateFileError) as caught:
        StateFile(state_path).read()
    assert str(caught.value) == (
        f"{state_path}: invalid state: accounts[1] (account 'twin') (in the table at line "
        f"{line}): two accounts share the name 'twin'"
    )


def test_a_file_that_is_not_utf8_is_an_error(state_path: Path) -> None:
    state_path.parent.mkdir(parents=True)
    state_path.write_bytes(b"version = 1\n# \xff\xfe\n")
    with pytest.raises(StateFileError, match="UTF-8") as caught:
        StateFile(state_path).read()
    assert str(state_path) in str(caught.value)
    assert_untouched_by_every_writer(state_path, b"version = 1\n# \xff\xfe\n")


def test_a_directory_in_place_of_the_file_is_an_error(state_path: Path) -> None:
    state_path.mkdir(parents=True)
    with pytest.raises(StateFileError, match="cannot read"):
        StateFile(state_path).read()


def test_a_named_pipe_in_place_of_the_file_is_an_error_at_once(state_path: Path) -> None:
    state_path.parent.mkdir(parents=True)
    os.mkfifo(state_path)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            StateFile(state_path).load()
        except BaseException as e:
            outcome.append(e)

    reader = threading.Thread(target=load, daemon=True)  # opening it blocking would hang
    reader.start()
    reader.join(10)
    if reader.is_alive():
        with open(state_path, "wb"):  # let the blocked open return, then fail the test
            pass
        pytest.fail("reading a named pipe blocked")
    [error] = outcome
    assert isinstance(error, StateFileError) and "not a regular file" in str(error)


@pytest.mark.parametrize("kind", ["parent is a file", "symlink loop"])
def test_a_path_that_cannot_be_a_file_is_an_error_naming_why(tmp_path: Path, kind: str) -> None:
    if kind == "parent is a file":
        (tmp_path / "file").write_text("x")
        path, why = tmp_path / "file" / "state.toml", "Not a directory"
    else:
        (tmp_path / "a").symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(tmp_path / "a")
        path, why = tmp_path / "a", "symbolic links"
    with pytest.raises(StateFileError, match=why) as caught:
        StateFile(path).load()
    assert str(caught.value).startswith(f"{path}: cannot read: ")


def test_a_symlinked_state_file_is_written_where_it_points(tmp_path: Path) -> None:
    target = tmp_path / "synced" / "router-state.toml"
    write_state(target, account("work"))
    link = tmp_path / "router-state.toml"
    link.symlink_to(target)
    file = StateFile(link)
    file.edit(lambda state: setattr(state.accounts[0], "priority", 7))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert "priority = 7" in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_symlink_and_its_target_take_one_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy given the link, the CLI given the target: one lock, or the CLI's import
    and the proxy's save could each read the file before the other wrote it."""
    target = tmp_path / "synced" / "router-state.toml"
    write_state(target, account("work"))
    link = tmp_path / "router-state.toml"
    link.symlink_to(target)
    assert StateFile(link).lock_path == StateFile(target).lock_path
    monkeypatch.setattr(statefile, "LOCK_TIMEOUT", 0.05)
    with StateFile(target).locked(), pytest.raises(StateFileError, match="lock has been held"):
        StateFile(link).edit(lambda state: state.accounts.clear())
    assert [a.name for a in StateFile(target).load().accounts] == ["work"]


def test_a_lock_file_that_cannot_be_opened_is_named(state_path: Path) -> None:
    write_state(state_path, account("work"))
    lock = state_path.with_name(state_path.name + ".lock")
    lock.unlink(missing_ok=True)
    lock.mkdir()
    with pytest.raises(StateFileError, match=r"\.lock: cannot open the lock file: Is a directory"):
        StateFile(state_path).edit(lambda state: None)


def test_a_lock_file_that_is_a_symlink_is_not_followed(state_path: Path, tmp_path: Path) -> None:
    write_state(state_path, account("work"))
    lock = state_path.with_name(state_path.name + ".lock")
    lock.unlink(missing_ok=True)
    elsewhere = tmp_path / "elsewhere" / "made-by-the-router"
    elsewhere.parent.mkdir()
    lock.symlink_to(elsewhere)
    with pytest.raises(
        StateFileError, match=r"\.lock: cannot open the lock file: it is a symbolic"
    ):
        StateFile(state_path).edit(lambda state: state.accounts.clear())
    assert not elsewhere.exists()
    assert [a.name for a in StateFile(state_path).load().accounts] == ["work"]


def test_a_refresh_lock_that_is_a_symlink_is_not_followed(
    state_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_state(state_path, account("work"))
    file = StateFile(state_path)
    lock = file.refresh_lock_path("acct-1")
    lock.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere" / "made-by-the-router"
    elsewhere.parent.mkdir()
    lock.symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING), file.refreshing("acct-1"):
        pass  # refreshes take turns on the directory's lock instead
    assert not elsewhere.exists()
    assert "it is a symbolic link" in caplog.text and "take turns" in caplog.text


def test_a_newer_file_version_is_an_error(state_path: Path) -> None:
    state_path.parent.mkdir(parents=True)
    state_path.write_text("version = 99\n")
    with pytest.raises(StateFileError, match="version"):
        StateFile(state_path).read()


# -- the lock --------------------------------------------------------------------------------


def bump(path: Path, name: str, times: int) -> None:
    file = StateFile(path)
    for _ in range(times):

        def change(state: State) -> None:
            found = state.by_name(name)
            assert found is not None
            found.requests += 1

        file.edit(change)


def test_the_lock_serialises_writer_threads(state_path: Path) -> None:
    names = [f"t{i}" for i in range(8)]
    write_state(state_path, *(account(n) for n in names))
    threads = [threading.Thread(target=bump, args=(state_path, n, 25)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = StateFile(state_path).read()
    assert state is not None
    assert {a.name: a.requests for a in state.accounts} == dict.fromkeys(names, 25)


def test_the_lock_serialises_writer_processes(state_path: Path) -> None:
    names = [f"p{i}" for i in range(4)]
    write_state(state_path, *(account(n) for n in names))
    context = multiprocessing.get_context("spawn")  # fork in a threaded process may deadlock
    processes = [context.Process(target=bump, args=(state_path, n, 10)) for n in names]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():  # never leave a stuck child behind
            process.kill()
            process.join()
    assert [p.exitcode for p in processes] == [0] * len(names)
    state = StateFile(state_path).read()
    assert state is not None
    assert {a.name: a.requests for a in state.accounts} == dict.fromkeys(names, 10)


def test_a_lock_held_too_long_is_a_clear_error(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = write_state(state_path, account("work"))
    monkeypatch.setattr(statefile, "LOCK_TIMEOUT", 0.05)
    lock_path = state_path.with_name(state_path.name + ".lock")
    holder = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(StateFileError, match="lock") as caught:
            StateFile(state_path).edit(lambda s: s.accounts.clear())
        assert str(lock_path) in str(caught.value)
    finally:
        os.close(holder)
    assert state_path.read_bytes() == original
    StateFile(state_path).edit(lambda s: None)  # free again once released


# -- sync: the proxy's merge with whatever else wrote the file ------------------------------


class Proxy:
    """What the saver does, without the event loop: load once, then sync now and then."""

    def __init__(self, path: Path) -> None:
        self.file = StateFile(path)
        self.pool = Pool(self.file.load())

    def save(self) -> bool:
        unsaved, self.pool.unsaved_requests = self.pool.unsaved_requests, Counter()
        merged, outside = self.file.sync(self.pool.state, unsaved)
        if outside is not None:
            self.pool.adopt(merged, outside)
        return outside is not None

    def route(self, name: str, times: int = 1) -> None:
        for _ in range(times):
            self.pool.record_route(self.pool.get(name), time.time())


def cli(path: Path, change: object) -> None:
    StateFile(path).edit(lambda state: change(Pool(state)))  # type: ignore[operator]


def on_disk(path: Path) -> dict[str, Account]:
    state = StateFile(path).read()
    assert state is not None
    return {a.name: a for a in state.accounts}


def test_sync_writes_this_process_changes(state_path: Path) -> None:
    write_state(state_path, account("a"))
    proxy = Proxy(state_path)
    proxy.route("a", 3)
    now = time.time()
    proxy.pool.record_usage(proxy.pool.get("a"), UsageReport(WindowReport(42.0), None), now)
    assert proxy.save() is False  # nobody else wrote
    disk = on_disk(state_path)["a"]
    assert disk.requests == 3
    assert disk.primary is not None and disk.primary.used_percent == 42.0


def test_sync_keeps_a_pause_and_a_resume_made_by_the_cli(state_path: Path) -> None:
    write_state(state_path, account("a"), account("b", status=Status.PAUSED))
    proxy = Proxy(state_path)
    cli(state_path, lambda pool: (pool.pause("a"), pool.resume("b")))
    proxy.route("a")  # the proxy changed something too
    assert proxy.save() is True
    disk = on_disk(state_path)
    assert (disk["a"].status, disk["b"].status) == (Status.PAUSED, Status.ACTIVE)
    assert disk["a"].requests == 1
    assert proxy.pool.get("a").status is Status.PAUSED  # adopted
    assert proxy.pool.get("b").status is Status.ACTIVE


def test_another_writers_change_is_taken_in_without_redoing_the_rest(state_path: Path) -> None:
    write_state(state_path, account("a"), account("b"), account("c"))
    proxy = Proxy(state_path)
    objects = list(proxy.pool.accounts)
    proxy.pool.choose(Strategy.FILL_FIRST, time.time())  # builds the selection index
    index = proxy.pool._fast
    cli(state_path, lambda pool: pool.pause("b"))
    proxy.route("a")
    assert proxy.save() is True
    # The pool's own objects, merged in place: references held elsewhere stay valid.
    assert all(x is y for x, y in zip(proxy.pool.accounts, objects, strict=True))
    assert proxy.pool._fast is index
    assert proxy.pool.get("b").status is Status.PAUSED
    assert on_disk(state_path)["b"].status is Status.PAUSED
    assert on_disk(state_path)["a"].requests == 1
    choice = proxy.pool.choose(Strategy.FILL_FIRST, time.time(), exclude={proxy.pool.get("a").id})
    assert (
        isinstance(choice, Choice) and choice.account.name == "c"
    )  # the index knows "b" is paused


class Reads:
    """Records the reads sync() makes of the state file; `during` runs after the first."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, during: object = None) -> None:
        self.sizes: list[int] = []
        self.during = during
        monkeypatch.setattr(statefile, "open", self.open, raising=False)

    def open(self, path: Path, mode: str, buffering: int = -1) -> object:
        reads = self
        file = open(path, mode, buffering=buffering)  # noqa: SIM115 (closed by the caller)

        class Recorded:
            def __getattr__(self, name: str) -> object:
                return getattr(file, name)

            def __enter__(self) -> Recorded:
                return self

            def __exit__(self, *exc: object) -> None:
                file.close()

            def readinto(self, view: memoryview) -> int:
                reads.sizes.append(len(view))
                got = file.readinto(view)
                if len(reads.sizes) == 1 and callable(reads.during):
                    reads.during()
                return got

        return Recorded()


def accounts(*names: str) -> tuple[Account, ...]:
    return tuple(account(name) for name in names)


def test_another_writers_large_file_is_read_in_steps(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step is a return from the kernel, where the saver's thread can be preempted."""
    size = len(write_state(state_path, *accounts("a", "b", "c")))
    monkeypatch.setattr(statefile, "READ_STEP", 256)
    proxy = Proxy(state_path)
    cli(state_path, lambda pool: pool.pause("b"))
    reads = Reads(monkeypatch)
    proxy.route("a")
    assert proxy.save() is True
    assert max(reads.sizes) <= 256 and len(reads.sizes) >= size // 256
    assert proxy.pool.get("b").status is Status.PAUSED
    assert on_disk(state_path)["a"].requests == 1


def test_a_large_file_emptied_in_place_is_not_taken_in(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_state(state_path, *accounts("a", "b"))
    monkeypatch.setattr(statefile, "READ_STEP", 64)
    proxy = Proxy(state_path)
    state_path.write_text(" \n" * 200)  # blank, and larger than one step
    proxy.route("a")
    with pytest.raises(StateFileError, match="the file is empty; not taken in"):
        proxy.save()
    assert state_path.read_text() == " \n" * 200


def cut_after_first_account(text: str) -> str:
    """The file as an in-place writer (`cp backup state.toml`) may have left it so far: cut
    between two accounts, which is valid TOML that holds only the first one."""
    second = text.index("[[accounts]]", text.index("[[accounts]]") + 1)
    cut = text[: text.rindex("\n", 0, second) + 1]
    assert [a.name for a in parse(cut, Path("cut.toml")).accounts] == ["a"]
    return cut


def test_a_file_cut_short_by_an_in_place_writer_is_not_taken_in(state_path: Path) -> None:
    whole = write_state(state_path, *accounts("a", "b", "c")).decode()
    proxy = Proxy(state_path)
    cut = cut_after_first_account(whole)
    state_path.write_text(cut)
    with pytest.raises(StateFileError, match="another program is writing the file"):
        proxy.save()
    assert state_path.read_text() == cut  # left alone: the writer's next bytes still land
    assert [a.name for a in proxy.pool.accounts] == ["a", "b", "c"]
    proxy.route("a")
    state_path.write_text(whole)  # the writer is done
    assert proxy.save() is True
    assert sorted(on_disk(state_path)) == ["a", "b", "c"]
    assert on_disk(state_path)["a"].requests == 1


def test_a_changed_file_without_the_closing_line_is_taken_in_once_it_settles(
    state_path: Path,
) -> None:
    """A file edited by hand, the closing line left out: taken in SETTLE seconds after its
    last change."""
    whole = write_state(state_path, *accounts("a", "b", "c")).decode()
    proxy = Proxy(state_path)
    state_path.write_text(cut_after_first_account(whole))  # b and c removed by hand
    past = time.time() - statefile.SETTLE - 1
    os.utime(state_path, (past, past))
    assert proxy.save() is True
    assert list(on_disk(state_path)) == ["a"] == [a.name for a in proxy.pool.accounts]
    assert state_path.read_text().endswith(FOOTER)


def test_the_cli_waits_for_a_file_being_written_in_place(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = write_state(state_path, *accounts("a", "b", "c"))
    cut = cut_after_first_account(whole.decode()).encode()
    with state_path.open("r+b") as writer:  # in place, as cp does: truncate, write, write
        writer.truncate(0)
        writer.write(cut)
        writer.flush()
        sleep = time.sleep

        def meanwhile(seconds: float) -> None:  # the other program writes the rest
            writer.write(whole[len(cut) :])
            writer.flush()
            sleep(seconds)

        monkeypatch.setattr(statefile.time, "sleep", meanwhile)
        StateFile(state_path).edit(lambda state: state.accounts.append(account("d")))
    assert sorted(on_disk(state_path)) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("grows", [True, False], ids=["grows", "shrinks"])
def test_a_file_rewritten_in_place_while_being_read_is_read_again_whole(
    state_path: Path, monkeypatch: pytest.MonkeyPatch, grows: bool
) -> None:
    """An editor writes in place (truncate, then write): the bytes read so far are of the
    old text. The read ends short of, or past, the size the file had."""
    write_state(state_path, *accounts("a", "b"))
    proxy = Proxy(state_path)
    other = state_path.with_name("other.toml")
    other.write_bytes(state_path.read_bytes())
    if grows:
        StateFile(other).edit(lambda state: state.accounts.append(account("c")))
    else:
        StateFile(other).edit(lambda state: state.accounts.pop())
    cli(state_path, lambda pool: pool.pause("a"))  # a change: the proxy reads the file
    monkeypatch.setattr(statefile, "READ_STEP", 128)
    reads = Reads(monkeypatch, during=lambda: state_path.write_bytes(other.read_bytes()))
    proxy.route("a")
    assert proxy.save() is True
    assert len(reads.sizes) > 1
    assert sorted(on_disk(state_path)) == (["a", "b", "c"] if grows else ["a"])
    assert sorted(a.name for a in proxy.pool.accounts) == sorted(on_disk(state_path))


def test_sync_keeps_an_import_and_a_removal_made_by_the_cli(state_path: Path) -> None:
    write_state(state_path, account("a"), account("gone"))
    proxy = Proxy(state_path)
    cli(state_path, lambda pool: pool.state.accounts.append(account("new")))
    cli(state_path, lambda pool: pool.state.accounts.remove(pool.get("gone")))
    proxy.route("gone")
    proxy.save()
    assert set(on_disk(state_path)) == {"a", "new"}
    assert {a.name for a in proxy.pool.accounts} == {"a", "new"}


def test_sync_keeps_the_newer_token_on_either_side(state_path: Path) -> None:
    write_state(state_path, account("a", updated_at=1000.0))
    first, second = Proxy(state_path), Proxy(state_path)
    refreshed = account("a", token="rotated", updated_at=2000.0).credentials
    first.pool.get("a").credentials = refreshed  # `first` refreshed the token
    first.save()
    second.route("a")
    assert second.save() is True  # `second` still holds the old token: it must not win
    assert on_disk(state_path)["a"].credentials == refreshed
    assert second.pool.get("a").credentials == refreshed


def test_a_cli_replace_of_the_token_survives_a_proxy_sync(state_path: Path) -> None:
    write_state(state_path, account("a", updated_at=1000.0))
    proxy = Proxy(state_path)
    imported = account("a", token="imported", updated_at=time.time()).credentials

    def replace(pool: Pool) -> None:
        pool.get("a").credentials = imported

    cli(state_path, replace)
    proxy.route("a")
    proxy.save()
    assert on_disk(state_path)["a"].credentials == imported


def test_request_counts_of_two_proxies_add_up(state_path: Path) -> None:
    write_state(state_path, account("a", requests=100), account("b"))
    one, two = Proxy(state_path), Proxy(state_path)
    one.route("a", 3)
    two.route("a", 5)
    two.route("b", 1)
    one.save()
    two.save()
    one.route("a", 2)
    one.save()
    two.save()
    disk = on_disk(state_path)
    assert (disk["a"].requests, disk["b"].requests) == (110, 1)
    assert one.pool.get("a").requests == two.pool.get("a").requests == 110


def test_a_block_cleared_by_newer_usage_stays_cleared(state_path: Path) -> None:
    write_state(state_path, account("a"))
    one, two = Proxy(state_path), Proxy(state_path)
    t = time.time()
    # `one` is told the account is out for a day
    hit = LimitHit("usage_limit_reached", int(t) + 86400)
    one.pool.record_limit(one.pool.get("a"), hit, t)
    one.save()
    two.save()
    assert two.pool.get("a").block is not None
    # `two` then sees a response with headroom: the upstream reset early
    two.pool.record_usage(two.pool.get("a"), UsageReport(WindowReport(3.0), None), t + 1)
    assert two.pool.get("a").block is None
    two.save()
    one.save()  # `one` still has the block in memory: it must not bring it back
    assert on_disk(state_path)["a"].block is None
    assert one.pool.get("a").block is None


def test_sync_of_a_deleted_file_writes_this_process_state_back(state_path: Path) -> None:
    write_state(state_path, account("a"))
    proxy = Proxy(state_path)
    proxy.route("a", 2)
    state_path.unlink()
    assert proxy.save() is False
    assert on_disk(state_path)["a"].requests == 2


def test_changed_since_known_sees_other_writers(state_path: Path) -> None:
    write_state(state_path, account("a"))
    proxy = Proxy(state_path)
    assert not proxy.file.changed_since_known()
    cli(state_path, lambda pool: pool.pause("a"))
    assert proxy.file.changed_since_known()
    proxy.save()
    assert not proxy.file.changed_since_known()
