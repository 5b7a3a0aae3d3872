"""`python -m addon`: manage the pool in the state file (safe while the proxy runs)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from addon import placeholder, report
from addon.authjson import AuthFileError, file_kind, load_json, parse_auth, read_auth_file
from addon.pool import Pool, PoolError
from addon.state import Account, Credentials, State, Status
from addon.statefile import (
    DEFAULT_CONFDIR,
    DEFAULT_NAME,
    StateFile,
    StateFileError,
    default_path,
    expand,
)


class CliError(Exception):
    """A user mistake: printed as one line, exit status 1, nothing changed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _default_state() -> Path:
    try:
        return default_path()
    except RuntimeError:  # no home directory: left unexpanded, `main` names the problem
        return Path(DEFAULT_CONFDIR, DEFAULT_NAME)


def _expand(path: Path) -> Path:
    try:
        return expand(path)
    except ValueError as e:
        raise CliError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m addon", description=__doc__)
    parser.add_argument(
        "--state",
        type=Path,
        default=_default_state(),
        help="state file (default: %(default)s, the proxy's router_state default)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    add = commands.add_parser("import", help="add an account from a Codex auth.json")
    add.add_argument("auth_json", type=Path)
    add.add_argument("--name", required=True)
    add.add_argument(
        "--replace", action="store_true", help="update the credentials of an existing account"
    )

    status = commands.add_parser("status", help="show the pool")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--watch", action="store_true", help="refresh the table in place until Ctrl-C"
    )

    steer = commands.add_parser("set", help="change an account's priority and caps")
    steer.add_argument("name")
    steer.add_argument("--priority", type=int, help="lower is used first (default 0)")
    steer.add_argument(
        "--max-primary", type=float, metavar="PERCENT", help="stop at this 5 h usage"
    )
    steer.add_argument(
        "--max-secondary", type=float, metavar="PERCENT", help="stop at this weekly usage"
    )

    rename = commands.add_parser("rename", help="rename an account")
    rename.add_argument("old")
    rename.add_argument("new")

    client = commands.add_parser(
        "client-auth", help="write a placeholder Codex auth.json for clients of the proxy"
    )
    client.add_argument("out_json", type=Path)
    client.add_argument("--force", action="store_true", help="overwrite an existing file")

    for name, text in (
        ("pause", "stop routing to an account"),
        ("resume", "route to a paused account again"),
        ("remove", "delete an account and its credentials"),
    ):
        commands.add_parser(name, help=text).add_argument("name")
    return parser


def _load(file: StateFile) -> State:
    state = file.read()
    if state is None:
        raise CliError(f"{file.path}: no state file yet (add an account with `import`)")
    return state


def _find(state: State, name: str) -> Account:
    try:
        return Pool(state).get(name)
    except PoolError as e:
        raise CliError(str(e)) from None


def _refuse_older_login(existing: Account, imported: Credentials) -> None:
    """The pool refreshes its tokens, and each refresh spends the refresh token it used: an
    auth.json from before the last refresh holds a spent one, and putting it back would make
    the account need a new login at its next refresh."""
    stored = existing.credentials
    if (
        existing.status is not Status.REAUTH_REQUIRED
        and stored.account_id == imported.account_id
        and stored.refresh_token != imported.refresh_token
        and stored.expires_at is not None
        and imported.expires_at is not None
        and stored.expires_at > imported.expires_at
    ):
        raise CliError(
            f"{existing.name!r} already holds newer tokens for this login (refreshed since "
            f"this auth.json was written: they expire at {_when(stored.expires_at)}, these at "
            f"{_when(imported.expires_at)}); its refresh token has been spent. Log in again "
            "(`codex login`) and import the new auth.json"
        )


def _when(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(moment))


def cmd_import(file: StateFile, args: argparse.Namespace) -> str:
    try:
        imported = read_auth_file(_expand(args.auth_json))
    except AuthFileError as e:
        raise CliError(str(e)) from None
    verb = "added"

    def change(state: State) -> None:
        nonlocal verb
        existing = state.by_name(args.name)
        same_login = next(
            (
                a
                for a in state.accounts
                if imported.credentials.account_id
                and a.credentials.account_id == imported.credentials.account_id
                and a.email == imported.email
                and a.name != args.name
            ),
            None,
        )
        if same_login is not None:
            raise CliError(
                f"this login is already pooled as {same_login.name!r} "
                f"(use `import ... --name {same_login.name} --replace` to update it)"
            )
        now = time.time()
        if existing is not None:
            if not args.replace:
                raise CliError(
                    f"an account named {args.name!r} exists already "
                    "(add --replace to update its credentials)"
                )
            _refuse_older_login(existing, imported.credentials)
            existing.credentials = imported.credentials
            existing.plan, existing.email = imported.plan, imported.email
            if existing.status is Status.REAUTH_REQUIRED:
                existing.status, existing.status_reason, existing.status_at = Status.ACTIVE, "", now
            verb = "updated"
            return
        if args.replace:
            raise CliError(f"no account named {args.name!r} to replace")
        try:
            account = Account(
                name=args.name,
                plan=imported.plan,
                email=imported.email,
                credentials=imported.credentials,
                added_at=now,
                status_at=now,
                settings_at=now,
            )
        except ValueError:
            raise CliError(
                f"bad account name {args.name!r}: use letters, digits and . _ - @ + "
                "(at most 64, starting with a letter or digit)"
            ) from None
        state.accounts.append(account)

    _edit(file, change)
    return f"{verb} account {args.name!r} ({imported.plan.value}) in {file.path}"


def _edit(file: StateFile, change: Callable[[State], None]) -> State:
    try:
        return file.edit(change)
    except StateFileError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{file.path}: cannot write: {e.strerror or e}") from None


def cmd_status(file: StateFile, args: argparse.Namespace) -> str:
    if args.watch and not args.json:
        return _watch(file)
    rows = Pool(file.read() or State()).rows(time.time())
    if args.json:
        return json.dumps({"accounts": rows}, indent=2)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    return report.table(rows, colour=colour)


def _watch(file: StateFile, interval: float = 2.0) -> str:
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    try:
        while True:
            try:
                text = report.table(Pool(file.read() or State()).rows(time.time()), colour=colour)
            except StateFileError as e:  # a half-edited file: say so and keep watching
                text = f"error: {e}"
            stamp = time.strftime("%H:%M:%S")
            # Home the cursor and clear below: the table is redrawn in place.
            sys.stdout.write(f"\x1b[H\x1b[J{file.path} at {stamp} (Ctrl-C to stop)\n{text}\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return ""


def cmd_pause(file: StateFile, args: argparse.Namespace) -> str:
    _load(file)
    _edit(file, lambda state: _pool_call(Pool(state).pause, args.name))
    return f"paused {args.name!r}"


def cmd_resume(file: StateFile, args: argparse.Namespace) -> str:
    _load(file)
    _edit(file, lambda state: _pool_call(Pool(state).resume, args.name))
    return f"resumed {args.name!r}"


def _pool_call(method: Callable[[str], object], name: str) -> None:
    try:
        method(name)
    except PoolError as e:
        raise CliError(str(e)) from None


def cmd_set(file: StateFile, args: argparse.Namespace) -> str:
    _load(file)
    state = _edit(
        file,
        lambda state: _pool_call(
            lambda name: Pool(state).configure(
                name, args.priority, args.max_primary, args.max_secondary
            ),
            args.name,
        ),
    )
    account = _find(state, args.name)
    return (
        f"{account.name}: priority {account.priority}, caps 5h "
        f"{account.max_primary_percent:g}% / week {account.max_secondary_percent:g}%"
    )


def cmd_rename(file: StateFile, args: argparse.Namespace) -> str:
    _load(file)
    _edit(file, lambda state: _pool_call(lambda old: Pool(state).rename(old, args.new), args.old))
    return f"renamed {args.old!r} to {args.new!r}"


def cmd_client_auth(file: StateFile, args: argparse.Namespace) -> str:
    out = _expand(args.out_json)
    mode = _mode(out)
    if mode is not None and not stat.S_ISREG(mode):  # --force replaces files, nothing else
        raise CliError(f"{out}: is {file_kind(mode)}; give the path of the auth.json to write")
    if mode is not None and not args.force:
        existing = _describe_existing(out)
        raise CliError(f"{out} exists already ({existing}); add --force to replace it")
    _write_private(out, json.dumps(placeholder.auth_json(), indent=2) + "\n")
    return (
        f"wrote a placeholder login to {out}; clients using it need the proxy "
        "(HTTPS_PROXY and CODEX_CA_CERTIFICATE) and never hold a real token"
    )


def _mode(path: Path) -> int | None:
    """The mode of the file at `path` (through symlinks), None if there is none."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise CliError(f"{path}: cannot use: {e.strerror or e}") from None


def _write_private(out: Path, data: str) -> None:
    """Writes `out` (mode 0600) whole or not at all, through a temporary file never left."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise CliError(f"{out}: cannot write: {e.strerror or e}") from None
    replaced = False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
        os.replace(tmp, out)
        replaced = True
    except OSError as e:
        raise CliError(f"{out}: cannot write: {e.strerror or e}") from None
    finally:
        if not replaced:  # any failure, even Ctrl-C: no stray temporary file
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _describe_existing(path: Path) -> str:
    """What the file to overwrite holds, so the user knows what --force would lose."""
    try:
        data = load_json(path)
    except AuthFileError as e:
        return f"a file `import` does not accept: {e.reason}"
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if isinstance(tokens, dict) and placeholder.is_placeholder(tokens.get("refresh_token")):
        return "a placeholder login"
    try:
        parse_auth(data, str(path))
    except AuthFileError as e:
        if isinstance(data, dict) and data.get("OPENAI_API_KEY"):
            return "an API-key login, which `import` cannot keep: copy it elsewhere first"
        return f"a file `import` does not accept: {e.reason}"
    return "a real Codex login: import it first with `import`, it is not kept elsewhere"


def cmd_remove(file: StateFile, args: argparse.Namespace) -> str:
    def change(state: State) -> None:
        state.accounts.remove(_find(state, args.name))

    _load(file)
    _edit(file, change)
    return f"removed {args.name!r} and its credentials from {file.path}"


COMMANDS = {
    "import": cmd_import,
    "status": cmd_status,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "remove": cmd_remove,
    "set": cmd_set,
    "rename": cmd_rename,
    "client-auth": cmd_client_auth,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        file = StateFile(_expand(args.state))
        print(COMMANDS[args.command](file, args))
    except (CliError, StateFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
