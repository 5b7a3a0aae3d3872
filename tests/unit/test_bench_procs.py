"""bench/procs.py's configurations: what each mitmdump loads decides what the ratios mean."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import NO_SCRIPT, ROUTER, SHIM, SHIMS, TWIN, Proxy, configs

Made = Callable[..., dict[str, Proxy]]


@pytest.fixture
def made(tmp_path: Path) -> Iterator[Made]:
    """configs(), by name; none is started, but each has made its work folder."""
    proxies: list[Proxy] = []

    def make(**options: Any) -> dict[str, Proxy]:
        proxies.extend(configs(1, (10,), tmp_path, **options))
        return {p.name: p for p in proxies}

    yield make
    for proxy in proxies:
        proxy.stop()


def test_every_configuration_loads_the_bench_shim_bare_mitmdump_too(made: Made) -> None:
    proxies = made(no_script=True, twin=True)
    assert list(proxies) == ["bare", NO_SCRIPT, "stream", "hooks", "addon-10", TWIN]
    assert proxies["bare"].scripts == [SHIM]
    assert proxies[NO_SCRIPT].scripts == []
    for name in ("stream", "hooks", "addon-10", TWIN):
        assert proxies[name].scripts[-1] == SHIM, name


def test_hooks_has_the_routers_shape_one_script_of_its_own(made: Made) -> None:
    proxies = made()
    assert proxies["hooks"].scripts == [SHIMS / "hooks.py", SHIM]
    assert proxies["addon-10"].scripts == [ROUTER, SHIM]
    assert proxies["stream"].scripts == [SHIMS / "stream.py", SHIM]
