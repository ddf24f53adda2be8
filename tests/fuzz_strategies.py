"""Fuzzing mlxd over HTTP for tests/test_fuzz.py and benchmarks/fuzz.py: strategies for whole requests to
every route (raw bytes and headers; valid, mutated, nonsense), and the check every response must pass."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from hypothesis import strategies as st

from daemon.anthropic.errors import error_type
from daemon.chat.limits import MAX_TOP_K
from daemon.server import MAX_HEADER_BYTES
from tests.images import encoded

# What any response may be; 431 (with the envelope, from the HTTP layer) for a request head too large.
# 409: the admin API's "model in use" when unloading.
DOCUMENTED = frozenset({200, 400, 401, 403, 404, 405, 413, 429, 431, 529})
ADMIN_EXTRA = frozenset({409})
CASE_TIMEOUT = 60.0
READ_LIMIT = 8 * 1024 * 1024  # of a response body: far more than any answer here, and bounded


@dataclass(frozen=True)
class Target:
    """The server under test: the model name it serves and the token it requires."""

    model: str
    token: str
    port: int


@dataclass(frozen=True)
class Case:
    """One request, exactly as it goes on the wire, and what its response must be beyond the general
    rules: `expect` the statuses allowed (empty: any documented one), `names` a text the error message
    must contain."""

    route: str
    method: str
    path: str
    headers: tuple[tuple[str, bytes], ...]
    body: bytes | None = None
    expect: frozenset[int] = frozenset()
    names: str | None = None
    statuses: frozenset[int] = DOCUMENTED


@dataclass
class Outcome:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    transport_error: str | None = None
    seconds: float = 0.0


# Raw JSON text for what Python's json cannot write (1e400, a 5000-digit number, a 10,000-deep array):
# the sentinel string survives json.dumps as an escaped string, which `encode` then replaces.
_RAW = "\x00raw\x00"
_RAW_ESCAPED = re.compile(r'"\\u0000raw\\u0000(.*?)\\u0000"')


def raw(text: str) -> str:
    return f"{_RAW}{text}\x00"


def encode(value: object, *, ascii_only: bool = True) -> bytes:
    """JSON bytes as a client might send them; NaN and Infinity written as Python writes them, lone
    surrogates as `\\ud800` escapes or, with `ascii_only` off, as the invalid UTF-8 bytes they encode to."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    return _RAW_ESCAPED.sub(lambda m: m.group(1), text).encode("utf-8", "surrogatepass")


# Text without surrogates, so that valid requests really are valid; oddities come in through mutations.
texts = st.text(st.characters(codec="utf-8"), max_size=24)
finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=10,
)
json_objects = st.dictionaries(texts, finite_json, max_size=4)


def nested(depth: int) -> str:
    return raw("[" * depth + "]" * depth)


ODD_VALUES = [
    float("nan"),
    float("inf"),
    float("-inf"),
    raw("1e400"),
    raw("-1e400"),
    raw("1" + "0" * 400),
    raw("9" * 5000),
    10**399,
    -(2**64),
    2**63,
    1.5,
    -1,
    0,
    True,
    False,
    None,
    "",
    " ",
    "\ud800",
    "\udfff",
    "a\ud800b",
    "\x00",
    "\u202e\ufeff",
    [],
    {},
    [None],
    {"type": None},
    nested(129),
    nested(200),
    nested(202),
    nested(10_000),
]
odd_values = st.one_of(
    st.sampled_from(ODD_VALUES),
    finite_json,
    st.floats(),
    st.text(st.characters(categories=["Cs", "Cc", "Co", "L", "Zs"]), max_size=8),  # lone surrogates too
    st.sampled_from([2**16, 2**18]).map(lambda n: "x" * n),
)


# Valid requests, built to meet every rule the server and the API state, so each must be answered.
tool_names = st.from_regex(r"[a-zA-Z0-9_-]{1,24}", fullmatch=True)
schemas = st.one_of(
    st.just({"type": "object"}),
    st.fixed_dictionaries(
        {
            "type": st.just("object"),
            "properties": st.dictionaries(
                tool_names,
                st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean", "array")]),
                max_size=3,
            ),
        }
    ),
    json_objects,  # bizarre schemas: any object is a schema to the API
    st.just({"type": 7, "properties": [], "items": "x", "required": {"a": 1}}),
)
cache_control = st.sampled_from([{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])
text_blocks = st.builds(lambda t: {"type": "text", "text": t}, texts) | st.builds(
    lambda t, c: {"type": "text", "text": t, "cache_control": c}, texts, cache_control
)
# Valid image sources are real images of the four types (URL sources and undecodable data are 400s).
image_sources = st.sampled_from(
    [
        {"type": "base64", "media_type": f"image/{fmt.lower()}", "data": encoded(fmt)}
        for fmt in ("PNG", "GIF", "WEBP")
    ]
    + [{"type": "base64", "media_type": "image/jpeg", "data": encoded("JPEG")}]
)
image_blocks = st.builds(lambda s: {"type": "image", "source": s}, image_sources)
document_blocks = st.builds(
    lambda s, title: {"type": "document", "source": s, **({"title": title} if title is not None else {})},
    st.one_of(
        st.builds(lambda d: {"type": "text", "media_type": "text/plain", "data": d}, texts),
        json_objects,
    ),
    st.none() | texts,
)
tool_reference_blocks = st.builds(lambda n: {"type": "tool_reference", "tool_name": n}, texts)
search_result_blocks = st.builds(
    lambda s, t, c: {"type": "search_result", "source": s, "title": t, "content": c},
    texts,
    texts,
    st.lists(text_blocks, max_size=2),
)
tool_result_blocks = st.builds(
    lambda i, c, e: {"type": "tool_result", "tool_use_id": i, "content": c, "is_error": e},
    texts,
    texts
    | st.lists(
        st.one_of(text_blocks, image_blocks, document_blocks, tool_reference_blocks, search_result_blocks),
        max_size=3,
    ),
    st.booleans(),
)
user_blocks = st.one_of(
    text_blocks,
    image_blocks,
    document_blocks,
    tool_result_blocks,
    tool_reference_blocks,
    search_result_blocks,
)
assistant_blocks = st.one_of(
    text_blocks,
    st.builds(lambda t, s: {"type": "thinking", "thinking": t, "signature": s}, texts, texts),
    st.builds(lambda d: {"type": "redacted_thinking", "data": d}, texts),
    st.builds(
        lambda i, n, a: {"type": "tool_use", "id": i, "name": n, "input": a}, texts, texts, json_objects
    ),
)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict]:
    """1-5 messages in any order of roles (the API merges consecutive turns), each with content; the last
    may be an assistant turn to prefill, empty or not."""
    messages = []
    for _ in range(draw(st.integers(1, 5))):
        role = draw(st.sampled_from(["user", "user", "assistant", "system"]))
        blocks = assistant_blocks if role == "assistant" else user_blocks
        content = draw(texts | st.lists(blocks, min_size=1, max_size=3))
        messages.append({"role": role, "content": content})
    if draw(st.booleans()):
        messages.append({"role": "assistant", "content": draw(st.sampled_from([[], "", "Sure,"]))})
    return messages


@st.composite
def valid_requests(draw: st.DrawFn, model: str) -> dict:
    """A Messages request the server must answer (or find too long for the context)."""
    names = draw(st.lists(tool_names, max_size=3, unique=True))
    tools = [
        {"name": name, "description": draw(texts), "input_schema": draw(schemas)}
        | ({"cache_control": draw(cache_control)} if draw(st.booleans()) else {})
        for name in names
    ]
    thinking = draw(
        st.sampled_from(
            [None, {"type": "disabled"}, {"type": "adaptive"}, {"type": "enabled"}, {"type": "adaptive"}]
        )
    )
    if thinking and thinking["type"] == "enabled":
        max_tokens = draw(st.sampled_from([1025, 1100, 10**12]))
        thinking = thinking | {"budget_tokens": draw(st.integers(1024, max_tokens - 1))}
    else:
        max_tokens = draw(st.sampled_from([0, 1, 2, 3, 5, 8, 16, 10**12]))
    if thinking and draw(st.booleans()):
        thinking = thinking | {"display": draw(st.sampled_from(["summarized", "omitted"]))}
    choices = [None, {"type": "auto"}, {"type": "none"}]
    if names and not (thinking and thinking["type"] != "disabled"):
        choices += [{"type": "any"}, {"type": "tool", "name": draw(st.sampled_from(names))}]
    choice = draw(st.sampled_from(choices))
    if choice and draw(st.booleans()):
        choice = choice | {"disable_parallel_tool_use": draw(st.booleans())}
    request = {
        "model": draw(
            st.sampled_from([model, "claude-sonnet-4-5", "claude-3-5-haiku-latest", "claude-opus"])
        ),
        "max_tokens": max_tokens,
        "messages": draw(conversations()),
    }
    # Null is the same as absent for every field.
    for name, value in (("tools", tools), ("tool_choice", choice), ("thinking", thinking)):
        if value or draw(st.booleans()):
            request[name] = value
    stream = draw(st.sampled_from(["absent", True, True, False, None]))
    if stream != "absent":
        request["stream"] = stream
    optional = {
        "system": texts | st.lists(text_blocks, max_size=3),
        "stop_sequences": st.lists(texts, max_size=4),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(0, 2000) | st.just(MAX_TOP_K),
        "metadata": st.builds(lambda u: {"user_id": u}, texts),
        "context_management": json_objects,  # unknown fields are ignored
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        request[name] = draw(optional[name] | st.none())
    return request


def _paths(value: object, at: tuple = ()) -> list[tuple]:
    found = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*at, i))
    return found


def _replace(value: object, path: tuple, new: object, *, delete: bool = False) -> object:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if delete and not rest:
            del copy[head]
        else:
            copy[head] = _replace(value[head], rest, new, delete=delete)
        return copy
    copy = list(value)
    if delete and not rest:
        del copy[head]
    else:
        copy[head] = _replace(value[head], rest, new, delete=delete)
    return copy


ODD_NAMES = ["type", "role", "content", "text", "name", "input", "tool_choice", "stream", "max_tokens", ""]
ODD_TYPES = [
    "video",
    "TEXT",
    "text ",
    "",
    "tool_use",
    "thinking",
    "server_tool_use",
    "web_search_tool_result",
]


@st.composite
def mutated(draw: st.DrawFn, request: dict) -> object:
    """The request with one thing changed where a client could get it wrong: a value of the wrong kind or
    range, a field gone or emptied, an unknown field, an odd role or block type."""
    path = draw(st.sampled_from(_paths(request)))
    kind = draw(st.sampled_from(["replace", "delete", "add", "retype", "empty"]))
    if kind == "empty":
        sized = [p for p in _paths(request) if isinstance(_at(request, p), list | dict | str)]
        where = draw(st.sampled_from(sized))
        return _replace(request, where, type(_at(request, where))())
    if kind == "delete" and path:
        return _replace(request, path, None, delete=True)
    if kind == "add":
        containers = [p for p in _paths(request) if _at(request, p).__class__ in (dict, list)]
        where = draw(st.sampled_from(containers))
        container = _at(request, where)
        value = draw(odd_values)
        if isinstance(container, dict):
            grown = {**container, draw(st.sampled_from(ODD_NAMES) | texts): value}
        else:
            grown = [*container, value]
        return _replace(request, where, grown)
    if kind == "retype":
        odd = draw(st.sampled_from([*ODD_TYPES, "robot", "tool", "developer", "User"]))
        typed = [p for p in _paths(request) if p and p[-1] in ("type", "role")]
        if typed:
            return _replace(request, draw(st.sampled_from(typed)), odd)
    return _replace(request, path, draw(odd_values))


def _at(value: object, path: tuple) -> object:
    for part in path:
        value = value[part]  # type: ignore[index]
    return value


@st.composite
def garbled(draw: st.DrawFn, body: bytes) -> bytes:
    """The body's bytes damaged: cut short, invalid UTF-8 let in, a key given twice, a BOM, trailing bytes."""
    at = draw(st.integers(0, len(body)))
    kind = draw(st.sampled_from(["truncate", "bytes", "duplicate", "bom", "trailing", "whitespace"]))
    if kind == "truncate":
        return body[:at]
    if kind == "bytes":
        bad = draw(
            st.sampled_from(
                [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\xc0\xaf"]
            )
        )
        return body[:at] + bad + body[at:]
    if kind == "duplicate" and body.startswith(b"{") and body.endswith(b"}") and len(body) > 2:
        key = draw(st.sampled_from(["model", "max_tokens", "messages", "stream", "tools"]))
        extra = encode({key: draw(odd_values)})[1:-1]
        return b"{" + extra + b"," + body[1:] if draw(st.booleans()) else body[:-1] + b"," + extra + b"}"
    if kind == "bom":
        return b"\xef\xbb\xbf" + body
    if kind == "trailing":
        return body + draw(st.sampled_from([b"x", b"}", b",", b"\x00", b" {}"]))
    return b" \t\r\n" + body + b"\n"


nonsense_bodies = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"null", b"[]", b"{}", b"0", b'"x"', b"true", b"{", b"}", b"NaN", b"\xff\xfe"]),
    st.sampled_from([200, 201, 202, 10_000]).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([200, 10_000]).map(lambda n: b'{"model":' + b"[" * n + b"]" * n + b"}"),
    finite_json.map(encode),
    st.sampled_from([2**16, 2**20]).map(lambda n: encode({"model": "x" * n})),
)


EDGE_MESSAGES = [
    {"role": role, "content": content}
    for role in ("user", "assistant", "system")
    for content in (
        [],
        "",
        [{"type": "text", "text": ""}],
        [{"type": "tool_result", "tool_use_id": "t"}],
        [{"type": "redacted_thinking", "data": ""}],
        [{"type": "thinking", "thinking": "", "signature": ""}],
        [{"type": "tool_use", "id": "t", "name": "get", "input": {}}],
        [{"type": "image", "source": {}}],
    )
]
EDGE_SYSTEMS = [
    "",
    [],
    [{"type": "text", "text": ""}],
    [{"type": "text", "text": "x-anthropic-billing-header: cch=1;"}],
]


@st.composite
def edge_requests(draw: st.DrawFn, model: str) -> dict:
    """Conversations with next to nothing in them, where a prompt may come out empty."""
    request = {
        "model": model,
        "max_tokens": draw(st.sampled_from([0, 1, 4])),
        "messages": draw(st.lists(st.sampled_from(EDGE_MESSAGES), min_size=1, max_size=3)),
    }
    if draw(st.booleans()):
        request["system"] = draw(st.sampled_from(EDGE_SYSTEMS))
    if draw(st.booleans()):
        request["tools"] = [{"name": "get", "input_schema": {"type": "object"}}]
        request["tool_choice"] = draw(st.sampled_from([{"type": "none"}, {"type": "any"}, {"type": "auto"}]))
    return request


def message_bodies(model: str, *, mutations: bool = True) -> st.SearchStrategy[tuple[bytes, bool]]:
    """(body, whether the request is valid) for the Messages routes."""
    valid = valid_requests(model)
    as_sent = st.builds(lambda r, a: encode(r, ascii_only=a), valid, st.booleans())
    cases = [st.tuples(as_sent, st.just(True))] * 2
    if mutations:
        changed = valid.flatmap(mutated).flatmap(
            lambda r: st.builds(lambda a: encode(r, ascii_only=a), st.booleans())
        )
        cases += [
            st.tuples(changed, st.just(False)),
            st.tuples(as_sent.flatmap(garbled), st.just(False)),
            st.tuples(nonsense_bodies, st.just(False)),
            st.tuples(edge_requests(model).map(encode), st.just(False)),
        ]
    return st.one_of(*cases)


# Headers: Host, auth, content type and the rest, each drawn on its own.
JSON_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/json;charset=UTF-8",
]
NOT_JSON_TYPES = [
    None,
    "",
    "text/plain",
    "text/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/xml",
    "*/*",
]
FOREIGN_HOSTS = ["example.com", "attacker.test:8080", "127.0.0.1.nip.io", "localhost.attacker.test"]


def loopback_hosts(port: int) -> list[str]:
    return [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"]


@dataclass(frozen=True)
class Auth:
    headers: tuple[tuple[str, bytes], ...]
    ok: bool


def auths(token: str) -> st.SearchStrategy[Auth]:
    """The token as clients send it (four times in five), or not as the server takes it."""
    good = token.encode()
    accepted = [
        Auth((("x-api-key", good),), True),
        Auth((("authorization", b"Bearer " + good),), True),
        Auth((("x-api-key", good), ("authorization", b"Bearer " + good)), True),
        Auth((("authorization", b"bearer " + good),), True),
    ]
    return st.sampled_from(
        [
            *accepted * 6,
            Auth((), False),
            Auth((("x-api-key", b"wrong"),), False),
            Auth((("authorization", b"Bearer"),), False),
            Auth((("authorization", b"Basic " + good),), False),
            Auth((("x-api-key", "é".encode() + good),), False),
            Auth((("authorization", b"Bearer \xff\xfe"),), False),
        ]
    )


header_names = st.from_regex(r"x-[a-z0-9-]{1,20}", fullmatch=True)
# What HTTP lets a header value hold (visible ASCII, spaces within, any byte from 0x80), in sizes on both
# sides of the server's limit on a request head.
header_values = st.one_of(
    st.binary(max_size=40).map(lambda b: bytes(c for c in b if c > 0x20 and c != 0x7F)),
    st.sampled_from([b"", b"a b", "é€".encode(), "é".encode("latin-1"), b"\xff" * 8]),
    st.sampled_from([1024, 8 * 1024, 20 * 1024, 80 * 1024]).map(lambda n: b"a" * n),
)
extra_headers = st.lists(
    st.one_of(
        st.tuples(header_names, header_values),
        st.tuples(
            st.sampled_from(["anthropic-version", "anthropic-beta", "user-agent", "accept"]), header_values
        ),
        st.just(("anthropic-version", b"2023-06-01")),
        st.just(("anthropic-beta", b"a-2025,b-2026")),
    ),
    max_size=4,
).map(lambda hs: tuple(hs) + tuple(hs[:1]))  # the first one twice: duplicated headers


def wire_headers(
    host: str, auth: Auth, content_type: str | None, extra: tuple
) -> tuple[tuple[str, bytes], ...]:
    headers = [("host", host.encode()), *auth.headers]
    if content_type is not None:
        headers.append(("content-type", content_type.encode()))
    return (*headers, *extra)


def expected_statuses(auth: Auth, valid: bool) -> frozenset[int]:
    """A valid request is answered, or refused only as `TOO_LONG_OR_OK` allows (count_tokens renders the
    prompt as a generation would, grammar and all, so it too may find a schema that cannot be enforced)."""
    if not auth.ok:
        return frozenset({401})
    if not valid:
        return frozenset()
    return TOO_LONG_OR_OK


TOO_LONG_OR_OK = frozenset({200, 400})  # the 400 only for a prompt too long or a schema not enforceable


@st.composite
def messages_cases(draw: st.DrawFn, target: Target, *, count_tokens: bool = False) -> Case:
    """POST /v1/messages (streamed or not) or /v1/messages/count_tokens with a JSON content type."""
    body, valid = draw(message_bodies(target.model))
    auth = draw(auths(target.token))
    headers = wire_headers(
        draw(st.sampled_from(loopback_hosts(target.port))),
        auth,
        draw(st.sampled_from(JSON_TYPES)),
        draw(extra_headers),
    )
    route = "POST /v1/messages/count_tokens" if count_tokens else "POST /v1/messages"
    if not count_tokens and b'"stream": true' in body:
        route += " (stream)"
    path = route.split()[1] + draw(st.sampled_from(["", "?beta=true", "?beta=true&beta=false", "?%ff=%ff"]))
    return Case(route, "POST", path, headers, body, expected_statuses(auth, valid))


@st.composite
def contract_cases(draw: st.DrawFn, target: Target) -> Case:
    """The request hooks' contract: a JSON route answers another content type with a 400 that names
    `content-type`, and a Host that is not loopback with a 403."""
    path = draw(st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]))
    body, _ = draw(message_bodies(target.model, mutations=False))
    good = Auth((("x-api-key", target.token.encode()),), True)
    if draw(st.booleans()):
        headers = wire_headers(
            draw(st.sampled_from(FOREIGN_HOSTS)), good, draw(st.sampled_from(JSON_TYPES)), ()
        )
        return Case(f"POST {path} (foreign Host)", "POST", path, headers, body, frozenset({403}))
    content_type = draw(st.sampled_from(NOT_JSON_TYPES))
    headers = wire_headers(draw(st.sampled_from(loopback_hosts(target.port))), good, content_type, ())
    return Case(
        f"POST {path} (not JSON)", "POST", path, headers, body, frozenset({400}), names="content-type"
    )


query_values = st.one_of(
    st.sampled_from(
        ["1", "20", "1000", "0", "1001", "-1", "+5", " 5", "5 ", "1e3", "0x10", "²", "\uff15", "", "%ff"]
    ),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from([5000]).map(lambda n: "9" * n),
    st.text(max_size=12),
)


@st.composite
def models_cases(draw: st.DrawFn, target: Target) -> Case:
    """GET /v1/models with odd paging parameters, or GET /v1/models/{id} with odd ids."""
    auth = draw(auths(target.token))
    headers = wire_headers(f"127.0.0.1:{target.port}", auth, None, draw(extra_headers))
    if draw(st.booleans()):
        params = draw(
            st.lists(
                st.tuples(st.sampled_from(["limit", "after_id", "before_id", "x"]), query_values), max_size=3
            )
        )
        query = "&".join(f"{httpx.QueryParams({k: v})}" if v != "%ff" else f"{k}=%ff" for k, v in params)
        return Case(
            "GET /v1/models", "GET", "/v1/models" + (f"?{query}" if query else ""), headers, None, _ok(auth)
        )
    model_id = draw(st.one_of(st.sampled_from([target.model, "claude-opus", "nope"]), _path_segments))
    return Case("GET /v1/models/{id}", "GET", f"/v1/models/{model_id}", headers, None, _ok(auth, 200, 404))


_path_segments = st.one_of(
    st.sampled_from(["%2e%2e", "..", "%00", "%ff", "a%2Fb", "a/b/c", "claude-x", "%F0%9F%92%A9", " ", "~"]),
    st.text(
        st.characters(codec="utf-8", exclude_characters="/?#%", exclude_categories=["Cc"]),
        min_size=1,
        max_size=20,
    ).map(lambda s: httpx.URL("/" + s).raw_path.decode()[1:]),
    st.just("n" * 10_000),
)


@st.composite
def admin_cases(draw: st.DrawFn, target: Target) -> Case:
    """GET /v1/admin/ps, and POST load or unload of names that resolve or not (unloading the idle served
    model is harmless: the next request loads it again)."""
    auth = draw(auths(target.token))
    headers = wire_headers(f"127.0.0.1:{target.port}", auth, None, draw(extra_headers))
    if draw(st.integers(0, 3)) == 0:
        method = draw(st.sampled_from(["GET", "GET", "POST", "DELETE"]))
        return Case("GET /v1/admin/ps", method, "/v1/admin/ps", headers, None, _ok(auth, 200, 405))
    name = draw(st.one_of(st.sampled_from(["nope", target.model, "claude-haiku"]), _path_segments))
    action = draw(st.sampled_from(["load", "unload"]))
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]))
    path = f"/v1/admin/models/{name}/{action}{draw(st.sampled_from(['', '/', '?x=1']))}"
    return Case(
        f"POST /v1/admin/models/{{name}}/{action}",
        method,
        path,
        headers,
        None,
        _ok(auth, 200, 404, 405, 409, 529),
        statuses=DOCUMENTED | ADMIN_EXTRA,
    )


def _ok(auth: Auth, *statuses: int) -> frozenset[int]:
    return frozenset({401}) if not auth.ok else frozenset(statuses)


def huge_prompt_case(target: Target) -> Case:
    """A valid request whose prompt is 2 MiB of text, far past any context: it is tokenized whole (seconds)
    before it is refused, so the long fuzz sends it now and then rather than as hypothesis pleases."""
    request = {
        "model": target.model,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "x " * 2**20}],
    }
    auth = Auth((("x-api-key", target.token.encode()),), True)
    headers = wire_headers(f"127.0.0.1:{target.port}", auth, JSON_TYPES[0], ())
    return Case(
        "POST /v1/messages (2 MiB prompt)", "POST", "/v1/messages", headers, encode(request), TOO_LONG_OR_OK
    )


def all_cases(target: Target) -> st.SearchStrategy[Case]:
    return st.one_of(
        messages_cases(target),
        messages_cases(target),
        messages_cases(target, count_tokens=True),
        models_cases(target),
        admin_cases(target),
        contract_cases(target),
    )


def send(client: httpx.Client, case: Case) -> Outcome:
    """The request as bytes on the wire; the response read whole (streams to their end)."""
    started = time.monotonic()
    outcome = Outcome()
    try:
        with client.stream(case.method, case.path, content=case.body, headers=list(case.headers)) as response:
            outcome.status = response.status_code
            outcome.headers = {k.lower(): v for k, v in response.headers.items()}
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if sum(map(len, chunks)) > READ_LIMIT:
                    break
                if time.monotonic() - started > CASE_TIMEOUT:
                    outcome.transport_error = f"no end of response after {CASE_TIMEOUT:.0f}s"
                    break
            outcome.body = b"".join(chunks)
    except httpx.HTTPError as error:
        outcome.transport_error = f"{type(error).__name__}: {error}"
    outcome.seconds = time.monotonic() - started
    return outcome


def problems(case: Case, outcome: Outcome) -> list[str]:
    """What is wrong with the response to `case`; empty when nothing is."""
    if outcome.transport_error:
        return [outcome.transport_error]
    status = outcome.status
    found = []
    if status == 431 and sum(len(k) + len(v) for k, v in case.headers) <= MAX_HEADER_BYTES:
        found.append(f"431 for a request head within the {MAX_HEADER_BYTES}-byte limit")
    elif status == 431:
        return found + _error_problems(case, outcome)  # refused before any other check could run
    if status not in case.statuses:
        found.append(f"status {status} is not one this route may answer")
    if case.expect and status not in case.expect:
        found.append(f"status {status}, expected one of {sorted(case.expect)}")
    if not outcome.headers.get("request-id", "").startswith("req_"):
        found.append("no request-id header")
    if status == 200:
        return found + _answer_problems(case, outcome)
    return found + _error_problems(case, outcome)


# Routes whose answers another module checks (path prefix → its error check, its answer check): OpenAI's
# face has an envelope and a stream of its own (tests/fuzz_openai.py).
ROUTE_CHECKS: dict[
    str, tuple[Callable[[Case, Outcome], list[str]], Callable[[Case, Outcome], list[str]]]
] = {}


def _checks_for(case: Case) -> tuple | None:
    return next((checks for prefix, checks in ROUTE_CHECKS.items() if case.path.startswith(prefix)), None)


def _error_problems(case: Case, outcome: Outcome) -> list[str]:
    if (checks := _checks_for(case)) is not None:
        return checks[0](case, outcome)
    try:
        body = json.loads(outcome.body)
        error = body["error"]
        message = error["message"]
    except (ValueError, KeyError, TypeError):
        return [f"not an error envelope: {outcome.body[:200]!r}"]
    found = []
    if body.get("type") != "error" or error.get("type") != error_type(outcome.status):
        found.append(f"wrong error types for {outcome.status}: {body.get('type')}/{error.get('type')}")
    if not isinstance(message, str) or not message:
        found.append("empty error message")
    if body.get("request_id") != outcome.headers.get("request-id"):
        found.append("request_id differs from the request-id header")
    if case.names and case.names not in str(message):
        found.append(f"error message does not name {case.names}: {message!r}")
    if (
        outcome.status == 400
        and case.expect == TOO_LONG_OR_OK
        and not str(message).startswith("prompt is too long")
        # A schema no grammar can enforce, where the request demands it be kept (a forced call, a strict
        # tool, an output schema): refused before generation, naming the tool and the keyword.
        and "cannot be enforced" not in str(message)
    ):
        found.append(f"a valid request was refused: {message}")
    return found


def _answer_problems(case: Case, outcome: Outcome) -> list[str]:
    if (checks := _checks_for(case)) is not None:
        return checks[1](case, outcome)
    kind = outcome.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        return stream_problems(outcome.body)
    try:
        body = json.loads(outcome.body)
    except ValueError:
        return [f"a 200 that is not JSON: {outcome.body[:200]!r}"]
    if case.route.startswith("POST /v1/messages/count_tokens"):
        ok = isinstance(body.get("input_tokens"), int)
    elif case.route.startswith("POST /v1/messages"):
        ok = body.get("type") == "message" and isinstance(body.get("content"), list)
    else:
        ok = isinstance(body, dict)
    return [] if ok else [f"unexpected 200 body: {outcome.body[:200]!r}"]


def stream_problems(data: bytes) -> list[str]:
    """An SSE body must be whole frames (`event:`, `data:` of that type), start with message_start and
    end with exactly one message_stop or error event."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return ["stream is not UTF-8"]
    names = []
    for frame in filter(None, text.split("\n\n")):
        lines = frame.split("\n")
        if len(lines) != 2 or not lines[0].startswith("event: ") or not lines[1].startswith("data: "):
            return [f"malformed SSE frame: {frame[:200]!r}"]
        name = lines[0].removeprefix("event: ")
        try:
            payload = json.loads(lines[1].removeprefix("data: "))
        except ValueError:
            return [f"SSE data is not JSON: {frame[:200]!r}"]
        if payload.get("type") != name:
            return [f"SSE event {name} carries a {payload.get('type')}"]
        names.append(name)
    ends = [n for n in names if n in ("message_stop", "error")]
    if not names or names[0] != "message_start":
        return [f"stream does not begin with message_start: {names[:3]}"]
    if len(ends) != 1 or names[-1] != ends[0]:
        return [f"stream does not end with one message_stop or error: {names[-3:]}"]
    return []
