"""A tool call read while it is being generated, in the formats whose arguments can be told apart as they
come: JSON calls (`{"name": "…", "arguments": {…}}`, json_tools and the generic format) and Qwen3-Coder's
XML (`<function=NAME><parameter=KEY>VALUE</parameter>…</function>`).

The name is known once it is written, and each top-level argument once its value is complete. A value is
never reported in part, so a call cut off midway carries only whole arguments; a string is never sent
truncated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_JSON_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*\{')
_SPACE = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


_XML_FUNCTION = re.compile(r"\s*<function=([^\s<>]+)>")
_XML_PARAMETER = re.compile(r"\s*<parameter=(.*?)</parameter>", re.DOTALL)
_XML_END = re.compile(r"\s*</function>")


class CallReader:
    """Reads one call's text as it arrives: `name` once the call's opening has arrived, and from `push` the
    arguments each piece completes. Text in another shape (keys in another order, a list of calls) is never
    read here: the whole call is parsed when it ends."""

    def __init__(self) -> None:
        self.text = ""
        self.name: str | None = None
        self.closed = False  # the arguments have ended
        self.stuck = False  # the text left the shape this reader follows
        self._next = 0  # where the next argument, or the end of the arguments, begins

    @property
    def rest(self) -> str:
        """The text not read as arguments yet."""
        return self.text[self._next :]

    def push(self, text: str) -> list[tuple[str, Any]]:
        raise NotImplementedError


def reader_for(kind: str, parse: Callable[[str, Any], Any], tools: list[dict[str, Any]]) -> CallReader | None:
    """A reader for calls of mlx-lm's parser `kind` (or "generic"), None where arguments cannot be told
    apart before the call ends."""
    if kind in ("json_tools", "generic"):
        return JsonCallReader()
    if kind == "qwen3_coder":
        return XmlCallReader(parse, tools)
    return None


class JsonCallReader(CallReader):
    """`{"name": …, "arguments": {…}}`: a value is complete when the `,` or `}` after it has arrived (`12`
    may still become `123`)."""

    def push(self, text: str) -> list[tuple[str, Any]]:
        self.text += text
        if self.closed or self.stuck:
            return []
        if self.name is None:
            head = _JSON_HEAD.match(self.text) if "{" in text else None
            if head is None:
                return []
            self.name = json.loads(head.group(1))
            self._next = head.end()
            return self._arguments()
        # Only a `,` or `}` can complete a value.
        return self._arguments() if "," in text or "}" in text else []

    def _arguments(self) -> list[tuple[str, Any]]:
        found = []
        text = self.text
        while True:
            start = _skip(text, self._next)
            if start == len(text):
                return found
            if text[start] == "}":
                self.closed = True
                self._next = start + 1
                return found
            try:
                key, end = _DECODER.raw_decode(text, start)
            except ValueError:  # not complete yet (or never will be: the call's end decides)
                return found
            colon = _skip(text, end)
            if colon == len(text):
                return found
            if not isinstance(key, str) or text[colon] != ":":
                self.stuck = True
                return found
            try:
                value, end = _DECODER.raw_decode(text, _skip(text, colon + 1))
            except ValueError:
                return found
            after = _skip(text, end)
            if after == len(text):
                return found
            if text[after] not in ",}":
                self.stuck = True
                return found
            self._next = after + 1 if text[after] == "," else after
            found.append((key, value))


class XmlCallReader(CallReader):
    """Qwen3-Coder's `<function=NAME>` then `<parameter=KEY>VALUE</parameter>` each: a parameter is read, by
    mlx-lm's own parser so that values convert exactly as for a whole call, once its closing tag arrives."""

    def __init__(self, parse: Callable[[str, Any], Any], tools: list[dict[str, Any]]):
        super().__init__()
        self._parse = parse
        self._tools = tools

    def push(self, text: str) -> list[tuple[str, Any]]:
        self.text += text
        if self.closed or self.stuck or ">" not in text:
            return []
        if self.name is None:
            function = _XML_FUNCTION.match(self.text)
            if function is None:
                return []
            self.name, self._next = function.group(1), function.end()
        found = []
        while parameter := _XML_PARAMETER.match(self.text, self._next):
            one = f"<function={self.name}>\n<parameter={parameter.group(1)}</parameter>\n</function>"
            try:
                found += self._parse(one, self._tools)["arguments"].items()
            except ValueError:  # a value the parser refuses: the whole call is judged at its end
                self.stuck = True
                return found
            self._next = parameter.end()
        if end := _XML_END.match(self.text, self._next):
            self.closed = True
            self._next = end.end()
        return found


def _skip(text: str, at: int) -> int:
    return _SPACE.match(text, at).end()
