"""Logits processors that constrain what a model may generate: banned tokens, a thinking budget that closes
the reasoning section by forcing its end marker once the budget is spent, and a response's grammar.

Each is called once per generated token with the context ending in the token just fed to the model, and
reads no more of the context than that token. Each can `snapshot` its state and `restore` it: speculative
decoding runs a processor over proposed tokens and takes back those that were refused."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from daemon.engine.constrained import GrammarConstraint
from daemon.engine.model import LoadedModel
from daemon.engine.prompt import Prompt


class Ban:
    """Never generate these tokens (e.g. a tool-call marker under `tool_choice: none`)."""

    def __init__(self, tokens: tuple[int, ...]):
        self.banned = mx.array(list(tokens))

    def __call__(self, _context: Any, logits: mx.array) -> mx.array:
        logits[..., self.banned] = -mx.inf
        return logits

    def snapshot(self) -> None:
        return None

    def restore(self, _state: None) -> None:
        pass


class ThinkingBudget:
    """Counts the tokens generated inside the reasoning section; at `budget`, forces the end marker's
    tokens one by one, after which the model answers and may not reopen its reasoning.

    Called once per generated token with the context ending in the token just fed to the model.
    """

    def __init__(self, budget: int, start: tuple[int, ...], end: tuple[int, ...], thinking: bool):
        self.budget = budget
        self.start = start
        self.end = end
        self.thinking = thinking
        self.spent = 0
        self.forced = 0  # end-marker tokens forced so far
        self.first_call = True

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        if self.forced == len(self.end):
            # Spent: the reasoning is over for this response, markers included.
            logits[..., mx.array([self.start[0], self.end[0]])] = -mx.inf
            return logits
        last = int(context[-1].item())
        if self.first_call:
            self.first_call = False  # the token fed first is the prompt's last: nothing generated yet
        elif last == self.start[-1]:
            self.thinking, self.spent = True, 0
        elif last == self.end[-1]:
            self.thinking = False
        elif self.thinking:
            self.spent += 1
        if not self.thinking or self.spent < self.budget:
            return logits
        forced = mx.full(logits.shape, -mx.inf, dtype=logits.dtype)
        forced[..., self.end[self.forced]] = 0
        self.forced += 1
        return forced

    def snapshot(self) -> tuple:
        return self.thinking, self.spent, self.forced, self.first_call

    def restore(self, state: tuple) -> None:
        self.thinking, self.spent, self.forced, self.first_call = state


def logits_processors(prompt: Prompt, model: LoadedModel) -> tuple[list, GrammarConstraint | None]:
    """The processors a prompt's response runs through, in order, and the grammar's among them."""
    processors: list = []
    if prompt.banned_tokens:
        processors.append(Ban(prompt.banned_tokens))
    tokenizer = model.tokenizer
    marks = (tokenizer.think_start_tokens, tokenizer.think_end_tokens) if tokenizer.has_thinking else ()
    if prompt.thinking_budget is not None and marks:
        processors.append(
            ThinkingBudget(prompt.thinking_budget, *map(tuple, marks), thinking=prompt.starts_in_thinking)
        )
    grammar = None
    if prompt.grammar is not None and model.grammars is not None:
        # Reasoning stays free where the model marks it with one token each way.
        single = marks and len(marks[0]) == len(marks[1]) == 1
        reasoning = (
            (marks[0][0], marks[1][0]) if single and (prompt.thinking or prompt.starts_in_thinking) else None
        )
        matcher = prompt.grammar.template.deep_copy()
        matcher.consume_tokens(list(prompt.grammar_begun))  # checked to fit when the prompt was rendered
        grammar = GrammarConstraint(
            matcher,
            model.grammars.lltokenizer.vocab_size,
            reasoning=reasoning,
            in_reasoning=prompt.starts_in_thinking and reasoning is not None,
        )
        processors.append(grammar)
    return processors, grammar
