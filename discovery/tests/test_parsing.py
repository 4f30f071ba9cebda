"""Durations, the filter language subset and registration decoding: pure functions."""

from __future__ import annotations

import pytest

from msa_discovery.decode import DecodeError, service_registration
from msa_discovery.durations import format_duration, parse_duration
from msa_discovery.filter import FilterError, compile_filter


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10), ("1m", 60), ("500ms", 0.5), ("1h", 3600), ("1m30s", 90), ("1.5s", 1.5), ("0", 0), ("250us", 0.00025),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "1x", "ten seconds", "1s junk"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(10, "10s"), (60, "1m0s"), (3600, "1h0m0s"), (0.5, "500ms"),
                                               (0, "0s"), (90.5, "1m30.5s")])
def test_format_duration_like_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


ROW = {"Service": {"ID": "web-1", "Tags": ["blue", "v2"], "Meta": {"version": "2", "zone": "a"}, "Port": 80},
       "Node": {"Node": "n1"}}


@pytest.mark.parametrize(("expr", "expected"), [
    ('"blue" in Service.Tags', True),
    ('"green" in Service.Tags', False),
    ('"green" not in Service.Tags', True),
    ('Service.Meta.version == "2"', True),
    ('Service.Meta.version != "2"', False),
    ('Service.Meta.missing == ""', True),
    ('Service.Tags contains "v2"', True),
    ('Service.Port == 80', True),
    ('Service.ID matches "^web-"', True),
    ('Service.Meta is not empty', True),
    ('Service.Meta.missing is empty', True),
    ('"blue" in Service.Tags and Service.Meta.zone == "b"', False),
    ('"blue" in Service.Tags and (Service.Meta.zone == "b" or Node.Node == "n1")', True),
    ('not "blue" in Service.Tags', False),
    ('', True),
])
def test_filter(expr: str, expected: bool) -> None:
    assert compile_filter(expr)(ROW) is expected


@pytest.mark.parametrize("expr", ['Service.Tags', '"x" Service.Tags', '(Service.ID == "a"', 'Service.ID == ',
                                  'Service.ID matches "("', 'a == "b" extra'])
def test_filter_rejects_malformed(expr: str) -> None:
    with pytest.raises(FilterError):
        compile_filter(expr)


def test_registration_keys_are_case_insensitive_but_meta_keys_are_not() -> None:
    body = {"NAME": "web", "id": "web-1", "Port": 80, "tags": ["a"], "META": {"Version": "1"},
            "check": {"TTL": "10s", "deregister_critical_service_after": "1m", "Status": "passing", "NOTES": "n"}}
    service, [check] = service_registration(body)
    assert (service.id, service.name, service.port, service.tags, service.meta) == ("web-1", "web", 80, ("a",),
                                                                                     {"Version": "1"})
    assert (check.check_id, check.ttl, check.deregister_after, check.initial_status, check.notes) == \
        ("service:web-1", 10, 60, "passing", "n")
    assert check.name == "Service 'web' check"


def test_several_checks_are_numbered_from_one() -> None:
    _, checks = service_registration({"Name": "web", "Check": {"TTL": "5s"},
                                      "Checks": [{"HTTP": "http://x/", "Interval": "1s"}, {"TTL": "5s", "CheckID": "mine"}]})
    assert [c.check_id for c in checks] == ["service:web:1", "service:web:2", "mine"]
    assert checks[1].timeout == 1  # Consul: the interval, when shorter than the 10s default


@pytest.mark.parametrize(("body", "reason"), [
    ({}, "Missing service name"),
    ([], "Request decode failed"),
    ({"Name": "w", "Port": "80"}, "Port must be an integer"),
    ({"Name": "w", "Tags": "a"}, "Tags must be a list"),
    ({"Name": "w", "Meta": {"k": 1}}, "Meta must be a map"),
    ({"Name": "w", "Meta": {"bad key": "v"}}, "Invalid Service Meta"),
    ({"Name": "w", "Check": {"Interval": "10s"}}, "TTL must be > 0"),
    ({"Name": "w", "Check": {"HTTP": "http://x/"}}, "Interval must be > 0"),
    ({"Name": "w", "Check": {"TTL": "1s", "Interval": "1s"}}, "cannot both be specified"),
    ({"Name": "w", "Check": {"TTL": "soon"}}, "invalid duration"),
    ({"Name": "w", "Check": {"TTL": "1s", "Status": "great"}}, "Status for checks must"),
    ({"Name": "w", "Check": {"Args": ["true"], "Interval": "1s"}}, "only TTL, HTTP and TCP"),
])
def test_registration_errors(body: object, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        service_registration(body)
