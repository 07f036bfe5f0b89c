"""Recorded losses (torchtune-style regression tests): each training stage runs 3 steps on a
fixed tiny model built in code, and every logged loss must equal the value recorded here
(tolerance 1e-5). A refactor that changes any number fails loudly; a deliberate change of the
math re-records (`RLHFKIT_RECORD=1 pytest tests/test_recorded_losses.py -s` prints the values).

The fixture is fixed bit for bit: a byte-level tokenizer with no merges (vocab = 256 bytes +
4 specials, so no BPE tie-breaking is involved), a LlamaForCausalLM from a seeded init, one
thread. The reward stage is recorded in tests/test_reward.py.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import metrics

RECORD = os.environ.get("RLHFKIT_RECORD") == "1"


def char_codes(prompts, completions, **_):
    """A dense reward that a random tiny model's byte soup still varies on: its code points mod 97."""
    return [sum(map(ord, c)) % 97 / 97 for c in completions]


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    import torch
    from transformers import LlamaForCausalLM

    from rlhfkit.models import save_model, tiny_llama_config
    from rlhfkit.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("recorded")
    texts = [f"The {a} sat by the river. {i} plus {i + 2} is {2 * i + 2}." for i, a in
             enumerate(["cat", "dog", "owl", "frog"] * 10)]
    (d / "corpus.txt").write_text("\n\n".join(texts) + "\n")
    with (d / "sft.jsonl").open("w") as f:
        for i in range(8):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                                             {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n")
    with (d / "prompts.jsonl").open("w") as f:
        for i in range(8):
            f.write(json.dumps({"prompt": f"Say a{i}"}) + "\n")
    with (d / "eval.jsonl").open("w") as f:
        for i in range(3):
            f.write(json.dumps({"prompt": f"Tell me {i}"}) + "\n")
    tok = train_tokenizer(texts, vocab_size=260)  # 256 bytes + 4 specials: no merges
    tok.save_pretrained(d / "tokenizer")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2,
                                               bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id))
    save_model(model, tok, d / "model")
    return d


def _run(stage, sets):
    from rlhfkit.config import load_config

    stage.run(load_config(stage.Config, sets=sets))


RL_COMMON = ["max_steps=3", "prompts_per_step=2", "group_size=4", "max_new_tokens=6", "micro_batch_size=4",
             "learning_rate=1e-2", "reward=test_recorded_losses:char_codes", "threads=1", "eval_every=2"]


def _rl_sets(d, out):
    return [f"model={d / 'model'}", f"prompts={d / 'prompts.jsonl'}", f"eval_prompts={d / 'eval.jsonl'}",
            f"out={out}", *RL_COMMON]


def _pretrain(d, out):
    from rlhfkit.stages import pretrain

    _run(pretrain, [f"data={d / 'corpus.txt'}", f"tokenizer={d / 'tokenizer'}", f"out={out}", "max_steps=3",
                    "d_model=32", "n_layers=2", "n_heads=2", "block_size=32", "batch_size=4", "micro_batch_size=2",
                    "warmup_steps=1", "eval_every=0", "log_every=1", "learning_rate=3e-3", "threads=1"])


def _sft(d, out):
    from rlhfkit.stages import sft

    _run(sft, [f"model={d / 'model'}", f"data={d / 'sft.jsonl'}", f"out={out}", "max_steps=3", "batch_size=4",
               "micro_batch_size=2", "eval_fraction=0.25", "eval_every=0", "log_every=1", "warmup_steps=1",
               "learning_rate=1e-2", "threads=1"])


def _ppo(d, out):
    from rlhfkit.stages import ppo

    _run(ppo, _rl_sets(d, out) + ["group_size=2", "ppo_epochs=2", "num_minibatches=2", "micro_batch_size=2",
                                  "missing_eos_penalty=0.1"])


def _grpo(d, out):  # one optimizer step per rollout: the path that skips the old-logprob forward
    from rlhfkit.stages import grpo

    _run(grpo, _rl_sets(d, out) + ["kl_coef=0.1"])


def _grpo_epochs(d, out):  # two passes: the ratio moves away from 1, old logprobs from the rollout
    from rlhfkit.stages import grpo

    _run(grpo, _rl_sets(d, out) + ["ppo_epochs=2", "loss_reduction=token", "micro_batch_size=2"])


def _rloo(d, out):
    from rlhfkit.stages import rloo

    _run(rloo, _rl_sets(d, out) + ["ppo_epochs=2", "kl_coef=0.2", "kl_controller=adaptive", "kl_target=0.01"])


STAGES = {"pretrain": _pretrain, "sft": _sft, "ppo": _ppo, "grpo": _grpo, "grpo_epochs": _grpo_epochs,
          "rloo": _rloo}
# the losses of each stage, and for RL what feeds them (reward, KL to the reference, eval)
KEYS = {
    "pretrain": ["train/loss", "train/grad_norm"],
    "sft": ["train/loss", "train/grad_norm"],
    "ppo": ["train/loss", "ppo/pg_loss", "ppo/vf_loss", "ppo/kl_coef", "rollout/reward_mean", "policy/kl_ref",
            "eval/reward_mean"],
    "grpo": ["train/loss", "grpo/pg_loss", "grpo/kl", "rollout/reward_mean", "policy/kl_ref", "eval/reward_mean"],
    "grpo_epochs": ["train/loss", "grpo/pg_loss", "grpo/kl", "rollout/reward_mean", "policy/kl_ref",
                    "eval/reward_mean"],
    "rloo": ["train/loss", "rloo/pg_loss", "rloo/kl_coef", "rollout/reward_mean", "policy/kl_ref", "eval/reward_mean"],
}

# recorded from the code before the RL-loop refactor (issue 10), step -> key -> value
RECORDED: dict[str, dict[int, dict[str, float]]] = {
    'pretrain': {
        1: {'train/loss': 5.553532, 'train/grad_norm': 1.548603},
        2: {'train/loss': 5.358416, 'train/grad_norm': 1.762679},
        3: {'train/loss': 5.196718, 'train/grad_norm': 1.569266},
    },
    'sft': {
        1: {'train/loss': 5.622805, 'train/grad_norm': 2.476938},
        2: {'train/loss': 5.066403, 'train/grad_norm': 1.997012},
        3: {'train/loss': 4.660222, 'train/grad_norm': 1.932253},
    },
    'ppo': {
        0: {'eval/reward_mean': 0.6185567},
        1: {'train/loss': -0.03290277, 'ppo/pg_loss': -0.03762741, 'ppo/vf_loss': 0.04724641, 'ppo/kl_coef': 0.049996, 'rollout/reward_mean': 0.3427835, 'policy/kl_ref': 0.0},
        2: {'train/loss': -0.02426393, 'ppo/pg_loss': -0.02735422, 'ppo/vf_loss': 0.03090301, 'ppo/kl_coef': 0.049992, 'rollout/reward_mean': 0.2809278, 'policy/kl_ref': 0.04201388, 'eval/reward_mean': 0.6185567},
        3: {'train/loss': -0.07005016, 'ppo/pg_loss': -0.07428665, 'ppo/vf_loss': 0.04236493, 'ppo/kl_coef': 0.049988, 'rollout/reward_mean': 0.5103093, 'policy/kl_ref': -0.323137, 'eval/reward_mean': 0.5876288},
    },
    'grpo': {
        0: {'eval/reward_mean': 0.6185567},
        1: {'train/loss': 7.450581e-09, 'grpo/pg_loss': 7.450581e-09, 'grpo/kl': 0.0, 'rollout/reward_mean': 0.4729381, 'policy/kl_ref': 0.0},
        2: {'train/loss': 0.0006546527, 'grpo/pg_loss': 5.215406e-08, 'grpo/kl': 0.006515567, 'rollout/reward_mean': 0.4033505, 'policy/kl_ref': -0.03679991, 'eval/reward_mean': 0.6185567},
        3: {'train/loss': 0.001261756, 'grpo/pg_loss': -4.470348e-08, 'grpo/kl': 0.01261797, 'rollout/reward_mean': 0.4523196, 'policy/kl_ref': 0.01585263, 'eval/reward_mean': 0.5876288},
    },
    'grpo_epochs': {
        0: {'eval/reward_mean': 0.6185567},
        1: {'train/loss': -0.02567342, 'grpo/pg_loss': -0.02653249, 'grpo/kl': 0.02191213, 'rollout/reward_mean': 0.4729381, 'policy/kl_ref': 0.0},
        2: {'train/loss': -0.05672803, 'grpo/pg_loss': -0.05755488, 'grpo/kl': 0.0200469, 'rollout/reward_mean': 0.4548969, 'policy/kl_ref': 0.032529, 'eval/reward_mean': 0.4707904},
        3: {'train/loss': -0.03348828, 'grpo/pg_loss': -0.0344675, 'grpo/kl': 0.02448047, 'rollout/reward_mean': 0.2693299, 'policy/kl_ref': -0.0277859, 'eval/reward_mean': 0.5876288},
    },
    'rloo': {
        0: {'eval/reward_mean': 0.6185567},
        1: {'train/loss': -0.01056851, 'rloo/pg_loss': -0.01056851, 'rloo/kl_coef': 0.199968, 'rollout/reward_mean': 0.4729381, 'policy/kl_ref': 0.0},
        2: {'train/loss': -0.02106294, 'rloo/pg_loss': -0.02106294, 'rloo/kl_coef': 0.2, 'rollout/reward_mean': 0.4523196, 'policy/kl_ref': 0.055035, 'eval/reward_mean': 0.6185567},
        3: {'train/loss': -0.0131979, 'rloo/pg_loss': -0.0131979, 'rloo/kl_coef': 0.199968, 'rollout/reward_mean': 0.2306701, 'policy/kl_ref': 0.002685249, 'eval/reward_mean': 0.6494845},
    },
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_recorded_losses(stage, fixed, tmp_path):
    out = tmp_path / stage
    STAGES[stage](fixed, out)
    got = {r["step"]: {k: r[k] for k in KEYS[stage] if k in r} for r in metrics(out / "metrics.jsonl")}
    got = {s: v for s, v in got.items() if v}
    if RECORD:
        print(f"\n    {stage!r}: {got!r},")
    if RECORD:
        return
    expected = RECORDED[stage]
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    for step, row in expected.items():
        assert sorted(got[step]) == sorted(row), (step, sorted(got[step]), sorted(row))
        for k, v in row.items():
            assert abs(got[step][k] - v) <= 1e-5 * max(1.0, abs(v)), (stage, step, k, got[step][k], v)
