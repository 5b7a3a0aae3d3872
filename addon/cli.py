"""`python -m addon`: manage the pool in the state file (safe while the proxy runs)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from addon import report
from addon.authjson import AuthFileError, read_auth_file
from addon.pool import Pool, PoolError
from addon.state import Account, State, Status
from addon.statefile import StateFile, StateFileError, default_path


class CliError(Exception):
    """A user mistake: printed as one line, exit status 1, nothing changed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m addon", description=__doc__)
    parser.add_argument(
        "--state",
        type=Path,
        default=default_path(),
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


def cmd_import(file: StateFile, args: argparse.Namespace) -> str:
    try:
        imported = read_auth_file(args.auth_json)
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
    state = file.read() or State()
    rows = Pool(state).rows(time.time())
    if args.json:
        return json.dumps({"accounts": [_public(r) for r in rows]}, indent=2)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    return report.table(rows, colour=colour)


def _public(row: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in row.items() if k != "next"} | {"next_pick": row["next"]}


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
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    file = StateFile(args.state.expanduser())
    try:
        print(COMMANDS[args.command](file, args))
    except (CliError, StateFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
