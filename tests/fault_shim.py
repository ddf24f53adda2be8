"""`mlxd serve` with faults injected in-process, for the fault tests: the real server, engine and model,
with a fault raised at one stage of one request where no real input can provoke one.

A request asks for a fault with a stop sequence `FAULT:<stage>` (the tiny models never write one):
- `admit`: while the engine admits it (building its output decoder);
- `sample`: in its sampler, inside the batch step;
- `prefill`: in its logits processor's first call, as its prompt's processing ends;
- `decode`: in its logits processor's third call, mid-generation;
- `read`: while its output tokens are decoded into blocks;
- `batch`: in the model's next forward pass, a fault of the whole batch that no request owns;
- `image`: in a vision model's prefill of its prompt's images, before the vision tower runs;
- `slow-image`: not a fault: the vision tower's run on its images ends only once the engine has ended
  another request meanwhile (it fails if none ends within a minute), which it can only do if the batch
  keeps going while an image is encoded.
A request for a model named `fault-encode` (routed to the served model by a `[[model_rules]]` pattern)
fails while its stream events are encoded.

Run as `python tests/fault_shim.py serve …`, with the arguments of `mlxd serve`.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from daemon.api import messages
from daemon.cli import main
from daemon.engine import runner
from daemon.engine.accepted import AcceptedJobs
from daemon.engine.decoder import OutputDecoder
from daemon.engine.vision_model import VisionPrefill

TRIGGER = "FAULT:"
ENCODE_MODEL = "fault-encode"


class InjectedFault(RuntimeError):
    """The fault a test asked for."""


def stages(stop_sequences: list[str]) -> set[str]:
    return {stop.removeprefix(TRIGGER) for stop in stop_sequences if stop.startswith(TRIGGER)}


def failing_processor(on_call: int):
    calls = 0

    def processor(_context: Any, logits: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == on_call:
            raise InjectedFault(f"logits processor, call {on_call}")
        return logits

    return processor


class FailingSampling:
    def sampler(self, _vocab_size: int | None = None):
        def sample(_logprobs: Any) -> Any:
            raise InjectedFault("sampler")

        return sample


_forward_fault = threading.Event()
_insert = runner.Engine._insert
_logits_processors = runner.logits_processors
_admitting: set[str] = set()  # the stages asked by the job being admitted (admission runs on one thread)


def insert(self: runner.Engine, batch: Any, job: runner.GenerationJob, submitted: float, hit: Any) -> None:
    asked = stages(job.stop_sequences)
    if "admit" in asked:
        raise InjectedFault("admission")
    if "sample" in asked:
        job.sampling = FailingSampling()  # type: ignore[assignment]
    if "batch" in asked:
        _arm_forward_fault(self.loaded.model)
    _admitting.clear()
    _admitting.update(asked)  # read by `logits_processors`, called from the original `_insert`
    _insert(self, batch, job, submitted, hit)
    if "image" in asked:
        self._prefills[-1][1].fault = True  # the prefill `_insert` queued for this job
    if "slow-image" in asked:
        self._prefills[-1][1].slow = True


def logits_processors(prompt: Any, model: Any) -> tuple[list, Any]:
    processors, grammar = _logits_processors(prompt, model)
    if "prefill" in _admitting:
        processors.append(failing_processor(1))
    if "decode" in _admitting:
        processors.append(failing_processor(3))
    return processors, grammar


def _arm_forward_fault(model: Any) -> None:
    model_class = type(model)
    if not getattr(model_class, "_fault_armed", False):
        forward = model_class.__call__

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _forward_fault.is_set():
                _forward_fault.clear()
                raise InjectedFault("the model's forward pass")
            return forward(self, *args, **kwargs)

        model_class.__call__ = call
        model_class._fault_armed = True
    _forward_fault.set()


_advance = VisionPrefill.advance


def advance(self: VisionPrefill, **kwargs: Any) -> None:
    if getattr(self, "fault", False):
        raise InjectedFault("image prefill")
    _advance(self, **kwargs)


_start = VisionPrefill._start
_ended = threading.Condition()
_ended_count = 0
_end = AcceptedJobs.end


def end(self: AcceptedJobs, job: Any, event: Any) -> None:
    global _ended_count
    _end(self, job, event)
    with _ended:
        _ended_count += 1
        _ended.notify_all()


def start(self: VisionPrefill) -> None:
    _start(self)
    if getattr(self, "slow", False) and self._encoding is not None:
        encoded, self._encoding = self._encoding, Future()
        threading.Thread(target=_after_another, args=(encoded, self._encoding, _ended_count)).start()


def _after_another(encoded: Future, slow: Future, ended_before: int) -> None:
    with _ended:
        another = _ended.wait_for(lambda: _ended_count > ended_before, timeout=60)
    if another:
        slow.set_result(encoded.result())
    else:
        slow.set_exception(InjectedFault("no other request ended while the image was encoded"))


_feed = OutputDecoder.feed


def feed(self: OutputDecoder, token: int) -> list:
    if "read" in stages(self._stops.stops):
        self._fed = getattr(self, "_fed", 0) + 1
        if self._fed == 2:
            raise InjectedFault("output decoding")
    return _feed(self, token)


class FailingStream(messages.MessageStream):
    def events(self, event: Any) -> list:
        if self.model == ENCODE_MODEL and type(event).__name__ == "BlockDelta":
            raise InjectedFault("stream encoding")
        return super().events(event)


runner.Engine._insert = insert
runner.logits_processors = logits_processors
OutputDecoder.feed = feed
VisionPrefill.advance = advance
VisionPrefill._start = start
AcceptedJobs.end = end
messages.MessageStream = FailingStream

if __name__ == "__main__":
    main()
