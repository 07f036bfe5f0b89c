"""DPO: the losses by hand and against TRL's DPOTrainer, the shared-prompt forward against the
plain one, pairs from every input, learning on an easy preference, the reference cache, LoRA,
plain-transformers loading and SIGKILL-exact resume.

The preference is learnable by a tiny random model in a few steps: for a prompt about an
animal, the chosen response is a sentence about that animal, the rejected one a string of
numbers."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.config import load_config
from rlhfkit.files import UserError
from rlhfkit.losses import DPO_LOSSES, dpo_ipo_loss, dpo_sigmoid_loss
from rlhfkit.stages import dpo

from conftest import metrics, rlhfkit

ANIMALS = ["cat", "dog", "pelican", "owl", "frog", "horse"]
FAST = ["batch_size=8", "micro_batch_size=4", "learning_rate=1e-2", "warmup_steps=1", "log_every=1", "eval_every=0",
        "max_seq_len=64", "max_prompt_len=32", "save_every=0", "threads=1", "beta=0.5"]
LN2 = math.log(2)

# one intra-op thread for the whole module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def _rankings(n: int, seed: int = 0, k: int = 2) -> list[dict]:
    r = random.Random(seed)
    out = []
    for i in range(n):  # prompts are distinct (the store keeps one of two identical rankings)
        a, x = r.choice(ANIMALS), r.randint(0, 30)
        three = [f"The {a} was happy.", f"The {a} sat.", f"{x} plus {x} is {x} {x} {x}"]
        two = [three[0], three[2]]
        out.append({"prompt": f"Tell me about the {a}, number {i}.", "responses": three if k == 3 else two})
    return out


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in records))
    return path


@pytest.fixture(scope="module")
def lm(tiny_lm) -> Path:
    return tiny_lm


def _run(lm: Path, out: Path, data, *sets: str) -> Path:
    dpo.run(load_config(dpo.Config, sets=[f"model={lm}", f"data={data}", f"out={out}", *FAST, *sets]))
    return out


# ------------------------------------------------------------------------------ losses


def test_sigmoid_loss_hand_computed():
    c, r = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0])
    loss, m = dpo_sigmoid_loss(c, r, beta=0.5)
    # pair 1: beta * delta = 0.5 -> -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077
    # pair 2: beta * delta = -1 -> log(1 + e^1) = 1.313262; mean 0.893670
    assert loss.item() == pytest.approx(0.893670, abs=1e-6)
    assert m["dpo/reward_accuracy"] == 0.5  # only pair 1 has its chosen reward above the rejected
    assert m["dpo/chosen_reward"] == pytest.approx(-0.25)  # beta * mean(1, -2)
    assert m["dpo/rejected_reward"] == 0.0 and m["dpo/margin"] == pytest.approx(-0.25)
    # identical policy and reference: every logratio is 0 and the loss is log 2
    assert dpo_sigmoid_loss(torch.zeros(3), torch.zeros(3), 0.1)[0].item() == pytest.approx(LN2)
    # the gradient raises the chosen logratio and lowers the rejected one: d/dc = -beta * sigmoid(-beta delta) / B
    c = torch.tensor([0.0], requires_grad=True)
    dpo_sigmoid_loss(c, torch.tensor([0.0]), 0.5)[0].backward()
    assert c.grad.item() == pytest.approx(-0.25)  # -0.5 * sigmoid(0) = -0.25


def test_ipo_loss_hand_computed():
    c, r = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
    # beta = 0.25 -> target margin 1 / (2 beta) = 2; on sums: h = (2, 0) -> ((0)^2 + (-2)^2) / 2 = 2
    assert dpo_ipo_loss(c, r, 0.25)[0].item() == pytest.approx(2.0)
    # per token (TRL's form): lengths (2, 4) and (1, 2): h = (3/2 - 1/1, 1/4 - 1/2) = (0.5, -0.25)
    # -> ((0.5 - 2)^2 + (-0.25 - 2)^2) / 2 = (2.25 + 5.0625) / 2 = 3.65625
    loss, m = dpo_ipo_loss(c, r, 0.25, torch.tensor([2, 4]), torch.tensor([1, 2]))
    assert loss.item() == pytest.approx(3.65625)
    assert m["dpo/margin"] == pytest.approx(0.25 * 1.0)  # rewards stay beta * summed logratios: mean(2, 0) / 4
    assert set(DPO_LOSSES) == {"sigmoid", "ipo"}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", ["sigmoid", "ipo"])
def test_losses_match_trl_dpo_trainer(name):
    """TRL's DPOTrainer._compute_loss on a stand-in model whose per-token log-probs are a table.

    _compute_loss reads only the model's outputs, the trainer's loss settings and metric buffers,
    so it is called unbound on a namespace of those (building a DPOTrainer needs a tokenizer and a
    dataset that play no part in the loss); reference log-probs are passed precomputed, as our
    stage does. Completions have different lengths, which IPO's per-token averaging must see.
    """
    trl = pytest.importorskip("trl")
    from accelerate import Accelerator

    class TableLM(torch.nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = torch.nn.Parameter(table.clone())

        def forward(self, input_ids, attention_mask=None, labels=None, **_):
            keep = labels[:, 1:] != -100  # TRL's fused head returns 0 where labels are -100
            lp = torch.where(keep, self.table, torch.zeros(()))
            zero = torch.zeros_like(lp).detach()
            return SimpleNamespace(log_probs=lp, entropy=zero, mean_logits=zero, is_top1=keep & False)

    torch.manual_seed(0)
    B, T, beta = 4, 6, 0.3
    lengths = torch.tensor([1, 3, 5, 2, 4, 5, 1, 3])  # completion tokens: 4 chosen rows, then 4 rejected
    completion = torch.arange(T)[None, :] >= T - lengths[:, None]
    table, ref = torch.randn(2 * B, T - 1), torch.randn(2 * B)
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), beta=beta, loss_type=[name], report_to=[], use_cpu=True,
                         bf16=False)
    model = TableLM(table)
    fake_self = SimpleNamespace(
        model=model, accelerator=Accelerator(cpu=True), ld_alpha=args.ld_alpha, precompute_ref_logps=True,
        aux_loss_enabled=False, f_divergence_type=args.f_divergence_type, loss_types=args.loss_type,
        loss_weights=[1.0], beta=beta, use_weighting=False, label_smoothing=0.0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.arange(2 * B * T).view(2 * B, T), "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
              "completion_mask": completion.long(), "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:]}
    theirs = trl.DPOTrainer._compute_loss(fake_self, model, inputs, False)
    theirs.backward()

    mine = table.clone().requires_grad_(True)
    logratios = torch.where(completion[:, 1:], mine, 0.0).sum(1) - ref
    ours, m = DPO_LOSSES[name](logratios[:B], logratios[B:], beta, lengths[:B], lengths[B:])
    ours.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    torch.testing.assert_close(mine.grad, model.table.grad)
    logged = fake_self._metrics["train"]
    for ours_key, trl_key in [("dpo/reward_accuracy", "rewards/accuracies"), ("dpo/margin", "rewards/margins"),
                              ("dpo/chosen_reward", "rewards/chosen"), ("dpo/rejected_reward", "rewards/rejected")]:
        assert m[ours_key] == pytest.approx(logged[trl_key][-1], abs=1e-6), ours_key


# ------------------------------------------------------------------------------ the pair forward


def test_shared_prompt_forward_equals_the_plain_one(lm):
    """PairLM (prompt once, its KV shared, head on response tokens) = the plain forward: values and grads."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(lm)
    r = random.Random(0)
    seq = lambda n: [r.randrange(5, 300) for _ in range(n)]
    shared = seq(7)
    pairs = [(seq(5), seq(3), seq(6)), (shared, seq(1), seq(4)), (seq(9), seq(2), seq(2)), (shared, seq(5), seq(1))]
    b = dpo.collate_pairs(pairs, pad_id=0)
    assert b["prompt_ids"].shape == (3, 9) and b["prompt_index"].tolist() == [0, 1, 2, 1] * 2  # one shared prompt
    assert b["lengths"].tolist() == [3, 1, 2, 5, 6, 4, 2, 1]  # chosen rows, then rejected rows

    fast = dpo.PairLM(model)
    assert fast.fast
    a = fast(**b)
    ga = torch.autograd.grad(a.sum(), list(model.parameters()))
    p = dpo.plain_pair_logprobs(model, **{k: v for k, v in b.items() if k != "lengths"})
    gp = torch.autograd.grad(p.sum(), list(model.parameters()))
    torch.testing.assert_close(a, p, atol=1e-5, rtol=0)
    for x, y in zip(ga, gp):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    # and against the definition, one row at a time: log p(response | prompt), summed
    prompt, chosen, _ = pairs[2]
    ids = torch.tensor([prompt + chosen])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].log_softmax(-1)
    assert a[2].item() == pytest.approx(float(logits[torch.arange(len(chosen)), chosen].sum()), abs=1e-4)


# ------------------------------------------------------------------------------ data


def test_pairs_from_each_input(lm, tmp_path):
    from rlhfkit.feedback.store import FeedbackStore

    rs = _rankings(6, k=3)
    (tmp_path / "run").mkdir()
    with FeedbackStore.for_run(tmp_path / "run") as store:
        store.import_rankings(rs + [{"prompt": "Which?", "responses": ["The cat sat.", "The dog sat."], "tie": True}])
    hh = _write(tmp_path / "hh.jsonl", [{"chosen": f"\n\nHuman: {x['prompt']}\n\nAssistant: {x['responses'][0]}",
                                          "rejected": f"\n\nHuman: {x['prompt']}\n\nAssistant: {x['responses'][2]}"}
                                         for x in rs])
    trl = _write(tmp_path / "trl.jsonl", [{"prompt": x["prompt"], "chosen": x["responses"][0],
                                            "rejected": x["responses"][1]} for x in rs])
    cfg = lambda data: load_config(dpo.Config, sets=[f"data={data}", "eval_fraction=0"])
    store_pairs, _ = dpo.load_pairs(cfg(tmp_path / "run"))
    assert len(store_pairs) == 6 * 3  # each 3-way ranking gives 3 pairs; the tie none
    assert {(p["chosen"], p["rejected"]) for p in store_pairs if "number" in p["messages"][0]["content"]} >= {
        (rs[0]["responses"][0], rs[0]["responses"][2]), (rs[0]["responses"][1], rs[0]["responses"][2])}
    assert [p["rejected"] for p in dpo.load_pairs(cfg(hh))[0]] == [x["responses"][2] for x in rs]
    assert [p["chosen"] for p in dpo.load_pairs(cfg(trl))[0]] == [x["responses"][0] for x in rs]
    train, held = dpo.load_pairs(load_config(dpo.Config, sets=[f"data={tmp_path / 'run'}", "eval_fraction=0.5"]))
    held_prompts = {json.dumps(p["messages"]) for p in held}
    assert held and not held_prompts & {json.dumps(p["messages"]) for p in train}  # held-out prompts are unseen


def test_encode_pair_splits_at_the_assistant_header(lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm)
    msgs = [{"role": "user", "content": "Tell me about the owl."}]
    p, c, r = dpo.encode_pair(tok, msgs, "The owl was happy.", "1 2 3", 256, 512)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "The owl was happy."}], tokenize=False)
    assert tok.decode(p + c) == full  # prompt + response is the whole templated conversation
    assert "The owl was happy." in tok.decode(c) and "owl" not in tok.decode(r)
    p2, c2, _ = dpo.encode_pair(tok, msgs, "The owl was happy." * 20, "1", 4, 10)
    assert p2 == p[-4:] and len(c2) == 6  # the prompt keeps its end; the response what is left of max_seq_len


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def trained(lm, tmp_path_factory) -> dict:
    """One run shared by several tests: 16 steps on 60 prompts, 20% of them held out."""
    d = tmp_path_factory.mktemp("dpo")
    data = _write(d / "pairs.jsonl", _rankings(60))
    out = _run(lm, d / "dpo", data, "max_steps=16", "eval_fraction=0.2", "eval_every=8", "learning_rate=3e-4")
    return {"out": out, "data": data, "dir": d}


def test_learns_the_preference_and_changes_parameters(trained, lm):
    from safetensors.torch import load_file

    out = trained["out"]
    logs = metrics(out / "metrics.jsonl")
    train = [m for m in logs if "dpo/loss" in m]
    assert [m["step"] for m in train] == list(range(1, 17))
    assert all(math.isfinite(m["dpo/loss"]) for m in train)
    # step 1: the policy is the reference, every logratio ~0, the loss log 2 and no reward yet
    assert train[0]["dpo/loss"] == pytest.approx(LN2, abs=1e-4) and abs(train[0]["dpo/margin"]) < 1e-4
    acc = [m["dpo/reward_accuracy"] for m in train]
    # step 1 ties every pair at reward 0 (a tie counts as wrong); this preference is then learnt in
    # one step (0.69 -> 0.22 in 16 steps at this LR, measured), and the margin keeps growing
    assert acc[0] == 0.0 and min(acc[1:]) == 1.0, acc
    margins = [m["dpo/margin"] for m in train]
    assert 0 < margins[1] < margins[3] < margins[7] < margins[15], margins
    assert sum(m["dpo/loss"] for m in train[-4:]) / 4 < 0.5 * LN2
    assert train[-1]["dpo/chosen_reward"] > train[-1]["dpo/rejected_reward"]
    ev = [m for m in logs if "eval/loss" in m]
    assert [m["step"] for m in ev] == [8, 16] and ev[-1]["eval/reward_accuracy"] >= 0.9, ev
    assert 0 < ev[0]["eval/margin"] < ev[1]["eval/margin"]  # held-out pairs: unseen prompts
    assert {"eval/margin", "eval/chosen_reward", "eval/rejected_reward"} <= set(ev[-1])
    saved = json.loads((out / "eval.json").read_text())
    assert saved["step"] == 16 and saved["pairs"] == 12 and saved["eval/loss"] == ev[-1]["eval/loss"]  # 12 of 60
    base, now = load_file(lm / "model.safetensors"), load_file(out / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[q], now[q])
    assert (out / "config.toml").read_text().startswith("# rlhfkit dpo")


def test_output_loads_in_plain_transformers_and_prefers_chosen(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(trained["out"]).eval(), AutoTokenizer.from_pretrained(trained["out"])

    def logp(prompt, response):
        msgs = [{"role": "user", "content": prompt}]
        p = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        full = tok(tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False),
                   add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = model(input_ids=torch.tensor([full])).logits[0, :-1].log_softmax(-1)
        return float(lp[torch.arange(len(p) - 1, len(full) - 1), full[len(p):]].sum())

    assert logp("Tell me about the frog, number 3.", "The frog was happy.") > logp(
        "Tell me about the frog, number 3.", "3 plus 3 is 3 3 3")


def test_reference_cache_is_reused_and_keyed_by_data(trained, lm, capsys):
    d = trained["dir"]
    cache = trained["out"] / "ref_logprobs"
    assert len(list(cache.glob("*.pt"))) == 1
    # a new run on the same model and pairs, sharing the cache: skips the reference pass
    _run(lm, d / "again", trained["data"], "max_steps=1", "eval_fraction=0.2", f"ref_cache={cache}")
    assert "reference log-probs from the cache" in capsys.readouterr().out
    # other pairs: another key, computed afresh
    _run(lm, d / "other", _write(d / "other.jsonl", _rankings(20, seed=5)), "max_steps=1", f"ref_cache={cache}")
    assert "reference log-probs computed" in capsys.readouterr().out
    assert len(list(cache.glob("*.pt"))) == 2


def test_ipo_and_lora(lm, tmp_path):
    from safetensors.torch import load_file

    data = _write(tmp_path / "pairs.jsonl", _rankings(40))
    out = _run(lm, tmp_path / "ipo", data, "max_steps=6", "loss=ipo", "lora=true", "lora_r=4", "eval_fraction=0")
    train = [m for m in metrics(out / "metrics.jsonl") if "dpo/loss" in m]
    # step 1: adapters start as the identity (B = 0), so the policy is the reference and h = 0:
    # the IPO loss is (0 - 1 / (2 beta))^2 = (1 / (2 * 0.5))^2 = 1
    assert train[0]["dpo/loss"] == pytest.approx(1.0, abs=1e-4)
    assert train[-1]["dpo/loss"] < train[0]["dpo/loss"] and all(math.isfinite(m["dpo/loss"]) for m in train)
    saved = load_file(out / "model.safetensors")
    assert not any("lora" in k for k in saved)  # merged: a plain model
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(load_file(lm / "model.safetensors")[q], saved[q])


@pytest.mark.parametrize("sets, message", [(["loss=kto"], "unknown loss"), (["beta=0"], "beta must be > 0"),
                                           (["max_prompt_len=64"], "max_prompt_len"),
                                           (["batch_size=6"], "multiple of micro_batch_size")])
def test_errors_for_people(lm, tmp_path, sets, message):
    data = _write(tmp_path / "pairs.jsonl", _rankings(4))
    with pytest.raises(UserError, match=message):
        _run(lm, tmp_path / "x", data, *sets)
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_sigkill_then_rerun_is_bitwise_identical(lm, tmp_path):
    from safetensors.torch import load_file

    data = _write(tmp_path / "pairs.jsonl", _rankings(40))
    args = lambda out: ["dpo", *[x for s in [f"model={lm}", f"data={data}", f"out={out}", "max_steps=30", *FAST,
                                             "save_every=3", "eval_fraction=0.2", "eval_every=4"]
                                 for x in ("--set", s)]]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    rlhfkit(*args(straight))
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", *args(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-0000006" / "state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # mid-step, maybe mid-save
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()

    r = rlhfkit(*args(killed))
    assert "resuming at step" in r.stdout and "reference log-probs from the cache" in r.stdout
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise, not approximately
    ma, mb = metrics(straight / "metrics.jsonl"), metrics(killed / "metrics.jsonl")
    assert [m["step"] for m in mb] == [m["step"] for m in ma] == list(range(1, 31))  # none duplicated or missing
    assert [m["dpo/loss"] for m in ma] == [m["dpo/loss"] for m in mb]
    assert [m.get("eval/loss") for m in ma] == [m.get("eval/loss") for m in mb]


def test_two_processes_match_one(lm, tmp_path):
    """torchrun x 2: each rank its half of the batch and of the reference pass; the same run."""
    data = _write(tmp_path / "pairs.jsonl", _rankings(40))
    args = lambda out: ["dpo", *[x for s in [f"model={lm}", f"data={data}", f"out={out}", *FAST, "max_steps=4",
                                             "micro_batch_size=2", "eval_every=2", "learning_rate=1e-3"]
                                 for x in ("--set", s)]]
    rlhfkit(*args(tmp_path / "one"))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "rlhfkit", *args(tmp_path / "two")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("dpo: done") == 1  # rank 0 alone prints and logs
    one, two = metrics(tmp_path / "one" / "metrics.jsonl"), metrics(tmp_path / "two" / "metrics.jsonl")
    assert [m["step"] for m in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for k in ("dpo/loss", "dpo/margin", "dpo/reward_accuracy", "eval/loss", "eval/margin"):
            assert abs(a.get(k, 0) - b.get(k, 0)) < 1e-5, (a["step"], k, a.get(k), b.get(k))
    assert "eval/loss" in two[1] and "eval/loss" in two[3]


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "oasst-en-100-trees.jsonl").is_file(), reason="../shared/data is absent")
def test_real_files_give_their_pairs():
    """HH-RLHF: one pair a record; OASST: every K-way sibling ranking gives K(K-1)/2."""
    from rlhfkit.feedback.formats import read_preferences

    hh = SHARED / "hh-rlhf-harmless-base-test.jsonl.gz"
    train, held = dpo.load_pairs(load_config(dpo.Config, sets=[f"data={hh}", "eval_fraction=0.1"]))
    assert len(train) + len(held) == 2312 and 150 < len(held) < 300  # a tenth of the prompts (some repeat)
    oasst = SHARED / "oasst-en-100-trees.jsonl"
    ks = [len(r["responses"]) for r in read_preferences(oasst)]
    train, held = dpo.load_pairs(load_config(dpo.Config, sets=[f"data={oasst}", "eval_fraction=0"]))
    assert len(train) == sum(k * (k - 1) // 2 for k in ks) and not held and max(ks) > 2
