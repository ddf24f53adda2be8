"""Which model a name means, what the memory budget unloads or refuses, and how the config file lists models:
pure rules, checked on literal input."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config.model_tables import ModelConfig, is_repo_id
from daemon.config.settings import SettingsError, load_settings
from daemon.config.units import format_bytes
from daemon.engine.memory import NoRoom, Resident, plan_room
from daemon.engine.names import ModelNames, NameRule, tier_rules

MiB = 2**20


def names(small: str | None = "small", rules: tuple[NameRule, ...] = ()) -> ModelNames:
    aliases = {"main": ("qwen-coder", "claude-sonnet-4-5"), "small": ("qwen-small",), "other": ()}
    return ModelNames(aliases, [*rules, *tier_rules("main", small)])


def test_exact_name_then_alias_then_rules() -> None:
    resolve = names().resolve
    assert resolve("other") == "other"
    assert resolve("qwen-small") == "small"
    assert resolve("claude-sonnet-4-5") == "main"  # an alias wins over the rules
    assert resolve("Other") is None  # names are exact; only rules ignore case
    assert resolve("gpt-4o") is None


def test_claude_tiers_go_to_the_small_or_main_model() -> None:
    resolve = names().resolve
    assert resolve("claude-haiku-4-5-20251001") == "small"
    assert resolve("Claude-3-5-Haiku-latest") == "small"
    assert resolve("claude-opus-4-1-20250805") == "main"
    assert resolve("claude-sonnet-4-6") == "main"
    assert names(small=None).resolve("claude-haiku-4-5") == "main"  # no small model: the main one


def test_configured_rules_come_first_and_may_name_an_alias() -> None:
    configured = (NameRule("gpt-*", "qwen-small"), NameRule("claude-opus-*", "other"))
    resolve = names(rules=configured).resolve
    assert resolve("gpt-4o") == "small"
    assert resolve("claude-opus-4-1") == "other"
    assert resolve("claude-sonnet-4-6") == "main"
    assert names().available() == ["main", "small", "other", "qwen-coder", "claude-sonnet-4-5", "qwen-small"]


def resident(name: str, mib: int, last_used: float, *, pinned: bool = False, busy: bool = False) -> Resident:
    return Resident(name, mib * MiB, pinned, busy, last_used)


def test_room_is_made_by_unloading_idle_models_least_recently_used_first() -> None:
    loaded = [resident("a", 4, last_used=3), resident("b", 4, last_used=1), resident("c", 4, last_used=2)]
    assert plan_room("new", 2 * MiB, 16 * MiB, loaded) == []
    assert [r.name for r in plan_room("new", 6 * MiB, 16 * MiB, loaded)] == ["b"]
    assert [r.name for r in plan_room("new", 12 * MiB, 16 * MiB, loaded)] == ["b", "c"]
    assert [r.name for r in plan_room("new", 14 * MiB, 16 * MiB, loaded)] == ["b", "c", "a"]
    assert plan_room("new", 100 * MiB, 0, loaded) == []  # budget 0: no limit


def test_a_model_that_can_never_fit_is_refused_for_good() -> None:
    loaded = [resident("pinned", 10, last_used=1, pinned=True), resident("idle", 4, last_used=2)]
    with pytest.raises(NoRoom) as refused:
        plan_room("huge", 8 * MiB, 16 * MiB, loaded)
    assert refused.value.retry is False
    message = str(refused.value)
    assert "model huge needs 8.0 MiB; the memory budget is 16.0 MiB" in message
    assert "loaded are: pinned (10.0 MiB, pinned), idle (4.0 MiB)" in message
    assert "do not retry" in message


def test_the_kv_state_a_model_holds_counts_in_its_size() -> None:
    loaded = [Resident("a", 10 * MiB, False, False, 1, kv_bytes=6 * MiB), resident("b", 4, last_used=2)]
    assert [r.name for r in plan_room("new", 4 * MiB, 16 * MiB, loaded)] == ["a"]  # 4 MiB of weights in a
    with pytest.raises(NoRoom, match=r"a \(10.0 MiB, 6.0 MiB of it KV, in use\)"):
        plan_room("new", 8 * MiB, 16 * MiB, [Resident("a", 10 * MiB, False, True, 1, kv_bytes=6 * MiB)])


def test_a_model_that_fits_once_others_are_idle_is_refused_for_now() -> None:
    loaded = [resident("busy", 10, last_used=1, busy=True)]
    with pytest.raises(NoRoom) as refused:
        plan_room("new", 8 * MiB, 16 * MiB, loaded)
    assert refused.value.retry is True
    assert "busy (10.0 MiB, in use)" in str(refused.value) and "Retry once they are idle" in str(
        refused.value
    )


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 * MiB, 3 * 2**30 + 2**29)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
        "3.5 GiB",
    ]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


MODELS = """
small_model = "quick"
[[models]]
name = "coder"
source = "org/coder-4bit"
aliases = ["big"]
temperature = 0.7
top_k = 20
[[models]]
name = "small"
source = "/models/small"
aliases = ["quick"]
ttl = 60
"""


def test_models_from_the_config_file_main_first(tmp_path: Path) -> None:
    settings = load_settings({"config": write(tmp_path, MODELS)}, {})
    served = settings.served_models()
    assert [m.name for m in served] == ["coder", "small"]
    assert served[0].sampling == {"temperature": 0.7, "top_k": 20}
    assert settings.served_name == "coder"
    # `--model` naming a configured model makes it the main one; naming a source adds it first.
    assert [
        m.name
        for m in load_settings({"config": write(tmp_path, MODELS), "model": "quick"}, {}).served_models()
    ] == [
        "small",
        "coder",
    ]
    flagged = load_settings(
        {"config": write(tmp_path, MODELS), "model": "/elsewhere", "model_name": "x", "context_length": 512},
        {},
    )
    assert flagged.served_models()[0] == ModelConfig(name="x", source="/elsewhere", context_length=512)
    assert load_settings({}, {"MLXD_CONFIG_DIR": str(tmp_path / "none")}).served_models() == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            MODELS + '[[models]]\nname = "x"\nsource = "y"\naliases = ["big"]\n',
            "'big' names both 'coder' and 'x'",
        ),
        (MODELS.replace('small_model = "quick"', 'small_model = "tiny"'), "small_model 'tiny' is not"),
        (MODELS + '[[model_rules]]\npattern = "gpt-*"\nmodel = "nope"\n', "'gpt-*' points to 'nope'"),
        (
            "keep_small_model_loaded = true\n" + MODELS.replace('small_model = "quick"', ""),
            "needs small_model",
        ),
        (MODELS.replace("ttl = 60", "ttl = -1"), "models.1.ttl"),
        (MODELS.replace('name = "coder"', 'name = "coder"\ncolour = "red"'), "models.0.colour"),
    ],
)
def test_model_config_mistakes_are_named(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(SettingsError, match="invalid settings") as error:
        load_settings({"config": write(tmp_path, text)}, {})
    assert problem in str(error.value)


def test_the_readme_config_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = readme.split("## Models", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    settings = load_settings({"config": write(tmp_path, example)}, {})
    assert [m.name for m in settings.served_models()] == ["qwen-coder", "qwen-small", "local"]
    assert settings.small_model == "qwen-small" and settings.memory_budget == 24_000_000_000


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("/x/y/qwen3-mini", "qwen3-mini"),
        ("./models/coder/", "coder"),
        ("~/models/small", "small"),
        ("models/qwen/4bit", "4bit"),  # two slashes: no repo id, so a folder
    ],
)
def test_a_local_folder_is_served_by_its_folder_name_and_found_by_its_source(
    tmp_path: Path, source: str, name: str
) -> None:
    settings = load_settings({"model": source}, {"MLXD_CONFIG_DIR": str(tmp_path)})
    assert settings.served_models() == [ModelConfig(name=name, source=source, aliases=(source,))]
    assert settings.served_name == name


def test_a_repo_id_or_a_given_name_is_the_id_as_given(tmp_path: Path) -> None:
    env = {"MLXD_CONFIG_DIR": str(tmp_path)}
    repo = "mlx-community/Qwen3-4B-4bit"
    assert load_settings({"model": repo}, env).served_models() == [ModelConfig(name=repo, source=repo)]
    named = load_settings({"model": "/x/y/m", "model_name": "local"}, env)
    assert named.served_models() == [ModelConfig(name="local", source="/x/y/m")]


def test_a_folder_name_a_configured_model_has_asks_for_model_name(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="set model_name") as error:
        load_settings({"config": write(tmp_path, MODELS), "model": "/elsewhere/coder"}, {})
    assert "/elsewhere/coder" in str(error.value) and "'coder'" in str(error.value)


@pytest.mark.parametrize(
    ("flags", "text", "problem"),
    [
        ({"model_name": "//x"}, "", "model_name: '//x' cannot be a model id"),
        ({}, '[[models]]\nname = "/"\nsource = "org/m"\n', "models.0.name: '/' cannot be a model id"),
        ({}, '[[models]]\nname = "m"\nsource = "org/m"\naliases = ["//m"]\n', "models.0.aliases"),
    ],
)
def test_ids_no_models_url_can_name_are_refused(tmp_path: Path, flags: dict, text: str, problem: str) -> None:
    with pytest.raises(SettingsError, match="invalid settings") as error:
        load_settings({"config": write(tmp_path, text), **flags}, {})
    assert problem in str(error.value)


@pytest.mark.parametrize(
    "source",
    [
        "gpt2",
        "mlx-community/Qwen3-4B-Instruct-2507-4bit",
        "org/name.v2",
        "/abs/path",
        "./relative",
        "~/models/m",
        "models/qwen/4bit",
        "org//name",
        "org/-name",
        "org--x/name",
        "org/a..b",
        "org/name.git",
        "café/model",
        "my model",
        "org/" + "n" * 97,
    ],
)
def test_repo_ids_are_told_from_local_folders_as_the_hub_tells_them(source: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
        hub_accepts = True
    except HFValidationError:
        hub_accepts = False
    assert is_repo_id(source) == hub_accepts
