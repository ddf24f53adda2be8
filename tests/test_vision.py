"""A vision model on the real server: a tiny Qwen2-VL-shaped model (mlx-vlm's classes, trained to name the
colour it is shown, see `tests.vision_model`) answers "red" or "blue" from the pixels alone, for an image in
a user turn or in a tool result, streamed or not, through either SDK; a resent image is read from the
prefix cache and a different one is not; `count_tokens` counts the image's tokens as the processor makes
them; bad images are 400s and the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.conftest import RunningServer, run_server, server_env
from tests.images import encoded
from tests.model_zoo import config_toml
from tests.test_faults import SHIM
from tests.vision_model import IMAGE_TOKENS, QUESTION, image_block, in_tool_result, in_user_turn

CACHED = {"type": "ephemeral"}
GREEDY = {"temperature": 0}  # Anthropic's default is 1: sampled, a trained answer may still slip


@pytest.fixture(scope="module")
def server(vision: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("vision")
    with run_server(home, "--model", str(vision), "--model-name", "vision") as running:
        yield running


def answer(server: RunningServer, messages: list[dict], *, stream: bool) -> str:
    client = server.client()
    if stream:
        with client.messages.stream(
            model="vision", max_tokens=8, extra_body=GREEDY, messages=messages
        ) as events:
            return events.get_final_text()
    return (
        client.messages.create(model="vision", max_tokens=8, extra_body=GREEDY, messages=messages)
        .content[0]
        .text
    )


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("shape", [in_user_turn, in_tool_result], ids=["user-turn", "tool-result"])
def test_the_model_names_the_colour_it_is_shown(server: RunningServer, shape, stream: bool) -> None:
    # The prompts differ in their pixels alone: only an image that reached the model tells them apart.
    assert [answer(server, shape(colour), stream=stream) for colour in ("red", "blue", "red")] == [
        "red",
        "blue",
        "red",
    ]


def second_turn(colour: str, size: tuple[int, int]) -> list[dict]:
    """Claude Code's next turn: the whole conversation again, the image in it, the newest block cached."""
    question = [image_block(colour, size), {"type": "text", "text": QUESTION}]
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": colour},
        {"role": "user", "content": [{"type": "text", "text": QUESTION, "cache_control": CACHED}]},
    ]


def test_a_resent_image_is_read_from_the_cache_and_a_new_one_is_not(server: RunningServer) -> None:
    # Images of a size no other test sends (the processor resizes them to the same 56x56), so that nothing
    # of these conversations is cached before.
    client, size = server.client(), (62, 61)
    first = [image_block("red", size), {"type": "text", "text": QUESTION}]
    client.messages.create(
        model="vision", max_tokens=8, extra_body=GREEDY, messages=[{"role": "user", "content": first}]
    )
    again = client.messages.create(
        model="vision", max_tokens=8, extra_body=GREEDY, messages=second_turn("red", size)
    )
    # The same conversation with another picture in the same place: the tokens around the image are the
    # same, but the cache is keyed on its content, so nothing from the image on is reused, and the model
    # sees the new one.
    other = client.messages.create(
        model="vision", max_tokens=8, extra_body=GREEDY, messages=second_turn("blue", size)
    )
    assert (again.content[0].text, other.content[0].text) == ("red", "blue")
    # The resent image was read from the cache: the read runs past where the new image's stopped, by at
    # least the image's own tokens.
    assert again.usage.cache_read_input_tokens >= other.usage.cache_read_input_tokens + IMAGE_TOKENS
    resent = client.messages.create(
        model="vision", max_tokens=8, extra_body=GREEDY, messages=second_turn("blue", size)
    )
    usage = resent.usage
    prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    assert usage.cache_read_input_tokens == prompt - 1  # all but the last token, which is fed to decode
    assert resent.content[0].text == "blue"


def test_count_tokens_counts_the_image_as_the_processor_expands_it(server: RunningServer) -> None:
    client = server.client()

    def count(size: tuple[int, int]) -> int:
        messages = [
            {"role": "user", "content": [image_block("red", size), {"type": "text", "text": QUESTION}]}
        ]
        return client.messages.count_tokens(model="vision", messages=messages).input_tokens

    # 112x112 pixels are 16 merged patches (the processor's patch 14, merge 2); 64x64 become 56x56: 4.
    assert count((112, 112)) - count((64, 64)) == 16 - IMAGE_TOKENS
    created = client.messages.create(
        model="vision", max_tokens=8, extra_body=GREEDY, messages=in_user_turn("blue")
    )
    assert created.usage.input_tokens + created.usage.cache_read_input_tokens == count((64, 64))


def test_the_openai_face_sees_data_urls(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    colours = []
    for colour in ("blue", "red"):
        part = {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{encoded('PNG', (64, 64), colour)}"},
        }
        completion = client.chat.completions.create(
            model="vision",
            max_tokens=8,
            temperature=0,
            messages=[{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}],
        )
        colours.append(completion.choices[0].message.content)
    assert colours == ["blue", "red"]


def test_concurrent_image_requests_each_see_their_own(server: RunningServer) -> None:
    # Images of three sizes: their tokens and positions differ (4, 8 and 16 tokens over 2, 4 and 4
    # positions), so the rows decoding together are shifted by different amounts.
    asked = [(colour, size) for size in ((64, 64), (112, 56), (112, 112)) for colour in ("red", "blue")]

    def ask(colour: str, size: tuple[int, int]) -> str:
        content = [image_block(colour, size), {"type": "text", "text": QUESTION}]
        return answer(server, [{"role": "user", "content": content}], stream=True)

    with concurrent.futures.ThreadPoolExecutor(len(asked)) as pool:
        said = list(pool.map(lambda pair: ask(*pair), asked))
    assert said == [colour for colour, _ in asked]


def test_bad_images_and_the_image_token_in_text_are_400s(server: RunningServer) -> None:
    client = server.client()
    wrong = {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": encoded("PNG")}}
    with pytest.raises(anthropic.BadRequestError) as bad_type:
        client.messages.create(
            model="vision", max_tokens=8, extra_body=GREEDY, messages=[{"role": "user", "content": [wrong]}]
        )
    assert bad_type.value.body["error"]["message"] == (
        "messages.0.content.0.source.data: the data is a PNG image, not image/gif"
    )
    forged = [
        {"role": "user", "content": [image_block("red"), {"type": "text", "text": "<|image_pad|> here"}]}
    ]
    with pytest.raises(anthropic.BadRequestError) as token:
        client.messages.create(model="vision", max_tokens=8, extra_body=GREEDY, messages=forged)
    assert token.value.body["error"]["message"] == (
        "the request's text holds the model's image token '<|image_pad|>' (1 times outside images); "
        "remove it from the text"
    )
    assert answer(server, in_user_turn("blue"), stream=False) == "blue"


def test_models_say_the_vision_model_takes_images(server: RunningServer) -> None:
    with server.http() as http:
        assert http.get("/v1/models/vision").json()["images"] is True


def test_refusing_images_for_a_text_model_names_the_models_that_take_them(
    vision: Path, tiny_model: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    models = [{"name": "tiny", "source": str(tiny_model)}, {"name": "vision", "source": str(vision)}]
    config.write_text(config_toml({"text_model_images": "refuse"}, models))
    with run_server(tmp_path, "--config", str(config), env=server_env(tmp_path)) as running:
        with pytest.raises(anthropic.BadRequestError) as refused:
            running.client().messages.create(
                model="tiny", max_tokens=3, extra_body=GREEDY, messages=in_user_turn("red")
            )
        assert answer(running, in_user_turn("red"), stream=False) == "red"
    assert refused.value.body["error"]["message"] == (
        'model tiny cannot see images, and text_model_images is "refuse": the request holds 1 images; '
        "models served here that take images: vision"
    )


def test_a_fault_in_an_image_prefill_fails_that_request_alone(vision: Path, tmp_path: Path) -> None:
    """No input makes the prefill raise, so the fault is injected in-process (`tests/fault_shim.py`)."""
    args = ("--model", str(vision), "--model-name", "vision")
    with run_server(tmp_path, *args, launcher=(sys.executable, str(SHIM))) as running:
        client = running.client()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            bystander = pool.submit(answer, running, in_tool_result("blue"), stream=True)
            with pytest.raises(anthropic.InternalServerError) as failed:
                client.messages.create(
                    model="vision", max_tokens=8, stop_sequences=["FAULT:image"], messages=in_user_turn("red")
                )
            assert bystander.result(timeout=120) == "blue"
        assert answer(running, in_user_turn("red"), stream=False) == "red"
        (model,) = running.http().get("/health").json()["models"]
    assert "failed inside the engine" in failed.value.body["error"]["message"]
    assert model["active_sequences"] == 0
    assert "InjectedFault: image prefill" in running.log()


def test_other_requests_go_on_while_an_image_is_encoded(vision: Path, tmp_path: Path) -> None:
    """The vision tower's run is made to end only once the engine has ended another request meanwhile
    (`slow-image` in `tests/fault_shim.py`); short text requests keep coming until the image request is
    answered. An engine that waited on the encode would end none of them, and the image request would
    fail."""
    args = ("--model", str(vision), "--model-name", "vision")
    with run_server(tmp_path, *args, launcher=(sys.executable, str(SHIM))) as running:
        client = running.client()
        hello = [{"role": "user", "content": "Hi"}]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(
                client.messages.create,
                model="vision",
                max_tokens=8,
                stop_sequences=["FAULT:slow-image"],
                extra_body=GREEDY,
                messages=in_user_turn("blue"),
            )
            answered = 0
            while not slow.done():
                client.messages.create(model="vision", max_tokens=3, extra_body=GREEDY, messages=hello)
                answered += 1
            assert slow.result().content[0].text == "blue"
    assert answered >= 1


def test_vision_false_leaves_the_tower_off(vision: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(config_toml({}, [{"name": "vision", "source": str(vision), "vision": False}]))
    body = {"model": "vision", "max_tokens": 3, "messages": in_user_turn("red")}
    with (
        run_server(tmp_path, "--config", str(config), env=server_env(tmp_path)) as running,
        running.http() as http,
    ):
        response = http.post("/v1/messages", json=body)
        listed = http.get("/v1/models/vision").json()
    assert response.status_code == 200, response.text
    assert response.headers["mlxd-warning"] == "1 images omitted: model vision cannot see images"
    assert listed["images"] is False


@pytest.mark.parametrize("family", ["qwen3_vl", "gemma3", "mistral3"])
def test_other_families_serve_images(tmp_path: Path, family: str) -> None:
    """Qwen3-VL (deepstack features), Gemma 3 (its processor expands `<start_of_image>`; a sliding-window
    layer) and Mistral Small 3 (mlx-vlm's own Pixtral processor, rows of image tokens) through the server:
    random weights, so only their counts and answers' arrival and repetition are checked (their prefill is
    checked against mlx-vlm's in test_vision_prefill.py)."""
    from daemon.engine import demo_vision

    builders = {
        "qwen3_vl": lambda path: demo_vision.build_vision_model(path, demo_vision.QWEN3_VL),
        "gemma3": demo_vision.build_gemma3_model,
        "mistral3": demo_vision.build_mistral3_model,
    }
    model = builders[family](tmp_path / family)
    question = [
        {"role": "user", "content": [image_block("red", (128, 96)), {"type": "text", "text": QUESTION}]}
    ]
    with run_server(tmp_path / "home", "--model", str(model), "--model-name", "m") as running:
        client = running.client()
        counted = client.messages.count_tokens(model="m", messages=question).input_tokens
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            asked = [question, in_tool_result("blue"), [{"role": "user", "content": "Hi"}]]
            answers = list(
                pool.map(
                    lambda m: client.messages.create(model="m", max_tokens=4, extra_body=GREEDY, messages=m),
                    asked,
                )
            )
        again = client.messages.create(model="m", max_tokens=4, extra_body=GREEDY, messages=question)
        with running.http() as http:
            listed = http.get("/v1/models/m").json()
    assert answers[0].usage.input_tokens == counted and all(a.usage.output_tokens >= 1 for a in answers)
    assert again.content == answers[0].content  # alone and read from the cache, the same greedy answer
    assert listed["images"] is True and running.log().count("images=1") >= 2
