"""One model across two processes: `mlxd serve --ranks 2` starts both through `mlx.launch` (the ring backend
on loopback, CPU), rank 0 serving HTTP and rank 1 following it step by step. Greedy answers through the API,
alone, batched and speculating, are the ones a single process gives; turn 2 reads turn 1 from every rank's
prefix cache; /health and `mlxd ps` show the group; a pipeline-parallel split answers as one process too;
killing rank 1 mid-stream ends the stream with a retryable `overloaded_error` event and the group exits
non-zero; a model mlx-lm cannot split, or a rank started with other settings, is refused at start."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.claude_code_request import claude_code_request
from tests.conftest import COPY, COUNT, HELLO, MLXD, STORY, RunningServer, free_port, run_server, server_env
from tests.test_cache_and_batching import ask, next_turn, prompt_tokens, run_together, trained_request

GROUP = ("--ranks", "2")


@pytest.fixture(scope="module")
def group(trained: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("group")
    with run_server(home, *GROUP, "--model", str(trained), "--model-name", "trained") as server:
        yield server


@pytest.fixture(scope="module")
def solo_answers(trained: Path, tmp_path_factory) -> list:
    home = tmp_path_factory.mktemp("solo")
    with (
        run_server(home, "--model", str(trained), "--model-name", "trained") as server,
        server.http() as http,
    ):
        return [ask(http, request)["content"] for request in REQUESTS]


REQUESTS = [
    trained_request(STORY),
    trained_request(HELLO),
    trained_request(COUNT),
    {**trained_request(STORY), "max_tokens": 7},
    {**trained_request(HELLO), "stop_sequences": ["world"]},
    trained_request(COPY),  # copies its prompt: prompt lookup's proposals are accepted
]


def test_greedy_answers_are_one_process_answers_alone_and_batched(group: RunningServer, solo_answers) -> None:
    with group.http() as http:
        alone = [ask(http, request)["content"] for request in REQUESTS]
    together = [answer["content"] for answer in run_together(group, REQUESTS)]
    assert alone == solo_answers and together == solo_answers
    assert alone[0][0]["text"] == STORY.response and alone[2][0]["text"] == COUNT.response
    # Speculating in lockstep: every rank verified the same proposals, at rank 0's widths.
    accepted = [int(n) for n in re.findall(r"spec=accepted:(\d+)/", group.log())]
    assert alone[5][0]["text"] == COPY.response and sum(accepted) > 0


def test_a_cancelled_stream_leaves_the_group_in_step(group: RunningServer, solo_answers) -> None:
    """A client that goes away mid-stream: its cancellation reaches every rank at the same step, so the
    others go on (and later requests run) exactly as on one process."""
    untrained = {
        "model": "trained",
        "max_tokens": 3000,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": "Write anything at all, at length."}],
    }
    others: list[dict] = []
    with group.http() as http, http.stream("POST", "/v1/messages", json=untrained) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("event: content_block_delta"))
        worker = threading.Thread(target=lambda: others.extend(run_together(group, REQUESTS[:3])))
        worker.start()
        next(line for line in lines if line.startswith("event: content_block_delta"))
    worker.join()
    with group.http() as http:
        after = ask(http, REQUESTS[0])["content"]
        health = http.get("/health").json()
    # Had one rank gone on with the cancelled sequence, the ranks' batches would differ: the group would be
    # lost, and these answers would be errors.
    assert [answer["content"] for answer in others] == solo_answers[:3]
    assert after[0]["text"] == STORY.response
    assert health["models"][0]["active_sequences"] == 0 and len(health["group"]["ranks"]) == 2


def test_turn_two_reads_turn_one_from_the_cache(group: RunningServer) -> None:
    first_request = {
        **claude_code_request("trained", max_tokens=8, scale=0.05),
        "stream": False,
        "temperature": 0,
    }
    with group.http() as http:
        first = ask(http, first_request)
        second = ask(http, next_turn(first_request, first, "Now open README.md."))
    assert second["usage"]["cache_read_input_tokens"] >= prompt_tokens(first["usage"])


def test_health_and_ps_show_the_group(group: RunningServer, tmp_path: Path) -> None:
    with group.http() as http:
        health = http.get("/health").json()["group"]
    assert health["size"] == 2 and health["backend"] == "ring" and health["parallel"] == "tensor"
    assert [r["rank"] for r in health["ranks"]] == [0, 1]
    assert all(r["memory_bytes"] > 0 and r["pid"] > 0 for r in health["ranks"])
    ps = subprocess.run(
        [str(MLXD), "ps", "--url", group.url], capture_output=True, text=True, env=server_env(tmp_path)
    )
    assert ps.returncode == 0, ps.stderr
    assert "group: 2 processes over ring, tensor parallel" in ps.stdout
    assert str(health["ranks"][1]["pid"]) in ps.stdout


def test_unloading_a_group_model_is_refused(group: RunningServer) -> None:
    with group.http() as http:
        response = http.post("/v1/admin/models/trained/unload")
    assert response.status_code == 409
    assert "split across a group of 2 processes" in response.json()["error"]["message"]


def test_killing_rank_one_mid_stream_ends_it_retryably_and_the_group_exits_non_zero(
    tiny_model: Path, tmp_path: Path
) -> None:
    endless = {
        "model": "m",
        "max_tokens": 3000,
        "stream": True,
        "messages": [{"role": "user", "content": "Write at length."}],
    }
    with run_server(tmp_path, *GROUP, "--model", str(tiny_model), "--model-name", "m") as server:
        with server.http() as http:
            follower = http.get("/health").json()["group"]["ranks"][1]["pid"]
            with http.stream("POST", "/v1/messages", json=endless) as stream:
                events = []
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        events.append(line.removeprefix("event: "))
                        if events[-1] == "content_block_delta" and events.count(events[-1]) == 3:
                            os.kill(follower, signal.SIGKILL)
                    if line.startswith("data: ") and '"type":"error"' in line.replace(" ", ""):
                        error = json.loads(line.removeprefix("data: "))["error"]
        assert error["type"] == "overloaded_error" and "group" in error["message"]
        assert events[-1] == "error" and "message_stop" not in events
        assert server.process.wait(timeout=60) != 0
    assert "the group of 2 processes is lost" in server.log()


def test_pipeline_parallel_over_an_uneven_split_answers_as_one_process(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Qwen2 (mlx-lm pipelines it) of 3 layers over 2 ranks: 2 on rank 0, 1 on rank 1, each prompt cache
    budgeted for its own share. Stopping the group (SIGTERM to `mlxd serve`) ends every rank with 0."""
    model = random_model(tiny_model, tmp_path / "qwen2", "qwen2", layers=3)
    prompts = ["Hello there", "Count to five please", "Hello there, again"]
    requests = [
        {"model": "m", "max_tokens": 12, "temperature": 0, "messages": [{"role": "user", "content": text}]}
        for text in prompts
    ]
    answers = {}
    for name, flags in (("solo", ()), ("pipeline", (*GROUP, "--parallel", "pipeline"))):
        with run_server(tmp_path / name, *flags, "--model", str(model), "--model-name", "m") as server:
            with server.http() as http:
                answers[name] = [ask(http, request)["content"] for request in [*requests, *requests]]
                health = http.get("/health").json()
            server.process.terminate()
            assert server.process.wait(timeout=60) == 0
    assert answers["pipeline"] == answers["solo"]
    assert health["group"]["parallel"] == "pipeline"


def test_a_model_mlx_lm_cannot_split_is_refused_at_start(tiny_model: Path, tmp_path: Path) -> None:
    model = random_model(tiny_model, tmp_path / "gemma", "gemma")
    process = subprocess.run(
        [str(MLXD), "serve", *GROUP, "--port", str(free_port()), "--model", str(model)],
        capture_output=True,
        text=True,
        env=server_env(tmp_path),
        timeout=120,
    )
    assert process.returncode == 2
    assert "mlx-lm's gemma model supports neither tensor parallelism (model.shard) nor pipeline" in (
        process.stdout + process.stderr
    )


def test_a_rank_with_other_settings_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    """Both ranks started as `mlx.launch` starts them (MLX_RANK, and a ring hostfile of loopback ports),
    rank 1 with another `max_sequences`."""
    hostfile = tmp_path / "ring.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"], [f"127.0.0.1:{free_port()}"]]))
    command = [str(MLXD), "serve", "--port", str(free_port()), "--model", str(tiny_model)]
    ranks = []
    for rank in (0, 1):
        env = server_env(tmp_path, MLX_RANK=str(rank), MLX_HOSTFILE=str(hostfile))
        if rank == 1:
            env["MLXD_MAX_SEQUENCES"] = "4"
        ranks.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=120)[1] for process in ranks]
    assert [process.returncode for process in ranks] == [2, 2]
    assert "rank 1 on " in outputs[0] and "other settings than rank 0" in outputs[0]


def random_model(like: Path, path: Path, model_type: str, layers: int = 2) -> Path:
    """A tiny random model of one of mlx-lm's types (gemma has neither `shard` nor `pipeline`; qwen2 has
    both), with `like`'s tokenizer."""
    import importlib

    import mlx.core as mx
    from mlx.utils import tree_flatten

    module = importlib.import_module(f"mlx_lm.models.{model_type}")
    path.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (like / name).exists():
            shutil.copy(like / name, path / name)
    vocab = json.loads((like / "config.json").read_text())["vocab_size"]
    config = {
        "model_type": model_type,
        "hidden_size": 64,
        "num_hidden_layers": layers,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "tie_word_embeddings": True,
    }
    (path / "config.json").write_text(json.dumps(config))
    mx.random.seed(0)
    model = module.Model(module.ModelArgs.from_dict(config))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return path
