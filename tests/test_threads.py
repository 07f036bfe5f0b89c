"""The thread policy: `next_threads` on sequences of step rates worked out by hand, the Tuner's
pooling, and a real stage that switches thread counts while it runs (threads = 0)."""

from __future__ import annotations

import os

import pytest
import torch

from rlhfkit import threads as tuning
from rlhfkit.threads import ThreadState, Tuner, next_threads


def run(rates, start=2, most=2, baseline=0.0, **kw):
    """-> the thread count after each rate, and the final state (from `start` threads, settled
    at `baseline` when given)."""
    s, seen = ThreadState(start, baseline), []
    for r in rates:
        s = next_threads(s, r, most, **kw)
        seen.append(s.threads)
    return seen, s


def test_a_jump_probes_one_thread_and_keeps_it_when_faster():
    # 1.0 sets the baseline; 1.1 is within 1.5x (baseline 0.8 * 1.0 + 0.2 * 1.1 = 1.02); 6.0 > 1.5 x 1.02:
    # a busy process arrived -> probe 1 thread; it runs at 2.0, and 2.0 * 1.1 < 6.0 -> keep 1
    seen, s = run([1.0, 1.1, 6.0, 2.0])
    assert seen == [2, 2, 1, 1]
    assert s == ThreadState(1, baseline=2.0, every=30)  # a probe that wins keeps the usual interval


def test_a_drop_probes_all_threads_again():
    # settled on 1 thread at 2.0 s/unit; the busy process leaves: 1.2 < 2.0 / 1.5 -> probe 2
    # threads; 0.6 * 1.1 < 1.2 -> keep 2, baseline 0.6
    seen, s = run([1.2, 0.6], start=1, baseline=2.0)
    assert seen == [2, 2]
    assert s == ThreadState(2, baseline=0.6, every=30)


def test_a_first_measurement_on_one_thread_checks_all_threads():
    # the start-up probe chose 1 thread; its first measurement (2.0) starts a probe of 2 threads,
    # which runs at 1.1: 1.1 * 1.1 < 2.0 -> keep 2 threads, baseline 1.1
    seen, s = run([2.0, 1.1], start=1)
    assert seen == [2, 2]
    assert s == ThreadState(2, baseline=1.1, every=30)
    # the start-up probe was right (busy machine: 2 threads at 6.0) -> back to 1, baseline 2.0, and
    # the next periodic probe waits twice as long
    seen, s = run([2.0, 6.0], start=1)
    assert seen == [2, 1]
    assert s == ThreadState(1, baseline=2.0, every=60)


def test_a_probe_that_loses_goes_back_with_the_new_rate():
    # 2 threads, 1.0; a burst to 2.0 (2x) -> probe 1 thread at 2.1: not faster -> back to 2
    # threads, whose baseline is now the rate measured before the probe (2.0); the lost probe
    # doubles the interval to the next periodic one (30 -> 60)
    seen, s = run([1.0, 2.0, 2.1])
    assert seen == [2, 1, 2]
    assert s == ThreadState(2, baseline=2.0, every=60)
    # a probe must win by the margin: 1.9 * 1.1 = 2.09 > 2.0 -> back to 2 threads
    assert run([1.0, 2.0, 1.9])[0] == [2, 1, 2]


def test_steady_rates_reprobe_every_n_and_noise_does_not():
    seen, _ = run([1.0, 1.2, 0.9, 1.3, 1.0], reprobe_every=100)  # all within 1.5x of the baseline
    assert seen == [2] * 5
    # reprobe_every=3: baseline, then 2 settled measurements, the third starts a probe
    seen, s = run([1.0, 1.0, 1.0, 1.0], reprobe_every=3)
    assert seen == [2, 2, 2, 1] and s.probe == (2, 1.0)


def test_probes_only_where_they_can_win():
    # on 1 thread, more load (3x slower) never makes 2 threads pay: no probe; on 2 threads,
    # a faster rate (load left) never makes 1 thread pay: no probe
    assert run([3.0, 3.0], start=1, baseline=1.0)[0] == [1, 1]
    assert run([1.0, 0.3], start=2)[0] == [2, 2]


def test_losing_periodic_probes_back_off():
    # reprobe_every=2: baseline, 1 settled, then a probe (1 thread, 3.0: loses) -> back to 2 with
    # every = 4: 3 settled measurements, then the next probe
    seen, s = run([1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0], reprobe_every=2)
    assert seen == [2, 2, 1, 2, 2, 2, 2, 1]
    assert s.every == 4 and s.probe == (2, 1.0)
    # the interval stops doubling at max_backoff x reprobe_every
    assert next_threads(ThreadState(1, probe=(2, 1.0), every=8), 3.0, 2, reprobe_every=2, max_backoff=4).every == 8


def test_one_stalled_measurement_does_not_lift_the_baseline_into_a_probe():
    # settled on 1 thread at 1.0; one measurement stalls (10.0: the process was descheduled for a
    # moment) -> the baseline moves by 0.2 x the clipped 1.5 (1.0 -> 1.1), not by 0.2 x 10.0 (-> 2.8);
    # the next ordinary 1.0 is not "a process left" (1.0 x 1.5 > 1.1): no probe of 2 threads
    seen, s = run([10.0, 1.0], start=1, baseline=1.0)
    assert seen == [1, 1] and s.probe is None
    assert s.baseline == pytest.approx(0.8 * 1.1 + 0.2 * 1.0)
    # without the clip the same numbers probed: 0.8 + 0.2 x 10.0 = 2.8 > 1.5 x 1.0
    assert 1.0 * 1.5 < 0.8 * 1.0 + 0.2 * 10.0
    # on 2 threads a stall is a jump (10.0 > 1.5 x 1.0): a probe of 1 thread, as before
    assert run([10.0], start=2, baseline=1.0)[0] == [1]


def test_a_lasting_slowdown_still_moves_the_baseline():
    # settled on 1 thread at 1.0, then the machine gets busier (2.0 each time): the baseline climbs
    # 1.1, 1.21, 1.331, 1.4641, 1.5713 (each step at most 1.5x); once it is over 1.5, a return to
    # 1.0 reads as "a process left" and probes 2 threads
    seen, s = run([2.0] * 5 + [1.0], start=1, baseline=1.0, reprobe_every=100)
    assert seen == [1] * 5 + [2]
    assert s.probe == (1, 1.0)
    assert run([2.0] * 4 + [1.0], start=1, baseline=1.0, reprobe_every=100)[0] == [1] * 5  # 1.4641: not yet


def test_one_core_never_switches():
    assert run([1.0, 9.0, 0.1], start=1, most=1)[0] == [1, 1, 1]  # not even the first-measurement probe


@pytest.fixture
def restore_threads():
    before, auto = torch.get_num_threads(), tuning.auto_most()
    yield
    torch.set_num_threads(before)
    tuning.mark_auto(auto)


def test_tuner_pools_steps_and_skips_warm_up(restore_threads):
    torch.set_num_threads(2)
    t = Tuner(most=2, min_s=1.0, skip=1, reprobe_every=100)
    # 0.6 + 0.6 s: one measurement (1.2 s over 2 units = 0.6), the warm-up one: observed only
    assert [t.tick(0.6, 1.0), t.tick(0.6, 1.0)] == [2, 2] and t.state.baseline == 0.0
    t.tick(1.0, 2.0)  # 0.5 s/unit: the baseline
    assert t.state.baseline == 0.5
    assert t.tick(3.0, 1.0) == 1 and torch.get_num_threads() == 1  # 6x slower: probe 1 thread
    assert t.switches == 1
    assert Tuner(most=0).tick(5.0) == torch.get_num_threads()  # pinned threads: never switches


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to switch between 1 and 2 threads")
def test_pretrain_switches_threads_while_it_runs(tiny_data, tiny_tokenizer, tmp_path, monkeypatch, restore_threads):
    """A real pretrain run with threads = 0: measurements every ~0.05 s and a re-probe every 2,
    so within the run it must try both 1 and 2 threads (whatever the machine's load), and log
    which one each step ran on."""
    from conftest import TINY_PRETRAIN, metrics

    from rlhfkit.config import load_config
    from rlhfkit.stages import pretrain

    monkeypatch.setattr(tuning, "MIN_S", 0.05)
    monkeypatch.setattr(tuning, "REPROBE_EVERY", 2)
    out = tmp_path / "base"
    sets = [s for s in TINY_PRETRAIN if not s.startswith("d_model")] + [
        "d_model=64", f"data={tiny_data['corpus']}", f"tokenizer={tiny_tokenizer}", f"out={out}", "max_steps=40",
        "threads=0", "save_every=0"]
    pretrain.run(load_config(pretrain.Config, sets=sets))
    used = [r["time/threads"] for r in metrics(out / "metrics.jsonl")]
    assert len(used) == 40 and set(used) == {1, 2}, used


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to switch between 1 and 2 threads")
def test_sampler_runs_the_whole_call_on_the_carried_thread_count(restore_threads, monkeypatch):
    """threads = 0, the caller on 2 threads, the sampler's tuner settled on 1 by an earlier call:
    the runner (its oneDNN weight reorder) and the prefill run on 1 thread too, not only the
    decode steps; the caller's count is back after the call. Then a carried state whose first
    measurement in a call is a jump: that measurement counts (no warm-up skip for a carried state),
    so the decode switches to 1 thread from its second step."""
    from transformers import LlamaForCausalLM

    from rlhfkit.generation import generate, llama_fast, sampler
    from rlhfkit.models import tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(512, d_model=256, n_layers=2, n_heads=4)).eval()
    prompts = [[5 + i, 6, 7] for i in range(8)]
    assert 2 * sum(p.numel() for p in model.parameters()) * len(prompts) >= sampler.SINGLE_THREAD_FLOPS  # tuned
    seen: dict[str, list[int]] = {"runner": [], "prefill": [], "step": []}
    init, prefill, step = llama_fast.LlamaRunner.__init__, llama_fast.LlamaRunner.prefill, llama_fast.LlamaRunner.step

    def spy(name, f):
        def wrapped(*a, **k):
            seen[name].append(torch.get_num_threads())
            return f(*a, **k)
        return wrapped

    monkeypatch.setattr(llama_fast.LlamaRunner, "__init__", spy("runner", init))
    monkeypatch.setattr(llama_fast.LlamaRunner, "prefill", spy("prefill", prefill))
    monkeypatch.setattr(llama_fast.LlamaRunner, "step", spy("step", step))
    monkeypatch.setattr(sampler, "_TUNED", {"state": ThreadState(1, baseline=1e9, every=10**6)})
    tuning.mark_auto(2)
    torch.set_num_threads(2)
    generate(model, prompts, max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    assert seen == {"runner": [1], "prefill": [1], "step": [1] * 5}
    assert torch.get_num_threads() == 2 and sampler._TUNED["state"].threads == 1

    # every lap a measurement; settled on 2 threads at a rate no real step matches (1e-9 s): the first
    # measurement (the second lap, after the first step) is a jump and probes 1 thread
    monkeypatch.setattr(sampler, "TUNE_MIN_S", 0.0)
    sampler._TUNED["state"] = ThreadState(2, baseline=1e-9, every=10**6)
    for v in seen.values():
        v.clear()
    generate(model, prompts, max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    assert seen["prefill"] == [2] and seen["step"][:2] == [2, 1], seen
    assert torch.get_num_threads() == 2
