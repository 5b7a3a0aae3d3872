"""The one place that reads and writes the state file.

Writes are atomic (a 0600 temp file beside the target, fsync, rename, fsync of the directory)
and happen under an exclusive lock on `<file>.lock`, so the proxy, a second proxy and the CLI
can share one file: each writer reads what is there, merges or edits, and writes back. A token
refresh holds a lock of its account's instead (`<file>.refresh/`), taking the file's lock only
to write its result.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import mmap
import os
import re
import secrets
import stat
import time
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydantic
import tomli_w

from addon import sections
from addon.merge import Outside, merge, outside_changes
from addon.state import State, validate_in_steps
from addon.synccache import SyncCache

logger = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; atomic renames still keep the file whole
    fcntl = None  # type: ignore[assignment]

HEADER = (
    "# quota-router state file. It holds live credentials: keep it private (mode 0600).\n"
    "# The proxy rewrites this file; edit it only while the proxy is stopped, or use the CLI.\n"
)
# Every writer of ours ends the file with this line. Another program writing the file in place
# (`cp backup state.toml`, an editor) leaves it cut short for a moment, and a cut between two
# accounts is valid TOML: taken in, it would drop the accounts after the cut, and the proxy's
# next save would make that final. So a changed file without this line is taken in only once it
# has stopped changing for SETTLE seconds (a file written by hand, without the line).
FOOTER = "# end of the state file: the proxy takes a changed file in once it ends with this line\n"
_FOOTER_MARK = FOOTER.rstrip().encode()
SETTLE = 3.0
LOCK_TIMEOUT = 15.0
# A refresh holds its account's lock for one token call (refresh.TIMEOUT_SECONDS per socket
# operation: connect, send, answer) and one write.
REFRESH_LOCK_TIMEOUT = 240.0
# Temp files are `.<name>.<pid>.<hex>`; this matches the part after `.<name>.`.
_TEMP_SUFFIX = re.compile(r"\d+\.[0-9a-f]{8,32}")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# A large state file is read in steps of this size: each step is one return from the
# kernel, where the saver's thread can be preempted for the event loop (one 21 MiB read held a
# CPU for 5-13 ms), and the pages are filled there, not under the GIL.
READ_STEP = 1 << 20
_BLANK = re.compile(rb"\s*")
DEFAULT_NAME = "router-state.toml"
DEFAULT_CONFDIR = "~/.mitmproxy"  # mitmproxy's own default confdir


def default_path(confdir: str = DEFAULT_CONFDIR) -> Path:
    return Path(confdir).expanduser() / DEFAULT_NAME


def expand(path: str | Path) -> Path:
    """`path` with a leading ~ or ~user expanded; ValueError naming why when it cannot be."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib's way of saying: unknown user, or no home directory
        first = Path(path).parts[0]
        raise ValueError(
            f"{path}: cannot expand {first!r} (no such user, or no home directory)"
        ) from None


class StateFileError(Exception):
    """The state file cannot be used; the message names the file, where, and what is wrong."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    inode: int
    size: int
    mtime_ns: int


def fingerprint(path: Path) -> Fingerprint | None:
    """None when there is no file; StateFileError when the path cannot be one (a directory
    on the way is a file, a symlink loop, a name too long, no permission)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(f"{path}: cannot read: {e.strerror or e}") from None
    return Fingerprint(st.st_ino, st.st_size, st.st_mtime_ns)


def _line_of_account(text: str, index: int) -> int | None:
    starts = [m.start() for m in re.finditer(r"(?m)^[ \t]*\[\[[ \t]*accounts[ \t]*\]\]", text)]
    if index < len(starts):
        return text.count("\n", 0, starts[index]) + 1
    return None


def _describe(error: pydantic.ValidationError, data: object, text: str) -> str:
    problems = []
    for item in error.errors()[:3]:
        loc = item["loc"]
        if item["type"] == "duplicate_account":  # found by State's own check: where it is
            loc = ("accounts", item["ctx"]["index"])
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        if len(loc) >= 2 and loc[0] == "accounts" and isinstance(loc[1], int):
            line = _line_of_account(text, loc[1])
            accounts = data.get("accounts") if isinstance(data, dict) else None
            account = accounts[loc[1]] if isinstance(accounts, list) else None
            name = account.get("name") if isinstance(account, dict) else None
            if name:
                where += f" (account {name!r})"
            if line:
                where += f" (in the table at line {line})"
        message = item["msg"].removeprefix("Value error, ")  # our validators' own words
        problems.append(f"{where or 'file'}: {message}")
    more = len(error.errors()) - len(problems)
    return "; ".join(problems) + (f"; and {more} more problem(s)" if more > 0 else "")


def parse(text: str, path: Path) -> State:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StateFileError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise StateFileError(f"{path}: not valid TOML: nested too deeply") from None
    try:
        return _validate(data)
    except pydantic.ValidationError as e:
        raise StateFileError(f"{path}: invalid state: {_describe(e, data, text)}") from None


def _validate(data: object) -> State:
    """State.model_validate(data), in steps (see state.validate_in_steps); on any problem the
    whole validation runs again, for its exact error message."""
    if isinstance(data, dict):
        accounts, conversations = data.get("accounts", []), data.get("conversations", [])
        if isinstance(accounts, list) and isinstance(conversations, list):
            fields = {k: v for k, v in data.items() if k not in ("accounts", "conversations")}
            try:
                return validate_in_steps(fields, accounts, conversations)
            except ValueError:  # pydantic.ValidationError too: described below
                pass
    return State.model_validate(data)


def dumps(state: State) -> str:
    return HEADER + tomli_w.dumps(state.model_dump(mode="json", exclude_none=True)) + FOOTER


def _body_end(raw: bytes | mmap.mmap) -> int | None:
    """Where the closing line starts when the file ends with it (blanks after it aside)."""
    tail = bytes(raw[-(len(_FOOTER_MARK) + 64) :])
    kept = tail.rstrip()
    if not kept.endswith(_FOOTER_MARK):
        return None
    return len(raw) - len(tail) + len(kept) - len(_FOOTER_MARK)


def _being_written(raw: bytes | mmap.mmap, current: Fingerprint | None) -> bool:
    """A file without the closing line that changed less than SETTLE seconds ago: another
    program may be writing it in place (a clock far off either way counts as long ago)."""
    if current is None or _body_end(raw) is not None:
        return False
    return abs(time.time() - current.mtime_ns / 1e9) < SETTLE


# Pieces are joined into writes of about this size: few system calls, and no single step that
# holds the GIL for long (the event loop keeps running while a worker thread saves).
WRITE_BATCH = 256 * 1024


def _batches(pieces: list[bytes]) -> Iterator[bytes]:
    if len(pieces) == 1:
        yield pieces[0]
        return
    step = max(1, WRITE_BATCH * len(pieces) // max(1, sum(map(len, pieces))))
    for start in range(0, len(pieces), step):
        yield b"".join(pieces[start : start + step])


def _read_in_steps(f: BinaryIO, size: int) -> mmap.mmap | None:
    """`size` bytes of `f` in READ_STEP reads; None when the file turned out shorter or longer
    (an editor writing it in place meanwhile)."""
    buffer = mmap.mmap(-1, size)
    done = 0
    with memoryview(buffer) as view:
        while done < size and (step := f.readinto(view[done : done + READ_STEP])):
            done += step
    return buffer if done == size and not f.read(1) else None


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        # What this process last read or wrote, to skip re-reading an unchanged file.
        self._known: tuple[Fingerprint, State] | None = None
        # What sync() merged and wrote last: the next sync redoes only what changed.
        self._cache = SyncCache()
        self._swept = False  # stale temp files removed (once per instance, at the first write)
        self._told_refresh_lock = False  # said once that refresh locks cannot be made
        self.recreated = False  # the last sync wrote back a file someone had deleted

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> State | None:
        """The state on disk, or None when there is no file. Raises StateFileError."""
        text = self._read_text()
        return None if text is None else parse(text, self.path)

    def read_settled(self) -> State | None:
        """read(), after another program's write in progress (see FOOTER): a file without
        the closing line is taken once it has not changed for a tenth of a second (for up to
        SETTLE seconds). For writers: what they write back must be the whole file."""
        deadline = time.monotonic() + SETTLE
        while True:
            before = fingerprint(self.path)
            raw = self._read_bytes()
            if raw is None:
                return None
            if _body_end(raw) is None:
                time.sleep(0.1)
                if fingerprint(self.path) != before:
                    if time.monotonic() < deadline:
                        continue
                    raise StateFileError(
                        f"{self.path}: another program keeps writing the file; try again once "
                        "it is done"
                    )
            return parse(self._decode(raw), self.path)

    def _read_bytes(self) -> bytes | mmap.mmap | None:
        """The file's bytes; a large one in READ_STEP reads into anonymous memory (no copy of
        the whole afterwards: that would hold the GIL). Slices of either are bytes."""
        try:
            # Non-blocking: opening a named pipe for reading would wait for a writer forever.
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with open(fd, "rb", buffering=0) as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                    raise StateFileError(f"{self.path}: cannot read: {kind}")
                size = st.st_size
                if size > READ_STEP and (buffer := _read_in_steps(f, size)) is not None:
                    return buffer
                f.seek(0)  # small, or written in place while being read: read it whole
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateFileError(f"{self.path}: cannot read: {e.strerror}") from None

    def _read_text(self) -> str | None:
        raw = self._read_bytes()
        return None if raw is None else self._decode(raw)

    def _decode(self, raw: bytes | mmap.mmap) -> str:
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise StateFileError(f"{self.path}: not UTF-8 text (byte {e.start})") from None

    def _reread(self, raw: bytes | mmap.mmap, known: State | None) -> State:
        """Another writer's file, read section by section: what this process wrote and is
        unchanged comes back as the very objects it wrote (see sections.py)."""
        reuse = self._cache.texts(known) if known is not None else {}
        state = sections.parse_reusing(raw, reuse, _body_end(raw))
        return state if state is not None else parse(self._decode(raw), self.path)

    def load(self) -> State:
        """The state on disk (empty when missing), remembered as this process's known state.

        No lock: writers replace the file whole, so a read sees one version or the other, and
        the fingerprint is taken first (a newer file read with it only causes a re-read later).
        So a read-only directory, where the lock file cannot be opened, can still be loaded.
        """
        before = fingerprint(self.path)
        state = self.read() or State()
        if before is not None:
            # A copy: the caller mutates what it gets, the known state must not move.
            self._known = (before, state.model_copy(deep=True))
        return state

    def changed_since_known(self) -> bool:
        current = fingerprint(self.path)
        known = self._known[0] if self._known else None
        return current != known

    def is_loose(self) -> bool:
        """True when group or others may read the file (it holds credentials)."""
        try:
            return bool(self.path.stat().st_mode & 0o077)
        except OSError:
            return False

    # -- writing ---------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        """`<file>.lock` beside the file the path leads to: a proxy given a symlink and the
        CLI given its target (or another link to it) take the same lock."""
        target = Path(os.path.realpath(self.path))
        return target.with_name(target.name + ".lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        lock_path = self.lock_path
        with _exclusive(
            lock_path,
            LOCK_TIMEOUT,
            f"{self.path}: its lock has been held elsewhere for {LOCK_TIMEOUT:.0f} s "
            f"(another process writing it; {lock_path})",
        ):
            yield

    def refresh_lock_path(self, account_id: str) -> Path:
        """The lock of one account's token refresh, in `<file>.refresh/` beside the lock file:
        accounts share 256 files, so the directory stays small at any pool size (two accounts
        in one file only wait for each other)."""
        bucket = hashlib.sha256(account_id.encode()).hexdigest()[:2]
        return self.lock_path.with_name(self.lock_path.stem + ".refresh") / f"{bucket}.lock"

    @contextlib.contextmanager
    def refreshing(self, account_id: str) -> Iterator[None]:
        """Held across one account's token refresh, from reading its stored pair to writing
        the new one: two processes never spend the same single-use refresh token, while other
        accounts' refreshes and every other writer go on (the call can take seconds)."""
        busy = (
            f"this account's refresh lock has been held for {REFRESH_LOCK_TIMEOUT:.0f} s "
            f"(another refresh waiting for the token endpoint; {self.path})"
        )
        path = self.refresh_lock_path(account_id)
        try:
            fd = _acquire(path, REFRESH_LOCK_TIMEOUT, busy)
        except LockUnavailable as e:
            # No file can be made there (a read-only or immutable directory, a file in the
            # way): refreshes take turns on the directory's own lock instead, as safe for the
            # refresh tokens, only one account at a time.
            if not self._told_refresh_lock:
                self._told_refresh_lock = True
                logger.warning(
                    "quota-router: %s; token refreshes take turns on the lock of %s instead",
                    e,
                    path.parent.parent,
                )
            fd = _acquire(path.parent.parent, REFRESH_LOCK_TIMEOUT, busy, directory=True)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def _write(self, state: State, pieces: list[bytes] | None = None) -> None:
        """Write `state` atomically; `pieces`, when given, are its bytes (see SyncCache)."""
        if pieces is None:
            pieces = [dumps(state).encode()]
        # A state file that is a symlink (kept in a synced folder, say) is written where it
        # points: replacing the link itself would leave its target behind, stale.
        target = Path(os.path.realpath(self.path))
        directory = target.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self._swept:
            self._sweep(directory, target.name)
        # A new, unpredictable name, created exclusively and never through a symlink: a file
        # or link planted under a guessable name cannot receive the credentials.
        for attempt in range(3):
            tmp = directory / f".{target.name}.{os.getpid()}.{secrets.token_hex(8)}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600)
                break
            except FileExistsError:
                if attempt == 2:
                    raise
        try:
            os.fchmod(fd, 0o600)  # the umask may have narrowed it, never widened: be sure
            for data in _batches(pieces):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        try:
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        current = fingerprint(self.path)
        if current is not None:
            self._known = (current, state)

    def _sweep(self, directory: Path, name: str) -> None:
        """Delete temp files a killed writer left behind (they hold credentials). Called with
        the lock held: every writer creates its temp file under the lock, so none is live."""
        if fcntl is None:
            return  # no lock: another writer's temp file may be live
        self._swept = True
        prefix = f".{name}."
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and _TEMP_SUFFIX.fullmatch(
                    entry.name[len(prefix) :]
                ):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def write_aside(self, state: State) -> None:
        """Write `state` (read under the lock just held) without counting it as this process's
        own: the next sync() then reads it back and merges it like any other writer's."""
        known = self._known
        self._write(state)
        self._known = known

    def edit(self, change: Callable[[State], None]) -> State:
        """Read, change and write the file under the lock (the CLI's way). Missing -> created."""
        with self.locked():
            state = self.read_settled() or State()
            change(state)
            state = State.model_validate(state.model_dump())
            self._write(state)
            return state

    def sync(
        self,
        mine: State,
        unsaved_requests: Mapping[str, int],
        conversations: Mapping[str, tuple[str, float]] | None = None,
        changed: Collection[str] | None = None,
    ) -> tuple[State, Outside | None]:
        """Merge this process's state with the file's and write the result (the proxy's way).

        Returns the merged state and, when the file held changes from another writer, what they
        were (the caller then adopts the merged state), else None. Raises StateFileError when
        the file on disk is invalid (it is then left alone) and OSError when it cannot be
        written.

        `changed`, when given, holds the ids of every account of `mine` changed since the last
        sync (the others are then not compared), and `conversations` may then hold only the
        entries set since the last sync: the rest are in the file already.
        """
        self.recreated = False
        with self.locked():
            current = fingerprint(self.path)
            outside = None
            if self._known is not None and current == self._known[0]:
                theirs = self._known[1]
            else:
                raw = self._read_bytes()
                if raw is not None and _BLANK.fullmatch(raw) and self._known is not None:
                    # Truncated by an editor that is about to write, or by mistake: taking it
                    # in would erase every account and credential this process holds.
                    raise StateFileError(
                        f"{self.path}: the file is empty; not taken in (remove accounts with "
                        "the CLI, not by emptying the file)"
                    )
                if raw is not None and self._known is not None and _being_written(raw, current):
                    raise StateFileError(
                        f"{self.path}: another program is writing the file (it changed moments "
                        "ago and does not end with its closing line yet); taken in once it "
                        f"does, or once it has not changed for {SETTLE:.0f} s"
                    )
                if current is None and self._known is not None:
                    theirs = self._known[1]  # deleted under us: write ours back
                    self.recreated = True
                else:
                    known = self._known[1] if self._known is not None else None
                    theirs = State() if raw is None else self._reread(raw, known)
                    outside = outside_changes(known, theirs)
            cache = self._cache
            cache.changed = changed
            try:
                merged = merge(
                    mine,
                    theirs,
                    unsaved_requests,
                    conversations,
                    merge_list=cache.merge_list,
                    merge_table=cache.merge_table,
                )
                self._write(merged, cache.pieces(merged, HEADER, FOOTER))
            except BaseException:
                cache.discard()
                raise
            cache.commit(merged)
            return merged, outside


class LockUnavailable(StateFileError):
    """A lock file that cannot be opened or created (not a lock held elsewhere)."""


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout: float, busy: str) -> Iterator[None]:
    """An exclusive flock on `lock_path` (created 0600), waited for up to `timeout` seconds;
    StateFileError(busy) after that. flock, not fcntl record locks: those are per process, so
    two threads of one proxy would not exclude each other."""
    fd = _acquire(lock_path, timeout, busy)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def _acquire(path: Path, timeout: float, busy: str, directory: bool = False) -> int | None:
    """The open, flocked descriptor of `path` (a lock file, or an existing directory: a
    directory can be locked where no file can be created); None without flock (Windows)."""
    if fcntl is None:
        return None
    try:
        if directory:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Not followed: a link planted in a shared directory would have this user create
            # (and lock) a file wherever it points.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW, 0o600)
    except OSError as e:
        # Named: "cannot write" with the state file's name would send the user elsewhere.
        reason = {
            errno.EEXIST: f"{path.parent} is not a directory",
            errno.ELOOP: "it is a symbolic link, which a lock file must not be",
        }.get(e.errno or 0, e.strerror)
        raise LockUnavailable(f"{path}: cannot open the lock file: {reason}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StateFileError(busy) from None
                time.sleep(0.01)
    except BaseException:
        os.close(fd)
        raise
