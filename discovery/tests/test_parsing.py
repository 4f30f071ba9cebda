"""Durations, the filter language subset and registration decoding: pure functions."""

from __future__ import annotations

import pytest

from msa_discovery.decode import DecodeError, ScriptChecksDisabled, check_registration, service_registration
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
    ({"Name": "w", "Check": {"GRPC": "127.0.0.1:1", "Interval": "1s"}}, "only TTL, HTTP and TCP"),
    ({"Name": "w", "Check": {"Args": ["true"]}}, "Interval must be > 0 for Script"),  # validated before refused
])
def test_registration_errors(body: object, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as e:
        service_registration(body)
    assert e.value.status == 400


def test_script_checks_are_refused_like_consul_with_script_checks_disabled() -> None:
    for body in [{"Name": "w", "Check": {"Args": ["/bin/true"], "Interval": "10s"}},
                 {"Name": "w", "Checks": [{"TTL": "5s"}, {"script_args": ["/bin/true"], "interval": "10s"}]}]:
        with pytest.raises(ScriptChecksDisabled, match="Scripts are disabled on this agent from remote calls") as e:
            service_registration(body)
        assert e.value.status == 500
    definition, script = check_registration({"Name": "disk", "Args": ["df"], "Interval": "10s"})
    assert script and definition.check_id == "disk"  # the caller refuses it, after checking the ServiceID


def test_check_registration_reads_a_consul_check_definition() -> None:
    # What py-consul sends for c.agent.check.register("mem", Check.ttl("30s"), notes="n", service_id="web-1").
    d, script = check_registration({"name": "mem", "ttl": "30s", "notes": "n", "serviceid": "web-1"})
    assert not script
    assert (d.check_id, d.name, d.service_id, d.ttl, d.notes, d.initial_status) == \
        ("mem", "mem", "web-1", 30, "n", "critical")
    d, _ = check_registration({"Name": "mem", "ID": "mem-1", "TTL": "5s", "Status": "passing"})
    assert (d.check_id, d.service_id, d.initial_status) == ("mem-1", None, "passing")  # no ServiceID: the node's
    d, _ = check_registration({"Name": "mem", "CheckID": "ignored", "TTL": "5s", "service_id": "web-2"})
    assert (d.check_id, d.service_id) == ("mem", "web-2")  # Consul's CheckDefinition has ID, not CheckID
    d, _ = check_registration({"Name": "port", "TCP": "127.0.0.1:1", "Interval": "2s"})
    assert (d.tcp, d.interval, d.type) == ("127.0.0.1:1", 2, "tcp")


@pytest.mark.parametrize(("body", "reason"), [
    ({"TTL": "5s"}, "Missing check name"),
    ({"Name": "c", "TTL": "5s", "Status": "fine"}, "Bad check status"),
    ({"Name": "c"}, "Invalid check: TTL must be > 0 for TTL checks"),
    ({"Name": "c", "HTTP": "http://x/"}, "Invalid check: Interval must be > 0"),
    ({"Name": "c", "TTL": "5s", "Interval": "5s"}, "Invalid check: Interval and TTL cannot both be specified"),
    ("c", "Request decode failed"),
])
def test_check_registration_errors(body: object, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        check_registration(body)
