"""CPU threads that follow the machine's load while a stage runs: a pure policy over recent
step rates (`next_threads`), and the `Tuner` a loop (or the sampler) ticks once per step.

Why: on a 2-core machine 2 threads train ~1.8x faster than 1 while the machine is quiet, but
once another busy process arrives every matmul waits for the descheduled OpenMP worker and
the 2-thread step runs 6-17x slower (pretrain 6,900 -> 700 tokens/s, measured here), while a
1-thread step loses only its share of a core. The start-up probe (`distributed.set_threads`)
sees the machine as it was at start-up; the tuner notices when the step rate jumps (a
process arrived) or drops (it left), tries the other thread count for one measurement, and
keeps whichever was faster. It also re-tries now and then (backing off while the tries
lose), since a 1-thread run may barely see the machine go quiet.

Only with `threads = 0` (auto): a pinned thread count is the user's, and is what a bitwise
reproducible run needs (matmul sums split differently over 1 and 2 threads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

MIN_S = 0.5  # a measurement pools steps until they span this long (a few OS time slices)
REPROBE_EVERY = 30  # settled measurements between probes when nothing jumps


@dataclass(frozen=True)
class ThreadState:
    threads: int  # what the next measurement runs with
    baseline: float = 0.0  # settled seconds per unit at `threads` (0: none yet)
    probe: tuple[int, float] | None = None  # trying the other count: (threads, rate) before the switch
    since: int = 0  # settled measurements since the last probe
    every: int = 0  # settled measurements between periodic probes (0: reprobe_every; doubles when one loses)


def next_threads(state: ThreadState, rate: float, most: int, jump: float = 1.5, margin: float = 1.1,
                 reprobe_every: int = REPROBE_EVERY, max_backoff: int = 16) -> ThreadState:
    """The thread count after one measurement of `rate` (seconds per unit of work, lower is
    faster) made at `state.threads`; pure, so it is tested on sequences of numbers.

    The first measurement sets the baseline; made on 1 thread (what the start-up probe chose
    from a few matmuls, and on a quiet machine now and then wrongly, at ~1.8x the cost of every
    step until a periodic probe) it also starts a probe of `most` right away.
    Settled on `most` threads, a rate over `jump` x the baseline (a process arrived) starts a
    probe of 1 thread; settled on 1, a rate under baseline / `jump` (one left) starts a probe of
    `most`. (The other way round the probe would only be slower: more load never makes more
    threads pay, less load never makes fewer.) Every `every` settled measurements a probe
    starts anyway. A probe is one measurement on the other count; then the faster of the two
    is kept, the probed count only when it wins by `margin` (no flip-flopping on noise), and
    its rate is the new baseline. A probe that loses doubles `every` (up to `max_backoff` x
    reprobe_every: on a loaded machine a 2-thread probe can cost ~10 steps' time), one that
    wins resets it. The baseline follows slow drift by an exponential average (weight 0.2) of
    rates clipped at `jump` x the baseline: one stalled measurement (the process descheduled
    for a moment: 10-100x the usual rate on a shared machine) then lifts it by at most 10%
    instead of ~3x, after which an ordinary rate on 1 thread read as "a process left" and
    started a probe of `most` threads, which under load costs ~15 steps' time (the sampler
    beside a busy process: 300 vs 20 ms a decode step). A lasting slowdown still moves it.
    """
    if most <= 1:
        return state
    every = state.every or reprobe_every
    if state.probe is not None:
        before_threads, before_rate = state.probe
        if rate * margin < before_rate:
            return ThreadState(state.threads, rate, every=reprobe_every)
        return ThreadState(before_threads, before_rate, every=min(2 * every, max_backoff * reprobe_every))
    if state.baseline == 0.0:
        if state.threads == 1:  # the start-up probe's 20-50 ms chose 1 thread: one real step on `most` checks it
            return ThreadState(most, probe=(1, rate), every=every)
        return replace(state, baseline=rate, every=every)
    arrived = state.threads > 1 and rate > jump * state.baseline
    left = state.threads == 1 and rate * jump < state.baseline
    if arrived or left or state.since + 1 >= every:
        return ThreadState(1 if state.threads > 1 else most, probe=(state.threads, rate), every=every)
    settled = 0.8 * state.baseline + 0.2 * min(rate, jump * state.baseline)
    return replace(state, baseline=settled, since=state.since + 1, every=every)


# the most threads this process may use when its stage left `threads` at 0 (auto); 0: pinned
_AUTO = {"most": 0}


def mark_auto(most: int) -> None:
    """Called by `distributed.set_threads`: `most` > 0 lets tuners move between 1 and `most`."""
    _AUTO["most"] = most


def auto_most() -> int:
    return _AUTO["most"]


class Tuner:
    """Applies `next_threads` in a loop: `tick(seconds, units)` after each step; measurements
    are pooled until they span `min_s` (a probe then lasts long enough to see a competing
    process's time slices), and the first `skip` measurements (warm-up) only observe.

        tuner = Tuner.auto()            # off unless the stage's threads key is 0
        ...step...; tuner.tick(dt, tokens)
    """

    def __init__(self, most: int, min_s: float | None = None, skip: int = 1, state: ThreadState | None = None,
                 **policy):
        """`state`: where an earlier tuner left off (the sampler's, from its previous call)."""
        self.most, self.skip = most, skip
        self.min_s = MIN_S if min_s is None else min_s
        self.policy = {"reprobe_every": REPROBE_EVERY, **policy}
        self.state = state if state is not None and most > 1 else ThreadState(torch.get_num_threads())
        if self.threads != torch.get_num_threads():
            torch.set_num_threads(self.threads)
        self.switches = 0
        self._s = self._units = 0.0
        self._t = None

    @classmethod
    def auto(cls, **kw) -> Tuner:
        return cls(auto_most(), **kw)

    @property
    def threads(self) -> int:
        return self.state.threads

    def lap(self, units: float = 1.0) -> int:
        """`tick` with the time since the previous lap (the first lap only starts the clock)."""
        now = time.perf_counter()
        dt, self._t = (None if self._t is None else now - self._t), now
        return self.threads if dt is None else self.tick(dt, units)

    def tick(self, seconds: float, units: float = 1.0) -> int:
        """Record a step of `units` work that took `seconds`; -> the thread count now set."""
        if self.most <= 1:
            return torch.get_num_threads()
        self._s += seconds
        self._units += units
        if self._s < self.min_s:
            return self.threads
        rate, self._s, self._units = self._s / max(self._units, 1e-12), 0.0, 0.0
        if self.skip > 0:
            self.skip -= 1
            return self.threads
        before = self.threads
        self.state = next_threads(self.state, rate, self.most, **self.policy)
        if self.threads != before:
            self.switches += 1
            torch.set_num_threads(self.threads)
        return self.threads
