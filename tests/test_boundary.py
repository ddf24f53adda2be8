"""The security boundary: a token on every route but the probes, only loopback (or configured) Host names,
no web page origins, JSON-only bodies, client allow-lists, model names that name no file, and logs that
carry request ids but never tokens, prompts or outputs."""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from quart import Quart

from daemon.api.auth import OPEN_ROUTES
from daemon.config.settings import Settings, SettingsError, load_settings
from daemon.config.tokens import write_token
from daemon.server import create_app, load_registry
from tests.conftest import RunningServer, run_server, server_env

pytestmark = pytest.mark.anyio

TOKEN = "boundary-token-6f1d2a9c"
MODEL = "tiny"
MESSAGE = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_app(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The daemon's app in this process (Quart's test client), on the tiny model, never started."""
    monkeypatch.setenv("MLXD_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("MLXD_DATA_DIR", str(tmp_path / "data"))

    def make(**overrides) -> Quart:
        settings = Settings(model=str(tiny_model), model_name=MODEL, **overrides)
        return create_app(settings, load_registry(settings))

    return make


async def call(
    app: Quart,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    client: str = "127.0.0.1",
    **given: str | None,
) -> tuple[int, dict, dict]:
    """Status, headers and JSON body (empty when none) of one request through the test client; a header
    given as None is left out."""
    headers = {"Host": "localhost:8484"}
    if body is not None:
        headers.update({"Content-Type": "application/json", "Content-Length": str(len(body))})
    headers.update({name.replace("_", "-"): value for name, value in given.items()})
    headers = {name: value for name, value in headers.items() if value is not None}
    response = await app.test_client().open(
        path, method=method, headers=headers, data=body, scope_base={"client": (client, 50000)}
    )
    data = await response.get_data()
    parsed = json.loads(data) if data and response.mimetype == "application/json" else {}
    return response.status_code, dict(response.headers), parsed


def error_type(body: dict) -> str:
    """The error's type from Anthropic's envelope, or from OpenAI's (the `/v1/chat/` routes)."""
    if "type" not in body:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        return body["error"]["type"]
    assert body["type"] == "error" and body["request_id"].startswith("req_"), body
    return body["error"]["type"]


def route_requests(app: Quart) -> Iterator[tuple[str, str]]:
    """(method, path) for every method of every route, with a placeholder for each path parameter."""
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods):
            yield method, re.sub(r"<[^>]+>", "x", rule.rule)


async def test_every_route_but_the_probes_needs_the_token(make_app) -> None:
    app = make_app(token=TOKEN)
    open_routes = {
        ("GET", "/health"),
        ("HEAD", "/health"),
        ("HEAD", "/"),
        ("HEAD", "/api/hello"),
        ("GET", "/"),
    }
    assert open_routes == OPEN_ROUTES
    walked = list(route_requests(app))
    assert "static" not in {rule.endpoint for rule in app.url_map.iter_rules()}  # no files served
    assert {"OPTIONS"}.isdisjoint(method for method, _ in walked)  # no preflight is answered
    assert set(walked) >= OPEN_ROUTES
    for method, path in walked:
        body = b"{}" if method == "POST" else None
        status, _, answer = await call(app, method, path, body=body, accept="text/html")
        if (method, path) in OPEN_ROUTES:
            assert status == 200, (method, path)
        else:
            assert status == 401, (method, path)
            if method != "HEAD":
                assert error_type(answer) == "authentication_error"
        status, _, _ = await call(app, method, path, body=body, x_api_key="wrong")
        assert (status == 401) is ((method, path) not in OPEN_ROUTES), (method, path)


async def test_either_token_header_is_accepted(make_app) -> None:
    app = make_app(token=TOKEN)
    assert (await call(app, "GET", "/v1/models", x_api_key=TOKEN))[0] == 200
    assert (await call(app, "GET", "/v1/models", authorization=f"Bearer {TOKEN}"))[0] == 200
    both = {"x_api_key": "wrong", "authorization": f"Bearer {TOKEN}"}
    assert (await call(app, "GET", "/v1/models", **both))[0] == 200
    status, _, answer = await call(app, "GET", "/v1/models", authorization="Bearer " + TOKEN[:-1])
    assert status == 401 and TOKEN[:-1] not in json.dumps(answer)


LOOPBACK_HOSTS = [
    "localhost",
    "LOCALHOST:8484",
    "127.0.0.1",
    "127.0.0.1:8484",
    "127.9.8.7:80",
    "[::1]",
    "[::1]:8484",
    "mybox.LOCAL:8484",
]
FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:8484",
    "localhost.evil.example",
    "127.0.0.1.evil.example",
    "[::2]:8484",
    "2130706433",
    "evil@127.0.0.1",
    "127.0.0.1/x",
    "::1",
    "",
]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_loopback_and_configured_hosts_are_answered(make_app, host: str) -> None:
    app = make_app(allowed_hosts=("MyBox.local",))
    assert (await call(app, "GET", "/v1/models", Host=host))[0] == 200


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
async def test_other_hosts_are_refused_before_the_token(make_app, host: str) -> None:
    # DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 reads what it posts.
    app = make_app(token=TOKEN, allowed_hosts=("mybox.local",))
    for path in ("/health", "/v1/models"):
        status, _, answer = await call(app, "GET", path, Host=host)
        assert status == 403 and error_type(answer) == "permission_error"
        assert f"Host {host!r} is not allowed" in answer["error"]["message"]
        assert "allowed_hosts" in answer["error"]["message"]


async def test_a_non_loopback_bind_answers_its_own_address(make_app) -> None:
    app = make_app(host="192.168.7.9", token=TOKEN)
    assert (await call(app, "GET", "/health", Host="192.168.7.9:8484"))[0] == 200
    assert (await call(app, "GET", "/health", Host="192.168.7.10:8484"))[0] == 403


async def test_web_page_origins_are_refused_unless_configured(make_app) -> None:
    app = make_app(allowed_origins=("https://Tool.example/",))
    assert (await call(app, "GET", "/v1/models"))[0] == 200  # programs send no Origin
    assert (await call(app, "GET", "/v1/models", Origin="https://tool.example"))[0] == 200
    for origin in ("http://evil.example", "null", "https://tool.example.evil.example"):
        status, _, answer = await call(app, "POST", "/v1/messages", body=b"{}", Origin=origin)
        assert status == 403 and error_type(answer) == "permission_error"
        assert f"Origin {origin!r}" in answer["error"]["message"]


async def test_no_cors_is_granted(make_app) -> None:
    app = make_app(allowed_origins=("https://tool.example",))
    preflight = {"Access_Control_Request_Method": "POST", "Access_Control_Request_Headers": "content-type"}
    answers = [
        (await call(app, "OPTIONS", "/v1/messages", Origin="http://evil.example", **preflight), 403),
        (await call(app, "OPTIONS", "/v1/messages", Origin="https://tool.example", **preflight), 405),
        (await call(app, "OPTIONS", "/v1/messages"), 405),
        (await call(app, "GET", "/v1/models", Origin="https://tool.example"), 200),
        (await call(app, "POST", "/v1/messages", body=b"{}", Origin="http://evil.example"), 403),
    ]
    for (status, headers, _), expected in answers:
        assert status == expected
        assert not [name for name in headers if name.lower().startswith("access-control-")], headers


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/vnd.api+json",
        None,
    ],
)
async def test_bodies_must_be_json(make_app, content_type: str | None) -> None:
    app = make_app()
    for path in ("/v1/messages", "/v1/messages/count_tokens", f"/v1/admin/models/{MODEL}/unload"):
        status, _, answer = await call(
            app, "POST", path, body=json.dumps(MESSAGE).encode(), Content_Type=content_type
        )
        assert status == 400 and error_type(answer) == "invalid_request_error", (path, answer)
        assert answer["error"]["message"].startswith("content-type: send the body as application/json")


async def test_json_bodies_and_empty_admin_posts_pass(make_app) -> None:
    app = make_app()
    body = json.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for content_type in ("application/json", "Application/JSON; charset=utf-8"):
        status, _, answer = await call(
            app, "POST", "/v1/messages/count_tokens", body=body, Content_Type=content_type
        )
        assert status == 404 and error_type(answer) == "not_found_error"  # it reached the route
    status, _, answer = await call(app, "POST", "/v1/admin/models/nope/load")
    assert status == 404 and answer["error"]["message"].startswith("model: nope")


@pytest.mark.parametrize(("allowed", "status"), [(("127.0.0.1",), 200), (("10.0.0.0/8", "::1"), 403)])
async def test_client_allow_list(make_app, allowed: tuple[str, ...], status: int) -> None:
    app = make_app(allowed_clients=allowed)
    for path in ("/health", "/v1/models"):
        code, _, answer = await call(app, "GET", path, client="127.0.0.1")
        assert code == status
        if status == 403:
            assert error_type(answer) == "permission_error"
            assert "'127.0.0.1' is not in allowed_clients" in answer["error"]["message"]
    assert (await call(app, "GET", "/health", client="10.2.3.4"))[0] == (403 if status == 200 else 200)


def test_boundary_settings_from_the_environment(tmp_path: Path) -> None:
    env = {
        "MLXD_CONFIG_DIR": str(tmp_path),
        "MLXD_ALLOWED_HOSTS": "MyBox.local, [fe80::1]",
        "MLXD_ALLOWED_ORIGINS": "https://Tool.example/",
        "MLXD_ALLOWED_CLIENTS": "127.0.0.1,10.1.2.3/8",
    }
    settings = load_settings({}, env)
    assert settings.allowed_hosts == ("mybox.local", "fe80::1")
    assert settings.allowed_origins == ("https://tool.example",)
    assert [str(network) for network in settings.allowed_clients] == ["127.0.0.1/32", "10.0.0.0/8"]
    with pytest.raises(
        SettingsError, match="allowed_clients: 'my-laptop' does not appear to be an IPv4 or IPv6"
    ):
        load_settings({}, {**env, "MLXD_ALLOWED_CLIENTS": "my-laptop"})


def test_the_token_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "config" / "token"
    path.parent.mkdir(mode=0o755)
    path.write_text("old\n")
    path.chmod(0o644)
    write_token(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "new\n"


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    """A real daemon with a token, logging at debug (the most it ever logs), its Hugging Face cache in its
    home so that a download would show."""
    home = tmp_path_factory.mktemp("boundary")
    env = server_env(home, HF_HOME=str(home / "hf"))
    args = ("--model", str(tiny_model), "--model-name", MODEL, "--log-level", "debug")
    with run_server(home, *args, token=TOKEN, env=env) as running:
        yield running


def files_under(home: Path, log: Path) -> set[str]:
    return {str(path.relative_to(home)) for path in home.rglob("*") if path != log}


PATH_NAMES = ["../../etc/passwd", "/etc", "~", "/tmp/x", "mlx-community/Foo", "~/.cache/huggingface"]


def test_model_names_name_no_file(server: RunningServer) -> None:
    home = server.log_path.parent
    before = files_under(home, server.log_path)
    with server.http() as http:
        for name in PATH_NAMES:
            answers = [
                http.post("/v1/messages", json={**MESSAGE, "model": name}),
                http.post("/v1/messages/count_tokens", json={**MESSAGE, "model": name}),
                http.get(f"/v1/models/{quote(name, safe='')}"),
                http.post(f"/v1/admin/models/{quote(name, safe='')}/load"),
            ]
            for response in answers:
                assert response.status_code == 404, (name, response.request.url, response.text)
                error = response.json()["error"]
                assert error["type"] == "not_found_error"
                assert error["message"].startswith(f"model: {name} (available: {MODEL}"), error
    assert files_under(home, server.log_path) == before
    assert not (home / "hf").exists()
    assert "loading model" not in server.log() and "download" not in server.log().lower()


def test_the_token_is_never_logged_or_echoed(server: RunningServer) -> None:
    wrong = "wrong-token-a8e3b0f1c2"
    responses = []
    for token in (wrong, TOKEN):
        for headers in ({"x-api-key": token}, {"authorization": f"Bearer {token}"}):
            responses += [
                httpx.post(f"{server.url}/v1/messages", json=MESSAGE, headers=headers),
                httpx.get(f"{server.url}/v1/models/nope", headers=headers),
                httpx.post(
                    f"{server.url}/v1/messages",
                    content=b"{",
                    headers={**headers, "content-type": "text/plain"},
                ),
            ]
    assert [r.status_code for r in responses] == [401, 401, 400] * 2 + [200, 404, 400] * 2
    ids = [r.headers["request-id"] for r in responses]
    log = wait_for_log(server, lambda log: all(request_id in log for request_id in ids))
    for secret in (wrong, TOKEN):
        assert secret not in log
        for response in responses:
            assert (
                secret not in response.text
                and secret not in str(response.headers)
                and secret not in str(response.url)
            )


def wait_for_log(server: RunningServer, done, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while not done(server.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.log()


def test_lines_carry_the_request_id_but_no_prompt_or_output(tiny_model: Path, tmp_path: Path) -> None:
    prompt = "walrus-cobalt-unique-prompt-7731"
    with (
        run_server(tmp_path, "--model", str(tiny_model), "--model-name", MODEL) as server,
        server.http() as http,
    ):
        reply = http.post(
            "/v1/messages",
            json={**MESSAGE, "max_tokens": 40, "messages": [{"role": "user", "content": prompt}]},
        )
        output = reply.json()["content"][0]["text"]
        refused = http.get("/v1/models", headers={"host": "evil.example"})
        log = wait_for_log(server, lambda log: refused.headers["request-id"] in log and "stop=" in log)
    assert len(output) > 20 and output not in log and prompt not in log
    for response in (reply, refused):
        request_id = response.headers["request-id"]
        lines = [line for line in log.splitlines() if request_id in line]
        assert lines and all(f"[{request_id}]:" in line for line in lines), lines
    assert "403 permission_error: Host 'evil.example' is not allowed" in log
