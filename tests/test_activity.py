"""What the status page is told of requests: the cache-miss explanation a prompt's parts give, and the
recent requests kept, newest first, up to their limit."""

from __future__ import annotations

from daemon.api.activity import Activity
from daemon.chat.request import ChatRequest, Message, Text, Tool
from daemon.engine.reuse import ReuseMonitor, request_parts


def request(system: tuple[str, ...], tools: tuple[str, ...] = (), turns: int = 1) -> ChatRequest:
    messages = tuple(Message("user", (Text(f"turn {n}"),)) for n in range(turns))
    schema = {"type": "object"}
    return ChatRequest("m", messages, system=system, tools=tuple(Tool(name, "d", schema) for name in tools))


SYSTEM = ("You are a tool.", "Be brief.", "Use plain words.", "A long block of rules.")
TOOLS = ("Bash", "Read", "Edit")


def test_a_miss_names_the_first_part_that_changed() -> None:
    monitor = ReuseMonitor()
    assert monitor.check(request_parts(request(SYSTEM, TOOLS)), 0, 1000) is None  # nothing to compare with
    changed = (*SYSTEM[:3], "Another long block of rules.")
    assert monitor.check(request_parts(request(changed, TOOLS)), 40, 1000) == "system block 3 changed"
    other_tool = request(changed, ("Bash2", "Read", "Edit"))
    assert monitor.check(request_parts(other_tool), 300, 1000) == 'tool "Bash2" changed'


def test_an_extended_prompt_that_reads_little_was_evicted_and_a_hit_is_no_miss() -> None:
    monitor = ReuseMonitor()
    monitor.check(request_parts(request(SYSTEM, TOOLS)), 0, 1000)
    assert monitor.check(request_parts(request(SYSTEM, TOOLS, turns=2)), 10, 1000) == "evicted"
    assert monitor.check(request_parts(request(SYSTEM, TOOLS, turns=3)), 990, 1000) is None
    assert monitor.check(request_parts(request(SYSTEM, TOOLS, turns=4)), 10, 100) is None  # too short to say


def test_recent_requests_are_kept_newest_first_up_to_the_limit() -> None:
    activity = Activity(keep=3)
    for n in range(5):
        activity.record({"request_id": f"req_{n}"})
    recent = activity.recent()
    assert [entry["request_id"] for entry in recent] == ["req_4", "req_3", "req_2"]
    assert all(isinstance(entry["finished_at"], float) for entry in recent)
