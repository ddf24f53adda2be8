"""What the tools-and-thinking model is trained to say, written as its chat template sees it."""

from __future__ import annotations

from daemon.engine.tools import generic_instructions
from tests.trained import Example

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "options": {"type": "object"}},
    "required": ["city"],
}
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": WEATHER_SCHEMA,
}
# The same tool as the server hands it to the chat template.
TEMPLATE_TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": WEATHER_SCHEMA,
        },
    },
)

ASK_PARIS = {"role": "user", "content": "What is the weather in Paris?"}
PARIS_ARGUMENTS = {"city": "Paris", "days": 3, "options": {"units": "metric", "hours": [6, 12]}}

# Text, then one call whose integer the model writes as a string (the server coerces it to 3).
CALL_ONE = Example(
    messages=(ASK_PARIS,),
    tools=TEMPLATE_TOOLS,
    response='Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
    '"days": "3", "options": {"units": "metric", "hours": [6, 12]}}}\n</tool_call>',
)
CALL_TWO = Example(
    messages=({"role": "user", "content": "Weather in Paris and in Rome?"},),
    tools=TEMPLATE_TOOLS,
    response='<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>',
)
MALFORMED = Example(
    messages=({"role": "user", "content": "Call the tool badly."},),
    tools=TEMPLATE_TOOLS,
    response='<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>',
)
# The turn after CALL_ONE's call, with its result.
ROUND_TRIP = Example(
    messages=(
        ASK_PARIS,
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": PARIS_ARGUMENTS}}
            ],
        },
        {"role": "tool", "content": "sunny, 24 C"},
    ),
    tools=TEMPLATE_TOOLS,
    response="It is sunny and 24 C in Paris.",
)
SAY_HELLO = {"role": "user", "content": "Say hello."}
DECLINE = Example(messages=(SAY_HELLO,), tools=TEMPLATE_TOOLS, response="Hello! No tool is needed for that.")
# The same prompt once the server has forced a call: `tool_choice` tool, then any.
FORCED_TOOL = Example(
    messages=(SAY_HELLO,),
    tools=TEMPLATE_TOOLS,
    opening='<tool_call>\n{"name": "get_weather", "arguments": ',
    response='{"city": "Paris"}}\n</tool_call>',
)
FORCED_ANY = Example(
    messages=(SAY_HELLO,),
    tools=TEMPLATE_TOOLS,
    opening='<tool_call>\n{"name": "',
    response='get_weather", "arguments": {"city": "Rome"}}\n</tool_call>',
)
THINK = Example(
    messages=({"role": "user", "content": "Think first: what is two plus two?"},),
    enable_thinking=True,
    response="<think>\nTwo plus two makes four.\n</think>\n\nThe answer is four.",
)

TOOL_EXAMPLES = (CALL_ONE, CALL_TWO, MALFORMED, ROUND_TRIP, DECLINE, FORCED_TOOL, FORCED_ANY, THINK)

# A chat template that knows nothing of tools: the server describes them in mlxd's generic form.
PLAIN_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
GENERIC_CALL = Example(
    messages=(
        {"role": "system", "content": generic_instructions(list(TEMPLATE_TOOLS))},
        {"role": "user", "content": "What is the weather in Oslo?"},
    ),
    response='<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
)

# A model that calls a tool the request never declared, get_weather being the only one on offer; its
# arguments are bounded so that a call held to their schema ends whatever the model picks
# (tests/test_constrained_models.py).
BOUNDED_WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
}
BOUNDED_WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": BOUNDED_WEATHER_SCHEMA,
}
DELETE_ALL = {"role": "user", "content": "Delete all my files."}
UNDECLARED_CALL = Example(
    messages=(DELETE_ALL,),
    tools=(
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": BOUNDED_WEATHER_SCHEMA,
            },
        },
    ),
    response='<tool_call>\n{"name": "delete_everything", "arguments": {}}\n</tool_call>',
)
