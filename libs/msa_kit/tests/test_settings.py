from msa_kit.platform import PlatformSettings
from msa_kit.settings import ConfigSnapshot, build_settings, merge_property_sources, unflatten


def test_first_property_source_wins_like_spring():
    doc = {"propertySources": [
        {"name": "catalog-local.yml", "source": {"http.timeout_s": 0.5}},
        {"name": "application.yml", "source": {"http.timeout_s": 2.0, "breaker.fail_max": 5}},
    ]}
    assert merge_property_sources(doc) == {"http.timeout_s": 0.5, "breaker.fail_max": 5}


def test_unflatten_rebuilds_maps_and_lists_and_drops_invalid_keys():
    flat = {"a.b[0].c": 1, "a.b[0].d": "x", "a.b[1].c": 2, "a.e": True, "tags[1]": "y", "tags[0]": "x",
            "invalid.secret": "<n/a>"}
    assert unflatten(flat) == {"a": {"b": [{"c": 1, "d": "x"}, {"c": 2}], "e": True}, "tags": ["x", "y"]}


def test_environment_overrides_the_config_server(monkeypatch):
    snap = ConfigSnapshot("catalog", "local", "v1", "config-server",
                          {"http.timeout_s": 0.7, "breaker.fail_max": 3})
    assert build_settings(PlatformSettings, snap).http.timeout_s == 0.7
    monkeypatch.setenv("HTTP__TIMEOUT_S", "0.1")
    s = build_settings(PlatformSettings, snap)
    assert s.http.timeout_s == 0.1 and s.breaker.fail_max == 3


def test_instances_sharing_a_var_dir_save_snapshots_without_racing(tmp_path, monkeypatch):
    import os

    from msa_kit.runtime import Runtime
    from msa_kit.settings import save_snapshot

    rt = Runtime.for_service("order")
    rt.var_dir = tmp_path
    snap = ConfigSnapshot("order", "local", "v1", "config-server", {"a": 1})
    # Another instance (pid 99999) writes and renames the temp file *it* uses, between our write and our rename.
    real_replace = os.replace

    def other_instance_renames_first(src, dst):
        theirs = type(src)(str(src).replace(str(os.getpid()), "99999")) if not isinstance(src, str) else src
        if not theirs.exists():
            theirs.write_text("{}")
        real_replace(theirs, dst)  # with one shared temp name, this moved *our* file away
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", other_instance_renames_first)
    save_snapshot(rt, snap)
    assert (tmp_path / "config" / "order-local.json").exists()
