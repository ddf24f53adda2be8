"""The benchmark suite end to end, at its smoke size: the raw engine, mlxd, mlx_lm.server and an
Anthropic-API peer (a second mlxd) all measured, and every section written. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.cli import main
from tests.conftest import MODELS, run_server

SECTIONS = ("single_stream", "concurrency", "session", "prefill")
PLOTS = ("single_stream", "concurrency", "session", "prefill", "memory")


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and value >= 0


def test_smoke_run_writes_every_section(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "results"
    with run_server(tmp_path / "peer", "--model", str(tiny_model), "--model-name", "peer-model") as peer:
        argv = ["--smoke", "--mlx-lm-server", "--peer", peer.url, "--out", str(out)]
        assert main([*argv, "--models-dir", str(tmp_path / "models")]) == 0
        peer_name = f"peer {peer.url.removeprefix('http://')}"

    for name in ("results.json", "results.md", *(f"{plot}.png" for plot in PLOTS)):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    servers = ("mlxd", "mlx_lm.server", peer_name)

    for section in SECTIONS:
        expected = {"raw", *servers} if section != "session" else set(servers)
        assert set(results[section]) == expected, section
    for target, figures in results["single_stream"].items():
        assert is_number(figures["ttft_s"]["median"]), target
        assert is_number(figures["decode_tps"]["median"]), target
    for target, levels in results["concurrency"].items():
        assert set(levels) == {"1", "2"}, target
        assert all(is_number(level["aggregate_tps"]["median"]) for level in levels.values()), target
    for target, figures in results["session"].items():
        assert [turn["turn"] for turn in figures["turns"]] == [1, 2], target
        assert all(turn["prompt_tokens"]["median"] > 1000 for turn in figures["turns"]), target
        assert is_number(figures["turns"][1]["cached_tokens"]["median"]), target
        assert is_number(figures["turns"][1]["ttft_over_turn1"]["median"]), target
    for target, sizes in results["prefill"].items():
        assert is_number(sizes["128"]["prefill_tps"]["median"]), target

    bound = results["physical_bound"]
    assert bound["bound_tps"] > 0
    assert set(bound["fraction_of_bound"]) == {"raw", *servers}
    assert set(results["memory"]) == {"mlxd", "mlx_lm.server"}
    assert all(memory["idle_bytes"] > 0 and memory["peak_bytes"] > 0 for memory in results["memory"].values())
    assert results["meta"]["machine"]["cores"] > 0
    assert results["meta"]["model"]["weight_bytes"] > 0

    table = (out / "results.md").read_text()
    assert "| Workload | Metric | raw | mlxd |" in table
    assert "mlxd / raw" in table
    assert "Physical bound" in table


def test_constrained_smoke_run_writes_its_report(tmp_path: Path, tiny_model: Path) -> None:
    """`--constrained`: both arms at 1 and 4 streams on one server, the compile and mask times from its log,
    and the table with every cell filled."""
    out = tmp_path / "constrained"
    assert main(["--constrained", "--smoke", "--model", str(tiny_model), "--out", str(out)]) == 0

    results = json.loads((out / "constrained.json").read_text())
    assert is_number(results["compile_ms"]["cold"]) and is_number(results["compile_ms"]["kept"])
    assert set(results["levels"]) == {"1", "4"}
    for streams, level in results["levels"].items():
        for arm in ("constrained", "unconstrained"):
            assert is_number(level[arm]["decode_tps"]["median"]), (streams, arm)
            assert is_number(level[arm]["aggregate_tps"]["median"]), (streams, arm)
            assert level[arm]["output_tokens"]["n"] == int(streams), (streams, arm)
        assert is_number(level["constrained"]["mask_us"]["median"]), streams
        assert level["unconstrained"]["mask_us"]["n"] == 0, streams  # no grammar in that arm
        assert is_number(level["ratio"]["decode_tps"]["median"]), streams
        assert all(isinstance(value, float) for value in results["cost"][streams].values()), streams
    prompts = {(request["arm"], request["prompt_tokens"]) for request in results["requests"]}
    assert prompts == set(results["prompt_tokens"].items())  # each server saw one prompt throughout

    table = (out / "constrained.md").read_text()
    assert "| Streams | Metric | unconstrained | constrained | constrained / unconstrained |" in table
    assert "| 4 | decode tok/s per stream |" in table
    assert "mask per token at 4 streams (µs)" in table
    assert "—" not in table  # no empty cell
    assert "Target: constrained decode at least 0.9x unconstrained:" in table
    assert "Cost, per decode step" in table


def test_speculative_smoke_run_writes_its_report(tmp_path: Path) -> None:
    """`--speculative`: both arms on both workloads on the trained tiny model, acceptance from the lookup
    server's log, the cost ratio measured, and the table with every cell filled."""
    out = tmp_path / "speculative"
    assert main(["--speculative", "--smoke", "--models-dir", str(MODELS), "--out", str(out)]) == 0

    results = json.loads((out / "speculative.json").read_text())
    cells = results["cells"]["tiny"]
    assert set(cells) == {"edit", "free"} and set(cells["edit"]) == {"1", "2"}
    for workload, levels in cells.items():
        for streams, cell in levels.items():
            assert is_number(cell["off"]["decode_tps"]["median"]), (workload, streams)
            for arm in ("prompt-lookup", "draft"):
                assert is_number(cell[arm]["decode_tps"]["median"]), (workload, streams, arm)
                assert is_number(cell[arm]["ratio"]["median"]), (workload, streams, arm)
    assert cells["edit"]["1"]["prompt-lookup"]["proposed"] > 0  # the answer copies its prompt
    cost = results["cost"]["tiny"]
    assert cost["verify_ms"] > 0 and cost["one_token_ms"] > 0 and cost["k"] == 8
    assert cost["draft_ms"] > 0 and cost["draft_rows_ms"] > 0 and cost["rows"] == 4

    table = (out / "speculative.md").read_text()
    speed = ("| tiny | edit", "| tiny | free")
    rows = [line.split(" | ")[1:4] for line in table.splitlines() if line.startswith(speed)]
    arms = ("prompt-lookup", "draft")
    assert rows == [[w, s, arm] for w in ("edit", "free") for s in ("1", "2") for arm in arms]
    cells = [line.split(" | ")[4:7] for line in table.splitlines() if line.startswith(speed)]
    assert all("—" not in cell for row in cells for cell in row)  # both rates and their ratio


def test_cache_tiers_smoke_run_writes_its_report(tmp_path: Path) -> None:
    """`--cache-tiers`: cold, RAM and disk first tokens for one prefix size, the disk hit reading what the
    first server wrote before its restart."""
    out = tmp_path / "tiers"
    assert main(["--cache-tiers", "--smoke", "--models-dir", str(MODELS), "--out", str(out)]) == 0

    results = json.loads((out / "cache_tiers.json").read_text())
    [row] = results["rows"]
    assert all(is_number(row[f"{tier}_ttft_s"]) for tier in ("cold", "ram", "disk"))
    assert row["disk_cached"] >= 256 and row["ram_cached"] >= row["disk_cached"]
    assert row["disk_bytes_read"] > 0 and row["disk_bytes_per_token"] > 0
    assert "| disk / cold |" in (out / "cache_tiers.md").read_text()
    kv = {row["kv_bits"]: row for row in results["kv_settings"]}
    assert set(kv) == {0, 8, 4} and all(is_number(row["decode_tps"]) for row in kv.values())
    assert kv[4]["bytes_per_token"] < kv[8]["bytes_per_token"] < kv[0]["bytes_per_token"]
    assert is_number(results["attention_ms"]["bf16"]) and is_number(results["attention_ms"]["8bit"])


def test_vision_smoke_run_writes_its_report(tmp_path: Path) -> None:
    """`--vision`: a screenshot's first token cold and on the second turn, which reads it from the cache
    (the vision tower not run again)."""
    out = tmp_path / "vision"
    assert main(["--vision", "--smoke", "--models-dir", str(MODELS), "--out", str(out)]) == 0
    [row] = json.loads((out / "vision.json").read_text())["rows"]
    assert is_number(row["cold_ttft_s"]) and is_number(row["cached_ttft_s"])
    # The second turn's vision tower did not run: the screenshot's span was read from the cache.
    assert row["cold_encode_s"] > 0 and row["cached_encode_s"] == 0 and row["cached_tokens"] > 0
    assert "| 2nd / cold |" in (out / "vision.md").read_text()


def test_group_smoke_run_writes_its_report(tmp_path: Path) -> None:
    """`--group`: one process against two, and the bytes the group sent per decoded token (more than one
    process's, which sends none), beside the figure computed from the model's shape."""
    out = tmp_path / "group"
    assert main(["--group", "--smoke", "--models-dir", str(MODELS), "--out", str(out)]) == 0
    results = json.loads((out / "group.json").read_text())
    one, two = results["rows"]
    assert (one["ranks"], two["ranks"]) == (1, 2)
    assert all(is_number(row["decode_tps"]) and is_number(row["prefill_tps"]) for row in (one, two))
    if two["loopback_bytes_per_token"] is not None:  # Linux's counters
        assert two["loopback_bytes_per_token"] >= results["computed"]["bytes_per_token_all_ranks"]
    assert "loopback bytes per decoded token" in (out / "group.md").read_text()


def test_one_stream_smoke_run_writes_its_report(tmp_path: Path) -> None:
    """`--one-stream`: raw mlx-lm and mlxd taking turns, at one stream and at four, each ratio mlxd's rate
    over the raw runs' around it."""
    out = tmp_path / "one-stream"
    assert main(["--one-stream", "--smoke", "--models-dir", str(MODELS), "--out", str(out)]) == 0
    [row] = json.loads((out / "one_stream.json").read_text())["rows"]
    for kind in ("one", "batch"):
        figure = row[kind]
        assert is_number(figure["raw_tps"]) and figure["mlxd_tps"] > 0
        assert figure["ratios"] == [figure["ratio"]]
        assert abs(figure["ratio"] - figure["mlxd_tps"] / figure["raw_tps"]) < 1e-9
    assert "| tiny | 1 |" in (out / "one_stream.md").read_text()
