from __future__ import annotations

import pytest
from mitmproxy import exceptions, optmanager

from addon import deferred


def declared(*specs: str) -> optmanager.OptManager:
    """Options as mitmproxy holds them when a script declares its own: `specs` were given
    first (`--set`), then the router's options were declared."""
    options = optmanager.OptManager()
    options.set(*specs, defer=True)
    options.add_option("router_probe_interval", int, 60, "seconds")
    options.add_option("router_strategy", str, "fill_first", "strategy")
    return options


def test_values_given_before_the_options_existed_are_applied() -> None:
    options = declared("router_probe_interval=5", "router_strategy=capacity_weighted")
    assert deferred.apply(options, "router_") == []
    assert options.router_probe_interval == 5
    assert options.router_strategy == "capacity_weighted"
    assert options.deferred == {}


def test_a_value_mitmproxy_cannot_convert_is_named_and_the_rest_still_applies() -> None:
    options = declared("router_probe_interval=abc", "router_strategy=capacity_weighted")
    assert deferred.apply(options, "router_") == [
        "router_probe_interval: 'abc' is not a whole number"
    ]
    assert options.router_probe_interval == 60
    assert options.router_strategy == "capacity_weighted"
    # mitmproxy's own pass (when the script is registered) now has nothing left to fail on.
    options.process_deferred()


def test_without_this_mitmproxy_fails_on_the_value_where_nothing_reports_it() -> None:
    options = declared("router_probe_interval=abc")
    with pytest.raises(exceptions.OptionsError):
        options.process_deferred()


def test_a_value_from_config_yaml_of_the_wrong_type_is_named() -> None:
    options = optmanager.OptManager()
    options.update_defer(router_probe_interval="abc", router_strategy=7)  # as YAML typed them
    options.add_option("router_probe_interval", int, 60, "seconds")
    options.add_option("router_strategy", str, "fill_first", "strategy")
    assert deferred.apply(options, "router_") == [
        "router_probe_interval: 'abc' is not a whole number",
        "router_strategy: 7 is not a string",
    ]


def test_a_value_given_twice_or_without_a_value_is_named() -> None:
    options = declared("router_probe_interval=5", "router_probe_interval=6", "router_strategy")
    assert deferred.apply(options, "router_") == [
        "router_probe_interval: given 2 times (5, 6); give it once",
        "router_strategy: needs a value",
    ]


def test_a_misspelt_option_is_named_with_the_closest_one() -> None:
    options = declared("router_strateg=capacity_weighted", "router_bogus=1", "other_thing=1")
    assert deferred.apply(options, "router_") == [
        "unknown option router_strateg (did you mean router_strategy?)",
        "unknown option router_bogus (known: router_probe_interval, router_strategy)",
    ]
    assert options.router_strategy == "fill_first"
