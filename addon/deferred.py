"""The router's option values given before it declared its options (`--set`, config.yaml).

mitmproxy keeps a value for an option nobody has declared yet and converts it once a script
declares the option, inside its script loader. There a value it cannot convert ("abc" for a
number) goes unreported (`--set`) or comes with a traceback (config.yaml), and the script never
runs: the proxy would pass every request through with the client's own login. So the router
applies its kept values itself, right after declaring its options, and names the one that is
wrong. A misspelt `router_*` option would be kept, unused, for good: it is named too.
"""

from __future__ import annotations

import difflib
from typing import Any

from mitmproxy import exceptions, optmanager

_KINDS = {int: "a whole number", str: "a string", bool: "true or false"}


def apply(options: optmanager.OptManager, prefix: str) -> list[str]:
    """Apply the kept values of the declared options named `prefix...`, one at a time; what
    is wrong with them and with the undeclared ones of that name (empty: nothing)."""
    kept = options.deferred
    problems = []
    known = sorted(n for n in options.keys() if n.startswith(prefix))  # noqa: SIM118 (no iter)
    for name in [n for n in kept if n.startswith(prefix) and n not in options]:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
        problems.append(f"unknown option {name} ({hint})")
    ours = {n: kept.pop(n) for n in list(kept) if n.startswith(prefix) and n in options}
    for name, value in ours.items():
        kept[name] = value
        try:
            options.process_deferred()
        except (exceptions.OptionsError, TypeError, ValueError) as e:
            kept.pop(name, None)  # left there when it failed; the default stays
            problems.append(_problem(name, value, e, options.default(name)))
    return problems


def _problem(name: str, value: Any, error: Exception, default: Any) -> str:
    # Our own words: mitmproxy's differ between versions and may repeat the name.
    strings = getattr(value, "val", None)  # `--set` values, still text; config.yaml's are typed
    if isinstance(strings, list) and all(isinstance(s, str) for s in strings):
        if not strings:
            return f"{name}: needs a value"
        if len(strings) > 1:
            return f"{name}: given {len(strings)} times ({', '.join(strings)}); give it once"
        value = strings[0]
    elif not isinstance(error, TypeError):
        return f"{name}: {error}"
    kind = _KINDS.get(type(default), type(default).__name__)
    return f"{name}: {value!r} is not {kind}"
