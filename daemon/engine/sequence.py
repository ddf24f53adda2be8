"""One job's sequence while the engine runs it: its decoder, grammar and speculation (and what proposes its
tokens), and the counts its `Started` and `Finished` events report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from daemon.chat.events import Finished, Usage
from daemon.engine.constrained import GrammarConstraint
from daemon.engine.decoder import OutputDecoder
from daemon.engine.draft import DraftProposer
from daemon.engine.guards import GuardedProcessor, guard_sampler
from daemon.engine.jobs import GenerationJob
from daemon.engine.lookup import PromptLookup
from daemon.engine.model import LoadedModel
from daemon.engine.speculation import Proposer, Speculation


@dataclass
class Sequence:
    job: GenerationJob
    decoder: OutputDecoder
    submitted: float
    reused: int
    segments_left: int  # segment boundaries still to reach, each storing its prefix in the cache
    first_token: float | None = None
    output_tokens: int = 0
    processors: list = field(default_factory=list)  # its logits processors, the grammar's among them
    grammar: GrammarConstraint | None = None  # what holds this sequence to its grammar
    speculation: Speculation | None = None  # what this sequence proposes, and its counts
    fault: BaseException | None = None  # raised by this request's own sampler or logits processors
    image_seconds: float = 0.0  # the vision tower's run on its images
    cache_miss: str | None = None  # why it reused little of a related recent prompt (`ReuseMonitor`)

    def fault_in(self, error: BaseException) -> None:
        if self.fault is None:
            self.fault = error

    def guarded_sampler(self, vocab_size: int | None):
        """Its sampler, a fault it raises kept as this sequence's (see `fault_in`), not the batch's."""
        return guard_sampler(self.job.sampling.sampler(vocab_size), self.fault_in)

    def guarded_processors(self) -> list:
        return [GuardedProcessor(p, self.fault_in) for p in self.processors]

    @property
    def prewarm(self) -> bool:
        """`max_tokens: 0`: process the prompt into the cache and answer nothing."""
        return self.job.max_tokens == 0

    def cache_key(self, tokens: list[int]) -> list[int]:
        """What `tokens` (the prompt, then output) are stored under in the prefix cache: a prompt with
        images is keyed on their content."""
        vision = self.job.prompt.vision
        if vision is None:
            return tokens
        return [*vision.key, *tokens[len(vision.key) :]]

    def figures(self, now: float, *, prefilling: bool = False) -> dict:
        """What the status page shows of it while it runs."""
        first = self.first_token
        decoding = now - first if first is not None else 0.0
        return {
            "request_id": self.job.label,
            "state": "prefilling" if prefilling else "decoding" if first is not None else "prompt",
            "prompt_tokens": len(self.job.prompt.tokens),
            "cached_tokens": self.reused,
            "output_tokens": self.output_tokens,
            "ttft_s": first - self.submitted if first is not None else None,
            "tokens_per_second": (self.output_tokens - 1) / decoding if decoding > 0 else None,
            "seconds": now - self.submitted,
            "cache_miss": self.cache_miss,
        }

    def usage(self, *, caching: bool, output_tokens: int = 0) -> Usage:
        """The prompt's split: read from the cache, and newly written to it (the whole rest, unless the
        cache is off)."""
        prompt_tokens = len(self.job.prompt.tokens)
        return Usage(
            prompt_tokens=prompt_tokens,
            cached_tokens=self.reused,
            stored_tokens=prompt_tokens - self.reused if caching else 0,
            output_tokens=output_tokens,
        )

    def finished(self, reason: str, *, caching: bool) -> Finished:
        now = time.perf_counter()
        first = self.first_token or now
        return Finished(
            stop_reason=reason,  # type: ignore[arg-type]
            stop_sequence=self.decoder.stop_sequence,
            usage=self.usage(caching=caching, output_tokens=self.output_tokens),
            time_to_first_token=first - self.submitted,
            decode_seconds=now - first,
            tool_parse_failures=self.decoder.parse_failures,
            constrained_tokens=self.grammar.tokens if self.grammar else 0,
            mask_seconds=self.grammar.mask_seconds if self.grammar else 0.0,
            proposed_tokens=self.speculation.proposed if self.speculation else 0,
            accepted_tokens=self.speculation.accepted if self.speculation else 0,
            image_seconds=self.image_seconds,
        )


def proposer(loaded: LoadedModel, job: GenerationJob) -> Proposer | None:
    """What the model's `speculative` setting makes the sequence's proposer."""
    if loaded.speculative == "draft" and loaded.draft is not None:
        return DraftProposer(loaded.draft, job.prompt.tokens, job.sampling)
    if loaded.speculative == "prompt-lookup":
        return PromptLookup(job.prompt.tokens)
    return None
