"""The state file edited by hand while the proxy runs.

Into something invalid: the proxy keeps its last good state (routing goes on), logs what is
wrong (file, line, field) once, and never overwrites the user's text until it is fixed. Once
fixed, the fix is taken in (here: an account paused by hand) and nothing the proxy learnt
meanwhile is lost.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.pool_env import Spec, import_accounts
from tests.faults._backend import FaultyBackend
from tests.faults._support import (
    assert_no_crash,
    dashboard_status,
    env_for,
    proxy,
    read_state,
)

pytestmark = pytest.mark.e2e

RESPONSES = "/backend-api/codex/responses"
SAVE_ERROR = r"quota-router: cannot save state \((?P<message>.*)\); routing continues"


def edit_field(text: str, name: str, key: str, literal: str) -> tuple[str, int]:
    """`text` with `key = ...` of account `name`'s table set to `literal`; and its line."""
    blocks = re.split(r"(?m)^(?=\[\[accounts\]\])", text)
    for i, block in enumerate(blocks):
        if re.search(rf'(?m)^name = "{re.escape(name)}"$', block):
            blocks[i], count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {literal}", block, count=1)
            assert count == 1, key
            edited = "".join(blocks)
            line = edited[: edited.index(f"{key} = {literal}")].count("\n") + 1
            return edited, line
    raise AssertionError(name)


def table_line(text: str, name: str) -> int:
    """The line of the `[[accounts]]` header of account `name`."""
    position = text.index(f'name = "{name}"')
    header = text.rindex("[[accounts]]", 0, position)
    return text[:header].count("\n") + 1


def served(fake: FaultyBackend) -> list[str | None]:
    return [r.account_id for r in fake.requests_for(RESPONSES)]


def wait_requests(state: Path, total: int) -> None:
    deadline = time.monotonic() + 10
    while sum(a.requests for a in read_state(state).accounts) != total:
        assert time.monotonic() < deadline, "the proxy did not save"
        time.sleep(0.05)


def test_an_invalid_hand_edit_is_reported_kept_out_and_taken_in_once_fixed(
    tmp_path: Path,
) -> None:
    state = tmp_path / "router-state.toml"
    with FaultyBackend(usage_step=(0.0, 0.0)) as fake:
        # fill_first serves the most used account: a, as long as it is active.
        auths = import_accounts(fake, state, [Spec("a", primary=50), Spec("b", primary=10)])
        running = proxy(fake, state, confdir=tmp_path / "conf").start()
        try:
            env = env_for(fake, running, state, auths)
            assert env.turn().status == 200
            wait_requests(state, 1)
            good = state.read_text()

            # 1. Not TOML any more (an unterminated string), written in place like an editor.
            mark = len(running.lines)
            broken = good.replace('name = "b"', 'name = "b', 1)
            bad_line = broken[: broken.index('name = "b')].count("\n") + 1
            state.write_text(broken)
            assert [env.turn().status for _ in range(3)] == [200] * 3
            # (An in-place write is a truncation, then the text: the proxy may see the empty
            # file first and say so; the message that counts is the one about the text.)
            line = running.wait_for_line(SAVE_ERROR.replace(".*", ".*not valid TOML.*"), 10, mark)
            assert str(state) in line["message"] and "not valid TOML" in line["message"]
            assert f"line {bad_line}" in line["message"], line.string
            assert f"line {bad_line}" in (dashboard_status(running)["saving_error"] or "")
            time.sleep(1.5)  # a few save attempts
            assert state.read_text() == broken
            assert served(fake) == ["acct-a"] * 4  # the last good state still routes

            # 2. Valid TOML, an invalid value: named with its field, account and line.
            mark = len(running.lines)
            invalid, _ = edit_field(good, "b", "priority", "5000")
            state.write_text(invalid)
            assert env.turn().status == 200
            line = running.wait_for_line(SAVE_ERROR.replace(".*", r".*accounts\[1\].*"), 10, mark)
            message = line["message"]
            assert str(state) in message and "accounts[1].priority" in message, message
            assert "account 'b'" in message, message
            assert f"line {table_line(invalid, 'b')}" in message, message
            time.sleep(1.5)
            assert state.read_text() == invalid
            errors = [ln for ln in running.lines[mark:] if "accounts[1].priority" in ln]
            assert len(errors) == 1, errors  # said once, not at every retry

            # 3. Fixed, and a pausing a by hand on the way: taken in, nothing lost.
            mark = len(running.lines)
            fixed, _ = edit_field(good, "a", "status", '"paused"')
            state.write_text(fixed)
            running.wait_for_line(r"quota-router: state saved again", 10, start=mark)
            assert dashboard_status(running)["saving_error"] is None
            fake.clear_log()
            assert env.turn().status == 200
            assert served(fake) == ["acct-b"]  # a is paused now
            wait_requests(state, 6)
            final = {a.name: a for a in read_state(state).accounts}
            assert final["a"].status.value == "paused"
            assert (final["a"].requests, final["b"].requests) == (5, 1)
        finally:
            running.stop()
        assert_no_crash(running.output)


def test_an_emptied_file_is_not_taken_as_a_pool_without_accounts(tmp_path: Path) -> None:
    """An editor that truncates and then writes, or `> router-state.toml` by mistake: an empty
    file must not make the proxy forget (and erase) every account and credential."""
    state = tmp_path / "router-state.toml"
    with FaultyBackend() as fake:
        auths = import_accounts(fake, state, [Spec("a"), Spec("b")])
        running = proxy(fake, state, confdir=tmp_path / "conf").start()
        try:
            env = env_for(fake, running, state, auths)
            assert env.turn().status == 200
            wait_requests(state, 1)
            good = state.read_text()
            mark = len(running.lines)
            state.write_text("")
            line = running.wait_for_line(SAVE_ERROR, 10, start=mark)
            assert "empty" in line["message"], line.string
            fake.clear_log()
            assert env.turn().status == 200
            [request] = fake.requests_for(RESPONSES)
            assert request.account_id in ("acct-a", "acct-b")  # still pooled, not passed through
            time.sleep(1.0)
            assert state.read_text() == ""  # the user's (unfinished) edit is left alone
            state.write_text(good)  # the editor finishes writing
            running.wait_for_line(r"quota-router: state saved again", 10, start=mark)
            wait_requests(state, 2)
            assert {a.name for a in read_state(state).accounts} == {"a", "b"}
        finally:
            running.stop()
        assert_no_crash(running.output)
