"""The RL stages (ppo, grpo, rloo) on a tiny model: rewards, smoke runs, learning, resume, DDP."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import metrics

# the real CLI entry point (UserError -> one line, exit 2)
RUNNER = "import sys; from rlhfkit.cli import main; sys.exit(main(sys.argv[1:]))"
# the tests' directory (for reward=test_rl:...) before whatever PYTHONPATH already holds (a checkout's src)
ENV = {"TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)}


def cli(*args, check=True, env=None, timeout=300):
    r = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **ENV, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args[:1])} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def sets(*items):
    return [x for s in items for x in ("--set", s)]


def letter_share(prompts, completions, **_):
    """A learnable reward for a tiny model: the share of a response's characters that are 'a'."""
    return [c.count("a") / max(1, len(c)) for c in completions]


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory, tiny_base):
    d = tmp_path_factory.mktemp("rl")
    with (d / "prompts.jsonl").open("w") as f:
        for i in range(16):
            f.write(json.dumps({"prompt": f"What is {i} + {i + 3}?", "answer": str(2 * i + 3)}) + "\n")
    with (d / "eval.jsonl").open("w") as f:  # the messages form, with a system turn
        for i in range(4):
            f.write(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": f"What is {i} + 20?"}],
                                "answer": str(i + 20)}) + "\n")
    # a reward model: the tiny base with a scalar head (random), saved as rlhfkit reward would
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    rm.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rm.save_pretrained(d / "rm")
    tok.save_pretrained(d / "rm")
    return d


def common(tiny_base, d, out, steps=3):
    return sets(f"model={tiny_base}", f"prompts={d / 'prompts.jsonl'}", f"eval_prompts={d / 'eval.jsonl'}",
                f"out={out}", f"max_steps={steps}", "prompts_per_step=4", "group_size=4", "max_new_tokens=8",
                "micro_batch_size=4", "learning_rate=3e-3", "eval_every=2")


def finite(rows):
    return all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))


def changed_tensors(a: Path, b: Path) -> int:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return sum(not torch.equal(x[k], y[k]) for k in x)


def records(d):
    from rlhfkit.data import read_prompts
    return read_prompts(d / "prompts.jsonl")[:2]


# ----------------------------------------------------------------------------- rewards


def test_reward_specs(rl_data):
    from rlhfkit.files import UserError
    from rlhfkit.rewards.spec import resolve_reward

    recs = records(rl_data)  # answers 3 and 5
    r = resolve_reward("math+format")
    out = r(recs, ["1 + 2 = 3. The answer is 3.", "The answer is 4, I think"])
    # row 0: right and well formed; row 1: wrong (4 != 5) and not ending in "The answer is N."
    assert r.names == ["math", "format"] and out.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    # module:function, batch form (record fields arrive as lists) and per-example form
    assert resolve_reward("rlhfkit.rewards.verifiers:math_reward")(recs, ["3", "5"]).tolist() == [[1.0], [1.0]]
    joke = "Why did the pelican get kicked out of the restaurant? It had a very big bill!"
    assert resolve_reward("rlhfkit.rewards.gold:joke")([{"prompt": "A joke about pelicans."}], [joke]).item() == 1.0
    assert resolve_reward("format", format_regex="^x")(recs, ["xy", "yx"]).flatten().tolist() == [1.0, 0.0]
    with pytest.raises(UserError, match="expected one of math, format"):
        resolve_reward("bogus")
    with pytest.raises(UserError, match="record 1 has no 'answer' field"):
        resolve_reward("math").check([{"prompt": "hi"}], "p.jsonl")


def test_rm_reward_is_mean_minus_k_std(rl_data, tiny_base, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.rewards.rm import RewardScorer
    from rlhfkit.rewards.spec import resolve_reward

    # an ensemble of two members whose random score heads disagree
    ens, tok = tmp_path / "ens", AutoTokenizer.from_pretrained(tiny_base)
    for m in range(2):
        torch.manual_seed(m)
        rm = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
        rm.config.pad_token_id = tok.pad_token_id
        rm.save_pretrained(ens / f"member-{m}")
        tok.save_pretrained(ens / f"member-{m}")
    (ens / "ensemble.json").write_text(json.dumps({"members": ["member-0", "member-1"]}))
    recs, texts = records(rl_data), ["3", "five"]
    got = resolve_reward(f"rm:{ens}", rm_uncertainty_k=2.0)(recs, texts)[:, 0]
    # each member scored on its own: mean and the unbiased std of two values, |a - b| / sqrt(2)
    a, b = (RewardScorer.load(ens / f"member-{m}").score([x["messages"] for x in recs], texts)[0] for m in range(2))
    mean, std = (a + b) / 2, (a - b).abs() / 2 ** 0.5
    assert (std > 1e-3).all()  # the members disagree, so k * std moves the reward
    assert torch.allclose(got, mean - 2.0 * std, atol=1e-5)
    assert torch.allclose(resolve_reward(f"rm:{ens}")(recs, texts)[:, 0], mean, atol=1e-5)  # k = 0: the mean


# ----------------------------------------------------------------------------- stages


@pytest.fixture(scope="module")
def ppo_one(tiny_base, rl_data, tmp_path_factory):
    """PPO with a reward model for the reward and the critic, in 2 generate calls of 8 rows:
    the 1-process reference of the DDP test."""
    out = tmp_path_factory.mktemp("ppo") / "one"
    args = ["ppo", *common(tiny_base, rl_data, out), *sets(
        f"reward=rm:{rl_data / 'rm'}+format", f"value_init=rm:{rl_data / 'rm'}", "generation_batch_size=8",
        "num_minibatches=2", "ppo_epochs=2", "micro_batch_size=2", "missing_eos_penalty=0.5",
        # one thread, as each torchrun process has: a start-up probe may pick 2 on a loaded
        # machine, the matmul sums then round differently and a clip decision can flip
        "threads=1")]
    cli(*args)
    return out, args


def test_ppo_runs(ppo_one, tiny_base):
    out, _ = ppo_one
    m = metrics(out / "metrics.jsonl")
    assert [r["step"] for r in m] == [0, 1, 2, 3]  # step 0: the eval before training
    for k in ("rollout/reward_mean", "rollout/reward_std", "rollout/length_mean", "ppo/approx_kl", "ppo/clipfrac",
              "ppo/vf_loss", "ppo/kl_coef", "policy/kl_ref", "policy/entropy", "reward/rm_mean", "reward/format_mean",
              "time/step_s", "time/rollout_s", "time/train_s", "time/tokens_per_s"):
        assert k in m[1], k
    assert "eval/reward_mean" in m[0] and "eval/reward_mean" in m[2] and "eval/accuracy" not in m[2]
    assert finite(m) and all("/" in k for r in m for k in r if k != "step")  # namespaced
    assert m[1]["policy/kl_ref"] == 0.0 and m[3]["policy/kl_ref"] != 0.0  # ref = the init policy
    assert m[1]["rollout/logprob_gap"] < 1e-4  # the training forward reproduces the sampler
    assert m[3]["ppo/kl_coef"] != m[1]["ppo/kl_coef"]  # adaptive
    assert changed_tensors(tiny_base, out) > 0
    assert (out / "checkpoints").is_dir() and (out / "samples.jsonl").is_file()


def _torchrun(script: Path, *args):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script), *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **ENV, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_ppo_two_processes_match_one(ppo_one, tmp_path):
    out, args = ppo_one
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    two = tmp_path / "two"
    r = _torchrun(script, *[a if not a.startswith("out=") else f"out={two}" for a in args])
    assert r.stdout.count("ppo: done") == 1
    one, two = metrics(out / "metrics.jsonl"), metrics(two / "metrics.jsonl")
    assert len(one) == len(two)
    for a, b in zip(one, two):
        for k in a:
            if not k.startswith("time/"):
                assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (a["step"], k, a[k], b[k])


def _grpo_args(tiny_base, rl_data, out, steps=4):
    return ["grpo", *common(tiny_base, rl_data, out, steps), *sets("reward=math+format", "save_every=2",
                                                                     "loss_reduction=token", "ppo_epochs=2", "threads=1")]


def test_grpo_sigkill_resume_is_exact(tiny_base, rl_data, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    cli(*_grpo_args(tiny_base, rl_data, straight))
    m = metrics(straight / "metrics.jsonl")
    assert {"grpo/approx_kl", "grpo/kl", "grpo/clipfrac", "eval/accuracy", "reward/math_mean"} <= set().union(*m)
    assert finite(m) and (straight / "step-2" / "config.json").is_file()  # an HF dir per save

    args = _grpo_args(tiny_base, rl_data, killed)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **ENV})
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-0000002" / "state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    r = cli(*args)
    assert "resuming at step" in r.stdout
    assert changed_tensors(straight, killed) == 0  # bitwise
    a, b = metrics(straight / "metrics.jsonl"), metrics(killed / "metrics.jsonl")
    assert [x["step"] for x in b] == [0, 1, 2, 3, 4]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]
    assert strip(a) == strip(b)


def _run_inprocess(sets_: list[str], name: str):
    import importlib

    from rlhfkit.config import load_config

    stage = importlib.import_module(f"rlhfkit.stages.{name}")
    stage.run(load_config(stage.Config, sets=sets_))


def test_grpo_learns_a_rewarded_letter(tiny_base, rl_data, tmp_path):
    # the policy is paid for the share of 'a' in its answers: within 15 steps it writes more of them
    out = tmp_path / "learn"
    _run_inprocess([f"model={tiny_base}", f"prompts={rl_data / 'prompts.jsonl'}", f"out={out}",
                          "reward=test_rl:letter_share", "max_steps=15", "prompts_per_step=4", "group_size=8",
                          "max_new_tokens=12", "micro_batch_size=16", "learning_rate=1e-2", "kl_coef=0.0"], "grpo")
    r = [x["rollout/reward_mean"] for x in metrics(out / "metrics.jsonl")]
    first, last = sum(r[:3]) / 3, sum(r[-3:]) / 3
    assert last > first + 0.05 and last > 1.5 * first, r


@pytest.mark.parametrize("advantage", ["rloo", "reinforce_pp"])
def test_rloo_runs_with_lora_and_a_base_reference(advantage, tiny_base, rl_data, tmp_path):
    out = tmp_path / advantage
    _run_inprocess([*[s for s in common(tiny_base, rl_data, out) if s != "--set"], "lora=true", "lora_r=4",
                          f"advantage={advantage}", "learning_rate=3e-2", "reward=math+test_rl:letter_share",
                          "eval_every=0"], "rloo")
    m = metrics(out / "metrics.jsonl")
    assert {"rloo/approx_kl", "rloo/pg_loss", "policy/kl_ref", "eval/accuracy"} <= set(m[-1])
    assert finite(m)
    # the reference is the base with the adapters off: identical before the first update, apart after
    assert m[1]["policy/kl_ref"] == 0.0 and m[-1]["policy/kl_ref"] != 0.0
    before, after = load_file(tiny_base / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after)  # merged: a plain model
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(before["model.norm.weight"], after["model.norm.weight"])  # not a LoRA target


@pytest.mark.parametrize("extra,msg", [
    (["reward=bogus"], "reward 'bogus'"),
    (["prompts_per_step=3", "group_size=3", "generation_batch_size=2"], "must split into generate calls"),
])
def test_bad_config_is_one_line(extra, msg, tiny_base, rl_data, tmp_path):
    r = cli("grpo", *common(tiny_base, rl_data, tmp_path / "x"), *sets(*extra), check=False)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_gold_is_logged_beside_the_proxy_and_never_trains(tiny_base, rl_data, tmp_path):
    from safetensors.torch import load_file

    base = [f"model={tiny_base}", f"prompts={rl_data / 'prompts.jsonl'}", "reward=test_rl:letter_share",
            "max_steps=2", "prompts_per_step=2", "group_size=4", "max_new_tokens=8", "micro_batch_size=8",
            "eval_every=2", f"eval_prompts={rl_data / 'prompts.jsonl'}", "threads=1"]
    _run_inprocess(base + [f"out={tmp_path / 'gold'}", "gold=test_rl:letter_share"], "grpo")
    _run_inprocess(base + [f"out={tmp_path / 'plain'}"], "grpo")
    g, p = metrics(tmp_path / "gold" / "metrics.jsonl"), metrics(tmp_path / "plain" / "metrics.jsonl")
    # gold is the same function as the reward here, so on the same samples it reads the same
    train_rows = [r for r in g if "rollout/reward_mean" in r]
    assert train_rows and all(r["rollout/gold_mean"] == pytest.approx(r["rollout/reward_mean"]) for r in train_rows)
    assert any("eval/gold_mean" in r for r in g) and not any("gold" in k for r in p for k in r)
    a, b = load_file(tmp_path / "gold" / "model.safetensors"), load_file(tmp_path / "plain" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # logging gold changed nothing about training


def _shared_prompt_experience():
    from rlhfkit.rl.rollout import Experience

    # 2 distinct prompts (lengths 4 and 2, so the second is left-padded) x 3 samples each;
    # responses of 7, 4 and 2 tokens (right-padded), in an order that interleaves the groups
    pids = [[5, 6, 7, 8], [9, 10], [5, 6, 7, 8], [9, 10], [5, 6, 7, 8], [9, 10]]
    tokens = torch.randint(4, 300, (6, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(6, 7, dtype=torch.bool)
    mask[1, 4:] = mask[4, 2:] = False
    return Experience(pids, tokens.masked_fill(~mask, 0), mask)


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_forward_equals_the_plain_forward(lora):
    # the prompt runs once per distinct prompt (2 forwards instead of 6) and its KV cache is
    # indexed out to the rows: logits and gradients must equal the plain full-batch forward
    from transformers import LlamaForCausalLM

    from rlhfkit.models import add_lora, tiny_llama_config
    from rlhfkit.rl.rollout import plain_response_logits, response_logits

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=300, d_model=64, n_layers=2, n_heads=4))
    if lora:
        model = add_lora(model, 4, 8)
    inp = _shared_prompt_experience().inputs(range(6))
    m = inp["mask"][..., None]
    grads = []
    for fn in (response_logits, plain_response_logits):
        model.zero_grad()
        logits = fn(model, inp, 0.7)
        (logits * m).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        if fn is response_logits:
            shared = logits.detach()
    assert shared.shape == (6, 7, 300)  # (rows, longest response, vocab)
    assert torch.allclose(shared * m, logits.detach() * m, atol=1e-5)  # ~4e-7 seen: fp32 rounding
    assert all(torch.allclose(a, b, atol=1e-7, rtol=1e-4) for a, b in zip(*grads))


@pytest.mark.parametrize("lora,attention", [(False, "sdpa"), (True, "sdpa"), (False, "eager")])
def test_packed_token_logits_equal_the_padded_forward(lora, attention):
    # token_logits runs only the real response tokens (packed into one row after the distinct
    # prompts' cache, a block mask per row): its logprobs and gradients must equal the padded
    # full-batch forward's on the masked positions, for rows of 7, 4, 2 and 1 tokens
    from transformers import LlamaForCausalLM

    from rlhfkit.losses import token_logprobs
    from rlhfkit.models import add_lora, tiny_llama_config
    from rlhfkit.rl.rollout import plain_response_logits, response_logprobs, row_logprobs, token_logits

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=300, d_model=64, n_layers=2, n_heads=4))
    model.config._attn_implementation = attention
    if lora:
        model = add_lora(model, 4, 8)
        for n, p in model.named_parameters():  # non-zero B, so the adapters' gradients are not all 0
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
    exp = _shared_prompt_experience()
    exp.mask[3, 1:] = False  # a one-token response: only the prompt's last position predicts it
    inp = exp.inputs(range(6))
    m, w = inp["mask"], torch.randn(6, 7, generator=torch.Generator().manual_seed(1))
    packed = token_logits(model, inp, 0.7)
    assert packed.shape == (7 + 4 + 7 + 1 + 2 + 7, 300)  # one row per real response token
    lps, grads = [], []
    for fn in ("packed", "plain"):
        model.zero_grad()
        if fn == "packed":
            lp = row_logprobs(token_logits(model, inp, 0.7), inp)
        else:
            lp = torch.where(m, token_logprobs(plain_response_logits(model, inp, 0.7), inp["input_ids"][:, -7:]), 0.0)
        (lp * w).sum().backward()
        lps.append(lp.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert (lps[0][~m] == 0).all()  # nothing after a row's end
    assert torch.allclose(lps[0], lps[1], atol=1e-5)  # ~5e-7 seen: fp32 rounding
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(*grads))
    with torch.no_grad():
        assert torch.equal(response_logprobs(model, inp, 0.7), lps[0])


def test_frozen_reference_scores_through_the_fast_path_made_once():
    # a frozen Llama on the CPU (the reference) scores through generation/score.py: the same
    # logprobs as the padded HF forward, its reordered weights made once and re-made only when
    # the weights change (load_state_dict), and never for a model that trains
    from transformers import LlamaForCausalLM

    from rlhfkit.generation.score import FrozenScorer
    from rlhfkit.losses import token_logprobs
    from rlhfkit.models import tiny_llama_config
    from rlhfkit.rl.rollout import frozen_scorer, plain_response_logits, response_logprobs

    if not FrozenScorer.fits(LlamaForCausalLM(tiny_llama_config(vocab_size=300, d_model=64, n_layers=2,
                                                                n_heads=4)).requires_grad_(False)):
        pytest.skip("no oneDNN on this CPU build")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=300, d_model=64, n_layers=2, n_heads=4))
    exp = _shared_prompt_experience()
    exp.mask[3, 1:] = False
    inp = exp.inputs(range(6))
    with torch.no_grad():
        assert frozen_scorer(model) is None  # trainable: the HF forward
        model.requires_grad_(False)
        fast = response_logprobs(model, inp, 0.7)
        scorer = frozen_scorer(model)
        assert scorer is not None and frozen_scorer(model) is scorer  # made once
        plain = torch.where(inp["mask"], token_logprobs(plain_response_logits(model, inp, 0.7),
                                                        inp["input_ids"][:, -7:]), 0.0)
        assert torch.allclose(fast, plain, atol=1e-5)  # ~5e-7 seen: fp32 rounding
        other = LlamaForCausalLM(tiny_llama_config(vocab_size=300, d_model=64, n_layers=2, n_heads=4))
        model.load_state_dict(other.state_dict())  # new weights: a new copy
        assert frozen_scorer(model) is not scorer
        moved = torch.where(inp["mask"], token_logprobs(plain_response_logits(model, inp, 0.7),
                                                        inp["input_ids"][:, -7:]), 0.0)
        assert torch.allclose(response_logprobs(model, inp, 0.7), moved, atol=1e-5)
        assert not torch.allclose(moved, plain, atol=1e-3)


def test_grpo_single_update_skips_the_old_forward_and_still_logs_entropy(tiny_base, rl_data, tmp_path):
    # one optimizer step per rollout: the rollout skips the policy's no-grad forward, the loss
    # uses its own detached logprobs (ratio exactly 1, so nothing clips), and entropy and the
    # sampler/trainer gap are logged from the training forward instead
    out = tmp_path / "single"
    _run_inprocess([f"model={tiny_base}", f"prompts={rl_data / 'prompts.jsonl'}", f"out={out}",
                    "reward=test_rl:letter_share", "max_steps=2", "prompts_per_step=2", "group_size=4",
                    "max_new_tokens=8", "micro_batch_size=4", "learning_rate=1e-3", "eval_every=0"], "grpo")
    for row in metrics(out / "metrics.jsonl"):
        assert row["grpo/clipfrac"] == 0.0 and abs(row["grpo/approx_kl"]) < 1e-6  # ratio == 1
        assert row["policy/entropy"] > 0.1  # a tiny random model is far from deterministic
        assert row["rollout/logprob_gap"] < 1e-4  # sampler vs training forward (~1e-7 typical)


# ----------------------------------------------------------------------------- the guard's hook


class StopAt:
    """A guard as the loop sees one: records every call, logs guard/evals (its state: how many
    evals it has seen, so a resume that lost the state would log the wrong count) and stops the
    run at `stop_step`."""

    def __init__(self, stop_step: int | None = None):
        self.stop_step, self.evals, self.calls, self.loaded = stop_step, 0, [], None

    def on_eval(self, step, records, samples, step_metrics):
        self.evals += 1
        self.calls.append({"step": step, "prompts": [r["prompt"] for r in records], "samples": samples,
                           "metrics": dict(step_metrics)})
        return {"guard/evals": float(self.evals)}, step == self.stop_step

    def state_dict(self) -> dict:
        return {"evals": self.evals}

    def load_state_dict(self, d: dict) -> None:
        self.loaded, self.evals = dict(d), d["evals"]


def _guarded(tiny_base, rl_data, out, guard, steps):
    from rlhfkit.config import load_config
    from rlhfkit.stages import grpo

    sets_ = [f"model={tiny_base}", f"prompts={rl_data / 'prompts.jsonl'}", f"eval_prompts={rl_data / 'eval.jsonl'}",
             f"out={out}", "reward=test_rl:letter_share", f"max_steps={steps}", "prompts_per_step=2",
             "group_size=2", "max_new_tokens=6", "micro_batch_size=4", "eval_every=1", "learning_rate=1e-2",
             "threads=1"]

    def make_guard(policy, tokenizer, is_main):
        # built once the policy exists: a real guard saves the policy it would ship
        guard.built_with = (type(policy).__name__, tokenizer.pad_token, is_main)
        return guard
    grpo.run(load_config(grpo.Config, sets=sets_), make_guard=make_guard)
    return metrics(out / "metrics.jsonl"), [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_guard_is_called_at_every_eval_and_its_stop_ends_the_run(tiny_base, rl_data, tmp_path):
    out, guard = tmp_path / "stopped", StopAt(stop_step=2)
    rows, samples = _guarded(tiny_base, rl_data, out, guard, steps=4)
    # called at step 0 (the starting policy) and at every eval (eval_every=1) until it said stop
    assert [c["step"] for c in guard.calls] == [0, 1, 2]
    assert guard.built_with == ("LlamaForCausalLM", "<|pad|>", True)
    assert [r["step"] for r in rows] == [0, 1, 2] and [r["guard/evals"] for r in rows] == [1.0, 2.0, 3.0]
    prompts = [f"What is {i} + 20?" for i in range(4)]  # eval.jsonl's 4 records, in order
    for c in guard.calls:
        assert c["prompts"] == prompts and [s["prompt"] for s in c["samples"]] == prompts  # aligned
        assert all(s["step"] == c["step"] and isinstance(s["response"], str) for s in c["samples"])
    # the samples it saw are samples.jsonl's lines, every eval's, the same prompts each time
    assert samples == [s for c in guard.calls for s in c["samples"]] and len(samples) == 3 * 4
    # step metrics so far: eval/ only before training; the rollout's and the KL's afterwards
    assert "eval/reward_mean" in guard.calls[0]["metrics"] and "rollout/reward_mean" not in guard.calls[0]["metrics"]
    assert {"rollout/reward_mean", "policy/kl_ref", "eval/reward_mean"} <= set(guard.calls[2]["metrics"])
    # stopped after step 2 of 4: saved as a last step is (the model, a checkpoint with the guard's state)
    assert (out / "model.safetensors").is_file()
    state = torch.load(out / "checkpoints" / "step-0000002" / "state.pt", weights_only=False)
    assert state["extra"]["guard"] == {"evals": 3} and state["extra"]["stopped"] is True
    # the same command again does not train past the stop: it restores the guard and ends
    again = StopAt(stop_step=2)
    rows2, _ = _guarded(tiny_base, rl_data, out, again, steps=4)
    assert again.loaded == {"evals": 3} and again.calls == [] and [r["step"] for r in rows2] == [0, 1, 2]


def test_guard_state_survives_a_resume(tiny_base, rl_data, tmp_path):
    straight = StopAt()
    rows, samples = _guarded(tiny_base, rl_data, tmp_path / "straight", straight, steps=3)
    _guarded(tiny_base, rl_data, tmp_path / "resumed", StopAt(), steps=2)  # max_steps may grow on resume
    resumed = StopAt()
    rows_r, samples_r = _guarded(tiny_base, rl_data, tmp_path / "resumed", resumed, steps=3)
    assert resumed.loaded == {"evals": 3}  # evals 0, 1, 2 before the stop
    assert [c["step"] for c in resumed.calls] == [3] and resumed.evals == straight.evals == 4
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rs]  # noqa: E731
    assert strip(rows_r) == strip(rows) and samples_r == samples


GUARD_SCRIPT = """
import json, os, sys
from rlhfkit.config import load_config
from rlhfkit.stages import grpo

class Seen:  # a guard that only keeps what it was shown
    samples = []
    def on_eval(self, step, records, samples, step_metrics):
        self.samples += samples
        return {}, False
    def state_dict(self):
        return {}
    def load_state_dict(self, d):
        pass

guard, sets_ = Seen(), sys.argv[1:]
grpo.run(load_config(grpo.Config, sets=sets_), make_guard=lambda **_: guard)
out = [s[4:] for s in sets_ if s.startswith("out=")][0]
with open(os.path.join(out, f"seen-{os.environ.get('RANK', '0')}.json"), "w") as f:
    json.dump(guard.samples, f)
import torch.distributed as dist
if dist.is_initialized():  # as the CLI does: a process group left to exit can abort in gloo's threads
    dist.destroy_process_group()
"""


def test_guard_sees_every_eval_sample_in_record_order_on_every_rank(tiny_base, rl_data, tmp_path):
    # 4 eval prompts in generate calls of 2: on 2 processes rank 0 samples records 0-1 and rank 1
    # records 2-3; every rank's guard must see all 4, in record order, as samples.jsonl holds them
    script = tmp_path / "guarded.py"
    script.write_text(GUARD_SCRIPT)
    args = lambda out: [f"model={tiny_base}", f"prompts={rl_data / 'prompts.jsonl'}",  # noqa: E731
                        f"eval_prompts={rl_data / 'eval.jsonl'}", f"out={out}", "reward=test_rl:letter_share",
                        "max_steps=1", "prompts_per_step=2", "group_size=2", "generation_batch_size=2",
                        "max_new_tokens=6", "micro_batch_size=2"]
    _torchrun(script, *args(tmp_path / "two"))
    subprocess.run([sys.executable, str(script), *args(tmp_path / "one")], check=True, timeout=300,
                   env={**os.environ, **ENV, "OMP_NUM_THREADS": "1"}, capture_output=True)
    seen = [json.loads((tmp_path / "two" / f"seen-{r}.json").read_text()) for r in (0, 1)]
    logged = [json.loads(x) for x in (tmp_path / "two" / "samples.jsonl").read_text().splitlines()]
    assert seen[0] == seen[1] == logged and len(logged) == 2 * 4  # evals at steps 0 and 1
    assert [s["prompt"] for s in logged] == [f"What is {i} + 20?" for i in range(4)] * 2
    one = json.loads((tmp_path / "one" / "seen-0.json").read_text())
    assert [(s["prompt"], s["response"]) for s in one] == [(s["prompt"], s["response"]) for s in logged]


# ----------------------------------------------------------------------------- int8 rollouts


@pytest.mark.parametrize("stage,correction", [("grpo", "tis"), ("rloo", "mis")])
def test_int8_rollouts_with_a_correction(stage, correction, tiny_base, rl_data, tmp_path):
    # grpo (one optimizer step: the old logprobs are the training forward's) and rloo (the
    # rollout's no-grad forward): sampled from int8 copies re-quantised every step, the loss
    # weighted; the mismatch and the re-quantisation time are logged
    out = tmp_path / stage
    _run_inprocess([*[s for s in common(tiny_base, rl_data, out, steps=2) if s != "--set"], "eval_every=0",
                    "reward=test_rl:letter_share", "rollout_quant=int8", f"is_correction={correction}",
                    "is_cap=1.5", "threads=1"], stage)
    rows = [r for r in metrics(out / "metrics.jsonl") if r["step"] > 0]  # step 0: the first eval
    assert len(rows) == 2 and finite(rows)
    for r in rows:
        assert r["time/quantize_s"] > 0 and r["time/step_s"] >= r["time/quantize_s"] + r["time/rollout_s"]
        assert 1e-4 < r["rollout/logprob_gap"] < 1.0  # int8 is not the trainer's fp32 (~1e-7 when it is)
        assert 0.0 <= r["rollout/is_capped_frac"] <= 1.0 and r["rollout/is_weight_mean"] > 0
    # step 1: policy == reference, so the trainer's KL to it is 0 (the int8 sampler's is not)
    assert abs(rows[0]["policy/kl_ref"]) < 1e-5
    assert changed_tensors(tiny_base, out) > 0


def test_int8_needs_a_known_mode(tiny_base, rl_data, tmp_path):
    r = cli("grpo", *common(tiny_base, rl_data, tmp_path / "x"), *sets("rollout_quant=fp8"), check=False)
    assert r.returncode == 2 and "rollout_quant must be one of none, int8" in r.stderr, r.stderr[-2000:]
    r = cli("grpo", *common(tiny_base, rl_data, tmp_path / "y"), *sets("is_correction=is"), check=False)
    assert r.returncode == 2 and "is_correction must be one of none, tis, mis" in r.stderr, r.stderr[-2000:]
