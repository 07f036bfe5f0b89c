"""Reward-model learning curve on the embedded world: held-out accuracy vs labelled rankings.

    python benchmarks/reward_learning_curve.py --work /tmp/rm-curve --sizes 100 300 1000

Data: the world's joke prompts; K = 4 responses per prompt from the world's joke maker
(`rlhfkit.world.sft_joke`: ~40% good jokes, the rest with one or two flaws), ranked by
`SimulatedLabeler(gold=rlhfkit.rewards.gold:joke, temperature=0.1)`. Held out: 300 rankings on
prompts from the world's eval phrasings (never in training; a third about unseen animals).
Models: `pretrained` = a tiny Llama pre-trained on the world corpus (`--pretrain-steps`) with a
BPE tokenizer trained on it; `random` = the same architecture, random weights.
Reported per size: accuracy against the labeler's held-out rankings (noisy, like people) and
against the gold order itself (pairs with distinct gold scores), plus the labeler's own
agreement with gold (the ceiling a perfect imitation of the labeler would reach on gold).
Writes RESULTS.json and learning_curve.png into --work.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch

from rlhfkit.config import load_config
from rlhfkit.feedback.labelers import SimulatedLabeler
from rlhfkit.rewards.gold import joke
from rlhfkit.world import ANIMAL, JOKE_ASKS, JOKE_ASKS_EVAL, joke_prompts, sft_joke, write_world


def make_rankings(prompts: list[dict], k: int, seed: int, labeler_name: str) -> list[dict]:
    rng = random.Random(seed)
    labeler = SimulatedLabeler(joke, temperature=0.1, seed=seed, name=labeler_name)
    out = []
    for p in prompts:
        responses = list(dict.fromkeys(sft_joke(rng, ANIMAL[p["topic"]])[0] for _ in range(k)))
        if len(responses) < 2:
            continue
        j = labeler.rank(p["prompt"], responses)
        out.append({"prompt": p["prompt"], "responses": [responses[i] for i in j.order]})
    return out


def gold_pairs(rankings: list[dict]) -> tuple[list, list, list]:
    """(prompt, better, worse) for every pair with distinct gold scores."""
    ps, a, b = [], [], []
    for r in rankings:
        g = [joke(r["prompt"], t) for t in r["responses"]]
        for i in range(len(g)):
            for j in range(len(g)):
                if g[i] > g[j] + 1e-9:
                    ps.append(r["prompt"]), a.append(r["responses"][i]), b.append(r["responses"][j])
    return ps, a, b


def labeler_vs_gold(rankings: list[dict]) -> float:
    ok = n = 0
    for r in rankings:
        g = [joke(r["prompt"], t) for t in r["responses"]]
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                if abs(g[i] - g[j]) > 1e-9:
                    ok, n = ok + (g[i] > g[j]), n + 1
    return ok / n


def base_models(work: Path, steps: int) -> dict[str, Path]:
    from rlhfkit import tokenizer as tk
    from rlhfkit.stages import pretrain

    world = work / "world"
    if not (world / "corpus.txt").is_file():
        write_world(world, seed=0, scale=0.1)
    tok = work / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        tk.run(load_config(tk.Config, sets=[f"files={world}/corpus.txt,{world}/sft.jsonl", f"out={tok}", "vocab_size=1024"]))
    arch = ["d_model=128", "n_layers=4", "n_heads=4", "block_size=128"]
    out = {}
    pre = work / "base-pretrained"
    if not (pre / "model.safetensors").is_file():
        t = time.time()
        pretrain.run(load_config(pretrain.Config, sets=[f"data={world}/corpus.txt", f"tokenizer={tok}", f"out={pre}",
                                                        f"max_steps={steps}", "batch_size=16", "micro_batch_size=16",
                                                        "learning_rate=3e-3", "warmup_steps=20", "eval_every=0",
                                                        "save_every=0", "log_every=20", *arch, *THREADS]))
        print(f"pretrain: {steps} steps in {time.time() - t:.0f} s")
    out["pretrained"] = pre
    rnd = work / "base-random"
    if not (rnd / "model.safetensors").is_file():  # same config, fresh random weights
        from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

        torch.manual_seed(0)
        LlamaForCausalLM(AutoConfig.from_pretrained(pre)).save_pretrained(rnd)
        AutoTokenizer.from_pretrained(pre).save_pretrained(rnd)
    out["random"] = rnd
    return out


THREADS: list[str] = []  # --threads as a stage key, set in main()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/rm-curve")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--inits", nargs="+", default=["pretrained", "random"])
    ap.add_argument("--heldout", type=int, default=300, help="held-out rankings (eval phrasings, 1/3 unseen animals)")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    # a fixed thread count for every stage (the `threads` key): comparable timings on a shared machine
    THREADS[:] = [f"threads={a.threads}"]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    bases = base_models(work, a.pretrain_steps)
    # the world's prompt makers (as in prompts_jokes*.jsonl, but as many as needed)
    train_prompts = joke_prompts(random.Random("train"), max(a.sizes), JOKE_ASKS)
    eval_prompts = joke_prompts(random.Random("eval"), a.heldout, JOKE_ASKS_EVAL, p_held_out=1 / 3)
    train = make_rankings(train_prompts, 4, seed=1, labeler_name="sim-train")
    held = make_rankings(eval_prompts, 4, seed=2, labeler_name="sim-eval")
    for name, rs in (("train.jsonl", train), ("heldout.jsonl", held)):
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in rs))
    ceiling = labeler_vs_gold(held)
    print(f"{len(train)} training rankings, {len(held)} held out; labeler agrees with gold on {ceiling:.3f} of pairs")

    from rlhfkit.rewards.rm import RewardScorer
    from rlhfkit.stages import reward

    results = {"labeler_vs_gold": ceiling, "runs": []}
    if (work / "RESULTS.json").is_file():  # keep earlier runs of other (init, size) pairs
        results["runs"] = json.loads((work / "RESULTS.json").read_text())["runs"]
    gp, ga, gb = gold_pairs(held)
    for init in a.inits:
        for n in a.sizes:
            data = work / f"train-{n}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in train[:n]))
            out = work / f"rm-{init}-{n}"
            shutil.rmtree(out, ignore_errors=True)  # a fresh run: the stage would resume from old checkpoints
            t = time.time()
            reward.run(load_config(reward.Config, sets=[
                f"model={bases[init]}", f"data={data}", f"eval_data={work / 'heldout.jsonl'}", f"out={out}",
                f"epochs={a.epochs}", "batch_size=16", "micro_batch_size=8", "learning_rate=1e-3", "warmup_steps=10",
                "max_seq_len=128", "eval_every=0", "save_every=0", "log_every=10", *THREADS]))
            secs = time.time() - t
            m = json.loads((out / "eval.json").read_text())["metrics"]
            mean, _ = RewardScorer.load(out).score(gp + gp, ga + gb)
            gold_acc = float((mean[:len(gp)] > mean[len(gp):]).float().mean())
            row = {"init": init, "rankings": n, "acc_vs_labeler": m["rm/accuracy"], "acc_vs_gold": gold_acc,
                   "top1": m["rm/top1_accuracy"], "ece": m["rm/ece"], "seconds": round(secs, 1)}
            results["runs"] = [r for r in results["runs"] if (r["init"], r["rankings"]) != (init, n)] + [row]
            results["runs"].sort(key=lambda r: (r["init"], r["rankings"]))
            print(json.dumps(row))
            (work / "RESULTS.json").write_text(json.dumps(results, indent=1))  # after each run: partial results too
            plot(results, work / "learning_curve.png")
    print(f"-> {work / 'RESULTS.json'}, {work / 'learning_curve.png'}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for init in sorted({r["init"] for r in results["runs"]}):
        rows = [r for r in results["runs"] if r["init"] == init]
        ax.plot([r["rankings"] for r in rows], [r["acc_vs_labeler"] for r in rows], "o-", label=f"{init}: vs labeler")
        ax.plot([r["rankings"] for r in rows], [r["acc_vs_gold"] for r in rows], "s--", label=f"{init}: vs gold")
    ax.axhline(results["labeler_vs_gold"], color="grey", lw=1, ls=":", label="labeler vs gold")
    ax.set(xscale="log", xlabel="labelled rankings (K=4)", ylabel="held-out pairwise accuracy",
           title="reward model learning curve (embedded world)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
