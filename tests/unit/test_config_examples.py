"""The examples in config/ stay true to the code: they load the way the product loads them."""

from __future__ import annotations

import configparser
import plistlib
import re
import shlex
from pathlib import Path

from mitmproxy import optmanager
from mitmproxy.addonmanager import Loader
from mitmproxy.addons.dumper import Dumper
from mitmproxy.options import Options
from mitmproxy.tools.web.webaddons import WebAddon

from addon.state import Status
from addon.statefile import FOOTER, parse

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_example_state_file_loads_with_the_state_files_parser() -> None:
    path = CONFIG / "router-state.example.toml"
    text = path.read_text(encoding="utf-8")
    state = parse(text, path)
    assert text.endswith(FOOTER)  # as every writer ends it: taken in at once when copied in
    work, spare = state.accounts
    assert (work.name, work.status, work.max_primary_percent) == ("work", Status.ACTIVE, 80.0)
    assert work.primary is not None and work.secondary is not None
    assert spare.block is not None and spare.backoff is not None
    assert state.conversations[0].account_id == work.id


def test_example_mitmproxy_config_sets_known_options_only() -> None:
    from addon.router import Router  # registers the router's options

    options = Options()

    class Master:  # all a Loader needs
        pass

    Master.options = options  # type: ignore[attr-defined]
    loader = Loader(Master)
    for addon in (Router(), Dumper(), WebAddon()):
        addon.load(loader)
    optmanager.load(options, (CONFIG / "config.yaml").read_text(encoding="utf-8"))
    assert options.deferred == {}  # every key is a real option of the right type
    assert options.listen_host == "127.0.0.1"
    assert options.router_strategy == "fill_first"
    assert options.router_probe_interval == 60
    assert "comment" in options.web_columns
    assert options.dumper_filter == "!~d router.mitm"
    [allowed] = options.allow_hosts
    for host in ("chatgpt.com:443", "auth.openai.com:443", "ab.chatgpt.com:443"):
        assert re.search(allowed, host), host
    for host in ("example.com:443", "chatgpt.com.evil.example:443", "notchatgpt.com:443"):
        assert not re.search(allowed, host), host


def test_systemd_unit_runs_mitmdump_with_the_router_from_the_repo() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(CONFIG / "quota-router.service", encoding="utf-8")
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "%h/quota-router/.venv/bin/mitmdump"
    assert argv[1:3] == ["-s", "addon/router.py"]
    assert "listen_host=127.0.0.1" in argv
    assert service["WorkingDirectory"] == "%h/quota-router"
    assert service["UMask"] == "0077"
    assert unit["Install"]["WantedBy"] == "default.target"


def test_launchd_agent_runs_mitmdump_with_the_router_from_the_repo() -> None:
    with (CONFIG / "com.quota-router.plist").open("rb") as handle:
        agent = plistlib.load(handle)
    argv = agent["ProgramArguments"]
    assert agent["Label"] == "com.quota-router"
    assert argv[0].endswith("/quota-router/.venv/bin/mitmdump")
    assert argv[1:3] == ["-s", "addon/router.py"]
    assert "listen_host=127.0.0.1" in argv
    assert agent["WorkingDirectory"].endswith("/quota-router")
    assert agent["Umask"] == 0o077
    assert agent["RunAtLoad"] is True
