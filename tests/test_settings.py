"""Settings layer in order (defaults < file < environment < flags) and refuse what cannot work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.config.model_tables import ModelConfig
from daemon.config.settings import Settings, SettingsError, load_settings


def test_layers_win_in_order(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('port = 1111\nhost = "127.0.0.2"\nmodel = "from-file"\nlog_level = "debug"\n')
    env = {"MLXD_PORT": "2222", "MLXD_MODEL": "from-env"}
    settings = load_settings({"config": str(config), "model": "from-flag", "host": None}, env)
    assert settings.model == "from-flag"
    assert settings.port == 2222
    assert settings.host == "127.0.0.2"
    assert settings.log_level == "debug"
    assert settings.ping_interval == Settings().ping_interval


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "other.toml"
    config.write_text("port = 3333\n")
    assert load_settings({}, {"MLXD_CONFIG": str(config)}).port == 3333


def test_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="port"):
        load_settings({}, {"MLXD_PORT": "many", "MLXD_CONFIG_DIR": str(tmp_path)})
    config = tmp_path / "typo.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="prot"):
        load_settings({"config": str(config)}, {})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings({"config": str(tmp_path / "missing.toml")}, {})


def test_token_file_and_bind_rules(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert Settings(token_file=token_file).resolved_token() == "s3cret"
    assert Settings(token="flag", token_file=token_file).resolved_token() == "flag"
    Settings(host="::1").check_bind()
    Settings(host="0.0.0.0", token="t").check_bind()
    with pytest.raises(SettingsError, match=r"refusing to listen on 0\.0\.0\.0"):
        Settings(host="0.0.0.0").check_bind()
    with pytest.raises(SettingsError, match="cannot read token_file"):
        Settings(token_file=tmp_path / "absent").resolved_token()


def test_a_local_model_folder_that_is_missing_is_refused_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    Settings(model=str(folder)).check_sources()
    Settings(model="org/not-downloaded-yet").check_sources()  # a repo id: downloaded on first use
    Settings().check_sources()  # the demo model
    for missing in (
        str(tmp_path / "no" / "such" / "folder"),
        "./no-such-folder",
        "~/no-such-mlxd-model",
        "a/b/c",
    ):
        with pytest.raises(SettingsError, match=f"no folder {re.escape(missing)} "):
            Settings(model=missing).check_sources()
    file = tmp_path / "weights.safetensors"
    file.write_text("")
    with pytest.raises(SettingsError, match="is a file, not a model folder"):
        Settings(model=str(file)).check_sources()
    configured = Settings(
        models=(
            ModelConfig(name="here", source=str(folder)),
            ModelConfig(name="gone", source=str(tmp_path / "gone")),
        )
    )
    with pytest.raises(SettingsError, match=f"model gone: no folder {re.escape(str(tmp_path / 'gone'))} "):
        configured.check_sources()


def test_speculation_is_set_per_model_over_the_top_level(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    tables = '[[models]]\nname = "a"\nsource = "o/a"\nspeculative = "off"\n\n'
    tables += '[[models]]\nname = "b"\nsource = "o/b"\nspeculative = "draft"\ndraft_model = "o/b-small"\n\n'
    tables += '[[models]]\nname = "c"\nsource = "o/c"\nnum_draft_tokens = 16\n'
    config.write_text(f"num_draft_tokens = 4\n{tables}")
    settings = load_settings({"config": str(config)}, {"MLXD_CONFIG_DIR": str(tmp_path)})
    a, b, c = (settings.speculation_of(model) for model in settings.served_models())
    assert (a.mode, a.num_draft_tokens) == ("off", 4)
    assert (b.mode, b.draft_model) == ("draft", "o/b-small")
    assert (c.mode, c.draft_model, c.num_draft_tokens) == ("prompt-lookup", None, 16)


def test_a_draft_without_its_model_and_unknown_modes_are_refused(tmp_path: Path) -> None:
    env = {"MLXD_CONFIG_DIR": str(tmp_path)}
    with pytest.raises(SettingsError, match='model demo: speculative = "draft" needs draft_model'):
        load_settings({}, {**env, "MLXD_SPECULATIVE": "draft"})
    with pytest.raises(SettingsError, match="speculative"):
        load_settings({}, {**env, "MLXD_SPECULATIVE": "eagle"})
    with pytest.raises(SettingsError, match="num_draft_tokens"):
        load_settings({}, {**env, "MLXD_NUM_DRAFT_TOKENS": "0"})
    assert load_settings({}, {**env, "MLXD_SPECULATIVE": "draft", "MLXD_DRAFT_MODEL": "o/small"}).draft_model


def test_kv_quantization_is_set_per_model_and_refused_outside_its_values(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    tables = '[[models]]\nname = "a"\nsource = "o/a"\nkv_bits = 0\n\n'
    tables += '[[models]]\nname = "b"\nsource = "o/b"\nkv_group_size = 128\n\n'
    tables += '[[models]]\nname = "c"\nsource = "o/c"\nkv_bits = 4\n'
    config.write_text(f"kv_bits = 8\n{tables}")
    settings = load_settings({"config": str(config)}, {"MLXD_CONFIG_DIR": str(tmp_path)})
    assert [settings.kv_of(model) for model in settings.served_models()] == [
        (0, 64),  # its own 0 wins over the top-level 8
        (8, 128),
        (4, 64),
    ]
    env = {"MLXD_CONFIG_DIR": str(tmp_path)}
    assert load_settings({}, {**env, "MLXD_KV_BITS": "4"}).kv_of(None) == (4, 64)
    with pytest.raises(SettingsError, match="kv_bits: must be one of 0, 4, 8"):
        load_settings({}, {**env, "MLXD_KV_BITS": "6"})
    with pytest.raises(SettingsError, match="kv_group_size: must be one of 32, 64, 128"):
        load_settings({}, {**env, "MLXD_KV_GROUP_SIZE": "16"})
