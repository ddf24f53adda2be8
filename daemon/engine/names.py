"""Which model a requested name means: an exact model name, else an alias, else the first pattern rule that
matches. By default Claude Code's tier names find a model: `*haiku*` the small model, `claude-*` the main."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Ids `/v1/models` lists for Claude Code's tiers, so its gateway model discovery (which keeps only ids that
# start with `claude`) finds the models; requests for any dated version of them resolve the same way.
HAIKU_TIER_ID = "claude-haiku"
TIER_IDS = ("claude-opus", "claude-sonnet", HAIKU_TIER_ID)


@dataclass(frozen=True)
class NameRule:
    """Requested names matching `pattern` (fnmatch-style, any case) mean the model named `model`."""

    pattern: str
    model: str

    def matches(self, requested: str) -> bool:
        return fnmatch.fnmatchcase(requested.lower(), self.pattern.lower())


def tier_rules(main: str, small: str | None) -> list[NameRule]:
    """Claude Code's background (haiku) tier to the small model, every other Claude name to the main one."""
    return [NameRule("*haiku*", small or main), NameRule("claude-*", main)]


class ModelNames:
    """Resolves requested names; `aliases` maps each model's name to its aliases, in listing order."""

    def __init__(self, aliases: Mapping[str, Sequence[str]], rules: Sequence[NameRule]):
        self._models = list(aliases)
        self._aliases = {alias: name for name, names in aliases.items() for alias in names}
        self.rules = [NameRule(rule.pattern, self.canonical(rule.model) or rule.model) for rule in rules]

    def canonical(self, name: str) -> str | None:
        """The model a name or alias means; rules aside."""
        if name in self._models:
            return name
        return self._aliases.get(name)

    def resolve(self, requested: str) -> str | None:
        """The model's name for a requested name: exact name, alias, then pattern rules in order."""
        if found := self.canonical(requested):
            return found
        return next((rule.model for rule in self.rules if rule.matches(requested)), None)

    def aliases(self) -> dict[str, str]:
        """Every alias and the model it means."""
        return dict(self._aliases)

    def available(self) -> list[str]:
        """The names a client may use, for error messages: model names, then aliases."""
        return [*self._models, *self._aliases]
