"""The vocabulary of durable steps: a model call about to be made, and the journal that records it.

The runtime asks the journal which steps an earlier attempt completed and replays their outputs
instead of calling the model again; every call it does make is written to the journal when it
starts and when it ends. `app.services.run_steps` is the Postgres journal; `MemoryJournal`
keeps steps in memory (unit tests, and runs that need no durability).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from app.providers.base import Completion

PLAN_INDEX = 0


class AttemptLost(Exception):
    """This attempt no longer owns its run (a newer attempt claimed it): stop, write nothing."""


class AttemptHandedBack(Exception):
    """The worker is stopping: this attempt gives its run back before its next model call."""


@dataclass(slots=True)
class ModelCall:
    """One model call of a run, about to be made. Hooks may read it and add to `waited_ms`."""

    index: int
    #: plan | step | final
    kind: str
    title: str
    prompt: str
    max_tokens: int
    model: str | None
    #: Time spent waiting for permission to call (a provider's rate limit, say), in ms.
    waited_ms: int = 0


#: Called before each model call, after the deadline, stop and budget checks; may wait (adding
#: to `call.waited_ms`) or raise a `RunFailure` to end the attempt.
BeforeCall = Callable[[ModelCall], None]


class StepJournal(Protocol):
    def completed_outputs(self) -> Mapping[int, str]:
        """Outputs of the steps an earlier attempt completed, by index (read once, at start)."""
        ...

    def start(self, call: ModelCall) -> None:
        """Record that the call starts (raises `AttemptLost` when the run is no longer ours, and
        `RunCancelled` when it was asked to stop: the cancellation is seen at its next call)."""
        ...

    def complete(self, call: ModelCall, completion: Completion, latency_ms: int) -> None:
        """Record the call's answer and tokens (raises `AttemptLost` likewise)."""
        ...

    def fail(self, call: ModelCall, error: BaseException, latency_ms: int) -> None:
        """Record that the call failed; it is redone by the next attempt."""
        ...


@dataclass
class MemoryJournal:
    """Steps kept in this object only."""

    outputs: dict[int, str] = field(default_factory=dict)
    started: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def completed_outputs(self) -> Mapping[int, str]:
        return dict(self.outputs)

    def start(self, call: ModelCall) -> None:
        self.started.append(call.index)

    def complete(self, call: ModelCall, completion: Completion, latency_ms: int) -> None:
        self.outputs[call.index] = completion.text

    def fail(self, call: ModelCall, error: BaseException, latency_ms: int) -> None:
        self.failed.append(call.index)
