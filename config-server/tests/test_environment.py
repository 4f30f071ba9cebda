"""Spring's rules, without HTTP: which files, in which order, flattened how."""

from __future__ import annotations

from pathlib import Path

import pytest

from msa_config_server.environment import (
    BrokenFileError,
    InvalidRequestError,
    build_environment,
    candidate_basenames,
    flatten,
    merge_sources,
    parse_properties,
    render_properties,
    render_yaml,
    resolve_placeholders,
    unflatten,
)
from msa_config_server.repository import FileRepository

ALL_FILES = {
    "application.yml": "who: application\nonly.application: true\n",
    "application-dev.yml": "who: application-dev\n",
    "application-eu.yml": "who: application-eu\n",
    "catalog.yml": "who: catalog\n",
    "catalog-dev.yml": "who: catalog-dev\n",
    "catalog-eu.yml": "who: catalog-eu\n",
    "order.yml": "who: order\n",
}


def test_precedence_later_profile_first_app_before_application() -> None:
    assert candidate_basenames("catalog", ["dev", "eu"]) == [
        "catalog-eu", "application-eu", "catalog-dev", "application-dev", "catalog", "application",
    ]


def test_application_itself_is_not_listed_twice() -> None:
    assert candidate_basenames("application", ["dev"]) == ["application-dev", "application"]


def test_environment_lists_only_matching_files_highest_precedence_first(write_repo) -> None:
    repo = write_repo(**ALL_FILES)
    env = build_environment(FileRepository(repo), "catalog", "dev,eu")
    names = [Path(s["name"]).name for s in env["propertySources"]]
    assert names == ["catalog-eu.yml", "application-eu.yml", "catalog-dev.yml", "application-dev.yml",
                     "catalog.yml", "application.yml"]
    assert env["profiles"] == ["dev", "eu"]
    assert merge_sources(env)["who"] == "catalog-eu"  # the later profile wins
    assert merge_sources(build_environment(FileRepository(repo), "catalog", "eu,dev"))["who"] == "catalog-dev"


def test_app_specific_beats_application_and_profile_beats_plain(write_repo) -> None:
    repo = write_repo(**ALL_FILES)
    assert merge_sources(build_environment(FileRepository(repo), "order", "dev"))["who"] == "application-dev"
    merged = merge_sources(build_environment(FileRepository(repo), "order", "default"))
    assert merged == {"only.application": True, "who": "order"}


def test_property_source_names_and_version_for_a_directory(write_repo) -> None:
    repo = write_repo(**{"catalog.yml": "a: 1\n"})
    env = build_environment(FileRepository(repo), "catalog", "default")
    assert env["propertySources"] == [{"name": f"file:{repo}/catalog.yml", "source": {"a": 1}}]
    first = env["version"]
    (repo / "catalog.yml").write_text("a: 2\n")
    assert build_environment(FileRepository(repo), "catalog", "default")["version"] != first


def test_properties_beat_yaml_for_the_same_base_name(write_repo) -> None:
    repo = write_repo(**{"catalog.yml": "a: yaml\n", "catalog.properties": "a=props\n"})
    env = build_environment(FileRepository(repo), "catalog", "default")
    assert [Path(s["name"]).name for s in env["propertySources"]] == ["catalog.properties", "catalog.yml"]


def test_flatten_nested_maps_lists_and_empties() -> None:
    doc = {"server": {"port": 8080, "ssl": {"enabled": False}},
           "hosts": ["a", {"name": "b", "tags": ["x"]}], "empty": {}, "none": None, 3: "int key"}
    assert flatten(doc) == {
        "server.port": 8080, "server.ssl.enabled": False,
        "hosts[0]": "a", "hosts[1].name": "b", "hosts[1].tags[0]": "x",
        "empty": "", "none": "", "3": "int key",
    }


def test_unflatten_inverts_flatten() -> None:
    doc = {"server": {"port": 8080}, "hosts": ["a", {"name": "b", "tags": ["x", "y"]}]}
    assert unflatten(flatten(doc)) == doc


def test_lists_are_replaced_whole_not_merged(write_repo) -> None:
    repo = write_repo(**{"application.yml": "hosts: [a, b, c]\n", "catalog.yml": "hosts: [x]\n"})
    merged = merge_sources(build_environment(FileRepository(repo), "catalog", "default"))
    assert merged == {"hosts[0]": "x"}


def test_multi_document_yaml_honours_on_profile(write_repo) -> None:
    repo = write_repo(**{"catalog.yml": "a: base\n---\nspring.config.activate.on-profile: dev\na: dev\n"})
    assert merge_sources(build_environment(FileRepository(repo), "catalog", "dev"))["a"] == "dev"
    assert merge_sources(build_environment(FileRepository(repo), "catalog", "prod"))["a"] == "base"


def test_parse_java_properties() -> None:
    text = "# comment\n! also\na=1\nb : two\nc three\nd = multi \\\n    line\ne=tab\\there\\u00e9\nf\\=g=h\n"
    assert parse_properties(text) == {"a": "1", "b": "two", "c": "three", "d": "multi line",
                                      "e": "tab\there\u00e9", "f=g": "h"}


def test_render_properties_sorted_key_colon_value(write_repo) -> None:
    repo = write_repo(**{"application.yml": "z: last\nserver:\n  port: 8080\nflag: true\nlist: [a, b]\n"})
    merged = merge_sources(build_environment(FileRepository(repo), "catalog", "default"))
    assert render_properties(merged) == "flag: true\nlist[0]: a\nlist[1]: b\nserver.port: 8080\nz: last"


def test_render_yaml_is_nested() -> None:
    assert render_yaml({"server.port": 8080, "list[0]": "a"}) == "server:\n  port: 8080\nlist:\n- a\n"


def test_placeholders_resolved_with_default_and_escape() -> None:
    flat = {"port": 8080, "url": "http://h:${port}/", "d": "${missing:fallback}", "u": "${missing}",
            "esc": "\\${port}"}
    assert resolve_placeholders(flat) == {"port": 8080, "url": "http://h:8080/", "d": "fallback",
                                          "u": "${missing}", "esc": "${port}"}


def test_broken_yaml_names_the_file(write_repo) -> None:
    repo = write_repo(**{"catalog.yml": "a: [unclosed\n"})
    with pytest.raises(BrokenFileError) as err:
        build_environment(FileRepository(repo), "catalog", "default")
    assert err.value.filename == "catalog.yml"


@pytest.mark.parametrize("application,profiles", [("../etc", "default"), ("catalog", ".hidden"), ("catalog", ",")])
def test_names_that_cannot_be_files_are_refused(write_repo, application: str, profiles: str) -> None:
    with pytest.raises(InvalidRequestError):
        build_environment(FileRepository(write_repo()), application, profiles)
