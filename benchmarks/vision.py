"""Images, measured: time to first token of a request holding one 1024x768 screenshot, cold and on the
second turn (the conversation resent with the same screenshot, as Claude Code resends it, its prefix now
cached), on one mlxd; and the share of the cold first token that the vision tower took (mlxd logs it per
request). `python -m benchmarks.vision`, or `mlxd bench --vision`; `--smoke` checks it runs. Writes
vision.json and vision.md.

The model is a small random one of Qwen2-VL's shape whose processor keeps Qwen2-VL's own resolution, so
the screenshot becomes as many tokens as a real Qwen2-VL makes of it (999); its weights are random, so
only the times mean anything. Each repeat draws a screenshot of its own (new to the cache).
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks import serverlog, servers
from benchmarks.client import BenchError, Endpoint, StreamResult
from benchmarks.machine import label
from benchmarks.plan import PLANS
from benchmarks.prompts import Conversation
from benchmarks.report import fmt, run_meta, write_run
from daemon.config.settings import data_dir
from daemon.engine.demo_vision import QWEN2_VL_MAX_PIXELS, VisionShape, build_vision_model

SCREEN = (1024, 768)
QUESTION = "The dialog in this screenshot shows an error. What does it say, and how do I fix it?"
FOLLOW_UP = "And where in the settings is that option?"
# Claude Code's turn sizes, roughly: a system prompt and tools of this many words before the screenshot.
SYSTEM_WORDS = 1500
SHAPE = VisionShape(
    text={
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "intermediate_size": 384,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},  # halves of 32-wide heads
    },
    vision={"depth": 4, "embed_dim": 128, "hidden_size": 128, "num_heads": 4, "mlp_ratio": 4},
    max_pixels=QWEN2_VL_MAX_PIXELS,
)
SMOKE = VisionShape(max_pixels=224 * 224)


def parser(prog: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    cli.add_argument("--smoke", action="store_true", help="the tests' smallest shape and resolution")
    cli.add_argument("--repeats", type=int, default=3, help="screenshots [3]")
    cli.add_argument("--out", type=Path, help="results folder [benchmarks/results/vision-<timestamp>]")
    cli.add_argument("--models-dir", type=Path, help="where generated models are cached")
    return cli


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.vision") -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(prog).parse_args(argv)
    shape, name = (SMOKE, "vision-smoke-v1") if args.smoke else (SHAPE, "vision-bench-v1")
    repeats = 1 if args.smoke else args.repeats
    out = args.out or Path("benchmarks/results") / datetime.now().strftime("vision-%Y%m%d-%H%M%S")
    model = (args.models_dir or data_dir() / "bench-models") / name
    if not (model / "model.safetensors").exists():
        build_vision_model(model, shape)
    started = datetime.now(UTC)
    try:
        rows = measure(model, repeats, out)
    except BenchError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    results = {
        "meta": run_meta(prog, argv, started, model=name),
        "rows": rows,
        "summary": summary(rows),
    }
    written = write_run(out, "vision", results, markdown(results))
    print((out / "vision.md").read_text())
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def measure(model: Path, repeats: int, out: Path) -> list[dict[str, Any]]:
    """Per screenshot: the cold turn and the next one, each timed at the client and read in mlxd's log."""
    rows = []
    with (
        servers.mlxd(model, "vision", PLANS["full"], out / "mlxd") as server,
        server.endpoint.client() as client,
    ):
        _warm(server.endpoint, client)
        for seed in range(repeats):
            image = screenshot(seed)
            cold = _turn(server.endpoint, client, first_turn(image, seed))
            cached = _turn(server.endpoint, client, second_turn(image, seed))
            logged = serverlog.read(server.log_path, [cold.request_id or "", cached.request_id or ""])
            rows.append(
                {
                    "prompt_tokens": cold.prompt_tokens,
                    "cold_ttft_s": cold.ttft,
                    "cold_encode_s": logged[cold.request_id or ""].image_seconds,
                    "cached_ttft_s": cached.ttft,
                    "cached_tokens": cached.cached_tokens,
                    "cached_encode_s": logged[cached.request_id or ""].image_seconds,
                }
            )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    cold = statistics.median(row["cold_ttft_s"] for row in rows)
    cached = statistics.median(row["cached_ttft_s"] for row in rows)
    encode = statistics.median(row["cold_encode_s"] for row in rows)
    return {
        "cold_ttft_s": cold,
        "cached_ttft_s": cached,
        "cached_vs_cold": cached / cold,
        "encode_share": encode / cold,
    }


def screenshot(seed: int) -> str:
    """A PNG of a desktop-like screen (windows, a dialog, lines of text), base64, drawn from `seed`."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    size = SCREEN
    image = Image.new("RGB", size, (236, 239, 244))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(0, size[0] - 300), rng.randrange(0, size[1] - 200)
        w, h = rng.randrange(200, 500), rng.randrange(120, 400)
        draw.rectangle((x, y, x + w, y + h), fill=(255, 255, 255), outline=(160, 160, 170))
        draw.rectangle((x, y, x + w, y + 24), fill=tuple(rng.randrange(60, 200) for _ in range(3)))
        for line in range(y + 36, y + h - 12, 16):
            words = " ".join(rng.choice(("error", "file", "build", "failed", "line", "ok")) for _ in range(8))
            draw.text((x + 10, line), words, fill=(30, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def first_turn(image: str, session: int) -> Conversation:
    """The screenshot and a question, after a system prompt of the session's own (cold: nothing cached)."""
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}}
    lines = ["You are an interactive command line tool that helps users with software."] * 150
    system = " ".join([f"Session {session}.", *lines])
    assert len(system.split()) >= SYSTEM_WORDS
    return Conversation([{"role": "user", "content": [block, {"type": "text", "text": QUESTION}]}], [system])


def second_turn(image: str, session: int) -> Conversation:
    first = first_turn(image, session)
    messages = [
        *first.messages,
        {"role": "assistant", "content": "It says the build failed; turn on the option in the settings."},
        {
            "role": "user",
            "content": [{"type": "text", "text": FOLLOW_UP, "cache_control": {"type": "ephemeral"}}],
        },
    ]
    return Conversation(messages, first.system)


def _warm(endpoint: Endpoint, client: httpx.Client) -> None:
    """Load the model (and run the vision tower once) before anything is timed."""
    _turn(endpoint, client, first_turn(screenshot(-1), -1))


def _turn(endpoint: Endpoint, client: httpx.Client, conversation: Conversation) -> StreamResult:
    return endpoint.stream(client, conversation, max_tokens=1)


def markdown(results: dict[str, Any]) -> str:
    meta, rows, total = results["meta"], results["rows"], results["summary"]
    lines = [
        f"# One {SCREEN[0]}x{SCREEN[1]} screenshot: {meta['model']} on {label(meta['machine'])}",
        "",
        "| prompt tokens | cold TTFT | vision tower | 2nd turn TTFT | cached tokens | 2nd / cold |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['prompt_tokens']} | {fmt(row['cold_ttft_s'], 's')} | {fmt(row['cold_encode_s'], 's')} "
            f"| {fmt(row['cached_ttft_s'], 's')} | {row['cached_tokens']} "
            f"| {row['cached_ttft_s'] / row['cold_ttft_s']:.3f}x |"
        )
    lines += [
        "",
        f"Medians: cold {fmt(total['cold_ttft_s'], 's')}, second turn {fmt(total['cached_ttft_s'], 's')} "
        f"({total['cached_vs_cold']:.3f}x); the vision tower took {total['encode_share']:.0%} of the cold "
        "first token; on the second turn it did not run (the screenshot's KV state was reused).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
