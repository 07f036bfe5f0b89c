"""Smoke runs of the foundation stages through the CLI, as a user runs them."""

import json
import subprocess
import sys
import time

import pytest
import torch

from conftest import metrics, rlhfkit


def test_help_is_fast_and_lists_stages():
    t = time.perf_counter()
    r = rlhfkit("--help")
    # the interpreter start is most of it; the budget is for heavy imports that must not happen
    assert time.perf_counter() - t < 1.0
    for stage in ("world", "tokenizer", "pretrain", "sft", "sample", "chat", "models"):
        assert f"  {stage} " in r.stdout
    assert "pretrain" in rlhfkit("pretrain", "--help").stdout and "block_size" in rlhfkit("pretrain", "--help").stdout


@pytest.mark.parametrize("args,msg", [
    (["pretrain", "--set", "bogus=1"], "unknown key 'bogus'"),
    (["sft", "--set", "model=/no/such/dir", "--set", "data=x.jsonl"], "/no/such/dir: model not found"),
    (["tokenizer", "--set", "files=/no/such.txt"], "/no/such.txt: file not found"),
    (["sample", "/no/such/model", "--prompt", "hi"], "/no/such/model: model not found"),
    (["nosuchcommand"], "unknown command"),
])
def test_bad_input_is_one_line_exit_2(args, msg):
    r = rlhfkit(*args, check=False)
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_pretrain_sft_sample_end_to_end(tiny_data, tiny_tokenizer, tiny_base, tmp_path):
    m = metrics(tiny_base / "metrics.jsonl")
    assert [r["step"] for r in m] == list(range(1, 21))
    assert all(k in m[-1] for k in ("train/loss", "train/lr", "time/step_s", "time/tokens_per_s", "eval/loss"))
    assert m[-1]["train/loss"] < m[0]["train/loss"] - 0.5  # it learns (ln 320 = 5.77 at the start)
    assert (tiny_base / "config.toml").is_file() and "max_steps = 20" in (tiny_base / "config.toml").read_text()

    sft = tmp_path / "sft"
    rlhfkit("sft", "--set", f"model={tiny_base}", "--set", f"data={tiny_data['sft']}", "--set", f"out={sft}",
            "--set", "max_steps=6", "--set", "batch_size=8", "--set", "micro_batch_size=4", "--set", "log_every=1")
    ms = metrics(sft / "metrics.jsonl")
    assert len(ms) == 6 and all(torch.isfinite(torch.tensor(r["train/loss"])) for r in ms)

    from safetensors.torch import load_file

    before, after = load_file(tiny_base / "model.safetensors"), load_file(sft / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # full fine-tuning moved every tensor

    r = rlhfkit("sample", str(sft), "--prompt", "What is 2 + 3?", "-n", "3", "--max-new-tokens", "12", "--json")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 3 and all(isinstance(x["response"], str) for x in lines)
    raw = rlhfkit("sample", str(tiny_base), "--raw", "--prompt", "The cat", "-n", "1", "--temperature", "0")
    assert raw.stdout.startswith("--- sample 1/1")


def test_lora_sft_saves_a_merged_plain_model(tiny_data, tiny_base, tmp_path):
    out = tmp_path / "lora"
    rlhfkit("sft", "--set", f"model={tiny_base}", "--set", f"data={tiny_data['sft']}", "--set", f"out={out}",
            "--set", "max_steps=3", "--set", "batch_size=8", "--set", "micro_batch_size=8", "--set", "lora=true",
            "--set", "lora_r=4", "--set", "learning_rate=1e-2")
    from safetensors.torch import load_file

    before, after = load_file(tiny_base / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after)  # same keys: no lora_A/lora_B left, no peft needed to load
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(before["model.norm.weight"], after["model.norm.weight"])  # not a LoRA target


def test_output_loads_with_plain_transformers(tiny_base):
    # a fresh interpreter that never imports rlhfkit: what a user of the trained model has
    code = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(tiny_base)!r})
model = AutoModelForCausalLM.from_pretrained({str(tiny_base)!r})
ids = tok.apply_chat_template([{{"role": "user", "content": "hi"}}], add_generation_prompt=True, return_tensors="pt")
ids = ids["input_ids"] if hasattr(ids, "keys") else ids
out = model.generate(ids, max_new_tokens=4, do_sample=False)
assert "rlhfkit" not in sys.modules
print(out.shape[1] > ids.shape[1])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("True")


def test_chat_in_a_terminal(tiny_base):
    r = rlhfkit("chat", str(tiny_base), "--max-new-tokens", "5", input="hello\n/reset\nagain\n/quit\n")
    assert r.stdout.count("bot> ") == 2


@pytest.mark.parametrize("lora", [False, True])
def test_sft_head_on_targets_only_equals_the_full_loss(lora):
    # SFT runs the LM head on target positions only (TargetLM); loss and gradients must equal
    # the full-logits lm_loss. 2 right-padded rows of 9 and 6 tokens, targets: 3 + 2 tokens
    import torch
    from transformers import LlamaForCausalLM

    from rlhfkit.losses import lm_loss
    from rlhfkit.models import add_lora, tiny_llama_config
    from rlhfkit.stages.sft import TargetLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=300, d_model=64, n_layers=2, n_heads=4))
    model = add_lora(model, 4, 8) if lora else model
    ids = torch.randint(4, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    attn = torch.ones(2, 9, dtype=torch.bool)
    attn[1, 6:] = False
    loss_mask = torch.zeros(2, 9, dtype=torch.bool)
    loss_mask[0, 5:8] = loss_mask[1, 3:5] = True
    params = [p for p in model.parameters() if p.requires_grad]

    assert TargetLM.supports(model)
    logits, targets = TargetLM(model)(ids, attn, loss_mask)
    assert logits.shape == (5, 300) and targets.tolist() == ids[0, 5:8].tolist() + ids[1, 3:5].tolist()
    fast = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / 5.0
    g_fast = torch.autograd.grad(fast, params)
    full = lm_loss(model(input_ids=ids, attention_mask=attn).logits, ids, loss_mask, normalizer=5.0)[0]
    g_full = torch.autograd.grad(full, params)
    assert abs(float(fast) - float(full)) < 1e-6 * float(full)
    assert all(torch.allclose(a, b, atol=1e-7, rtol=1e-4) for a, b in zip(g_fast, g_full))
