"""`rlhfkit report RUN`: the page from a run directory, every figure a PNG that decodes, text escaped,
missing parts saying so.

The run is built from real parts where they are cheap (the world at scale 0.05, the tiny
tokenizer and pre-training run of conftest, a real feedback store with rankings and arena votes, the reward stage's own
ranking_metrics for eval.json) and, for the long stages, from files with the fields their stages
document (metrics.jsonl keys, guard.json, samples.jsonl, eval.json) and hand-chosen values.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import rlhfkit

SCRIPT = "<script>alert(1)</script> the the the"
# the PPO run: eval every 10 steps; the gold peaks at 20, where the guard ships; it stops at 30
PPO_EVAL = {0: (0.10, 0.45, None), 10: (0.80, 0.52, 0.5), 20: (1.50, 0.55, 1.6), 30: (2.60, 0.41, 4.0)}
PROMPTS = ["Tell me a joke about pelicans & owls.", "A joke about cats, please.", "Any jokes about frogs?"]


def _toml(path: Path, stage: str, **keys) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.toml").write_text(f"# rlhfkit {stage}\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_run(run: Path, tokenizer: Path, base: Path) -> Path:
    """A run directory with every stage the report reads (see the module docstring)."""
    import torch

    from rlhfkit.feedback.store import FeedbackStore
    from rlhfkit.stages.eval_reward import ranking_metrics

    rlhfkit("world", str(run / "world"), "--seed", "0", "--scale", "0.05")
    shutil.copytree(tokenizer, run / "tokenizer")
    shutil.copytree(base, run / "base", ignore=shutil.ignore_patterns("checkpoints"))
    _toml(run / "sft", "sft", model=str(run / "base"))
    _jsonl(run / "sft" / "metrics.jsonl", [{"step": s, "train/loss": 3.0 - 0.1 * s, **({"eval/loss": 3.1 - 0.09 * s}
                                            if s % 5 == 0 else {})} for s in range(1, 21)])

    # rankings: 2 annotators on 2 tasks (agree on t1, reverse on t2: agreement (1 + 0) / 2 = 0.5), arena votes
    with FeedbackStore.for_run(run / "feedback") as store:
        alice, bob = (store.authenticate(store.add_annotator(n))["id"] for n in ("alice", "bob"))
        for t in range(2):
            pid = store.add_prompt(PROMPTS[t])
            ids = [store.add_response(pid, f"joke {t}.{i}", model=str(run / "sft")) for i in range(3)]
            task = store.create_task(pid, ids, overlap=2)
            store.submit_ranking(task, alice, ids, source="simulated")
            store.submit_ranking(task, bob, ids if t == 0 else ids[::-1], source="simulated")
        voter = store.authenticate(store.add_annotator("carol"))["id"]
        for v in range(4):  # ppo/best wins 3 of 4 against sft
            pid = store.add_prompt(f"arena prompt {v}")
            a = store.add_response(pid, f"rl answer {v}", model=str(run / "ppo" / "best"))
            b = store.add_response(pid, f"sft answer {v}", model=str(run / "sft"))
            task = store.create_task(pid, [a, b], kind="arena")
            store.submit_ranking(task, voter, [a, b] if v < 3 else [b, a], source="arena")

    _toml(run / "rm", "reward", model=str(run / "sft"), data=str(run / "feedback"))
    scores = [torch.tensor([1.0, 0.2, -0.5]), torch.tensor([0.3, 0.6, -1.0]), torch.tensor([2.0, -0.2, 0.1])]
    m, details = ranking_metrics(scores)
    (run / "rm" / "eval.json").write_text(json.dumps({"metrics": m, **details}))
    _jsonl(run / "rm" / "metrics.jsonl", [{"step": s, "train/loss": 1.0 - 0.05 * s, "train/accuracy": 0.5 + 0.02 * s}
                                          for s in range(1, 11)] + [{"step": 10, **m}])

    _toml(run / "ppo", "ppo", reward=f"rm:{run / 'rm'}", gold="rlhfkit.rewards.gold:joke")
    rows = [{"step": 0, "eval/reward_mean": 0.10, "eval/gold_mean": 0.45, "eval/length_mean": 20.0}]
    for s in range(1, 31):
        r = {"step": s, "rollout/reward_mean": 0.1 + 0.08 * s, "rollout/gold_mean": 0.45 + 0.01 * s - 0.0004 * s * s,
             "policy/kl_ref": 0.004 * s * s, "policy/entropy": 2.0 - 0.03 * s, "rollout/length_mean": 20.0 + s}
        if s in PPO_EVAL:
            proxy, gold, kl = PPO_EVAL[s]
            r.update({"eval/reward_mean": proxy, "eval/gold_mean": gold, "policy/kl_ref": kl,
                      "eval/length_mean": 20.0 + s, "guard/win_rate": 0.6 if s < 30 else 0.3, "guard/agreement": 0.7})
        rows.append(r)
    _jsonl(run / "ppo" / "metrics.jsonl", rows)
    (run / "ppo" / "guard.json").write_text(json.dumps({
        "mode": "on", "shipped_step": 20, "stop_step": 30, "reason": "win_rate: 0.30 < best 0.60 - noise",
        "labels_used": 24, "labels_total": 24, "criterion": "best spot-check win rate"}))
    _jsonl(run / "ppo" / "samples.jsonl", [
        {"step": s, "prompt": p, "response": SCRIPT if (s, i) == (20, 1) else f"step {s} answer {i}",
         "reward": PPO_EVAL[s][0], "gold": PPO_EVAL[s][1]}
        for s in PPO_EVAL for i, p in enumerate(PROMPTS)])

    _toml(run / "grpo", "grpo", reward="math")
    acc = {0: 0.2, 10: 0.3, 20: 0.35}
    _jsonl(run / "grpo" / "metrics.jsonl", [{"step": 0, "eval/accuracy": 0.2, "eval/reward_mean": 0.2}] + [
        {"step": s, "rollout/reward_mean": 0.2 + 0.01 * s, "policy/kl_ref": 0.01 * s, "policy/entropy": 1.5,
         "rollout/length_mean": 12.0, **({"eval/accuracy": acc[s]} if s in acc else {})} for s in range(1, 21)])
    _jsonl(run / "grpo" / "samples.jsonl", [{"step": s, "prompt": "What is 2 + 3?", "response": f"{4 + s // 20}",
                                              "reward": float(s == 20)} for s in (0, 10, 20)])

    _toml(run / "dpo", "dpo", model=str(run / "sft"), beta=0.1)
    _jsonl(run / "dpo" / "metrics.jsonl", [{"step": s, "dpo/loss": 0.69 - 0.02 * s, "dpo/reward_accuracy": 0.5 + 0.02 * s,
                                            **({"eval/loss": 0.7 - 0.01 * s, "eval/reward_accuracy": 0.5 + 0.01 * s}
                                               if s % 5 == 0 else {})} for s in range(1, 11)])

    models = [str(run / "sft"), str(run / "ppo" / "best"), str(run / "dpo")]
    _toml(run / "eval" / "jokes", "eval", models=models, baseline=models[0], judge="rlhfkit.rewards.gold:joke",
          prompts=str(run / "world" / "prompts_jokes_eval.jsonl"))
    metrics = [(0.5, [0.5, 0.5], 0.45, 0.30, 0.60, 0.20), (0.62, [0.55, 0.70], 0.55, 0.20, 0.40, 0.45),
               (0.58, [0.50, 0.66], 0.52, 0.25, 0.50, 0.30)]
    (run / "eval" / "jokes" / "eval.json").write_text(json.dumps({
        m: {"win_rate": w, "win_rate_ci": ci, "judge_mean": j, "distinct_1": d1, "distinct_2": d2, "self_bleu": sb,
            "length_mean": 20.0} for m, (w, ci, j, d1, d2, sb) in zip(models, metrics)}))
    _jsonl(run / "eval" / "jokes" / "samples.jsonl", [
        {"model": m, "prompt": p, "sample": 0, "response": f"{Path(m).name} says {i}", "score": 0.5}
        for m in models for i, p in enumerate(PROMPTS)])
    return run


_FULL: dict[str, Path] = {}


def full_report(tmp_path_factory, tokenizer: Path, base: Path) -> Path:
    """RUN/report.html of build_run's run, written once per session (the browser test reads it too)."""
    from rlhfkit.report import write_report

    if "page" not in _FULL:
        _FULL["page"] = write_report(build_run(tmp_path_factory.mktemp("report") / "run", tokenizer, base))
    return _FULL["page"]


@pytest.fixture
def full_page(tmp_path_factory, tiny_tokenizer, tiny_base) -> Path:
    return full_report(tmp_path_factory, tiny_tokenizer, tiny_base)


def images(page: str) -> list[bytes]:
    return [base64.b64decode(d) for d in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_of_a_full_run(full_page):
    from PIL import Image

    page = full_page.read_text()
    assert full_page.name == "report.html" and (full_page.parent / "ppo" / "guard.json").is_file()
    # pretrain, sft, rm, ppo curves, ppo gold-vs-KL, grpo curves, grpo accuracy, dpo, eval win rates,
    # eval diversity, arena: 11 figures, each a PNG that decodes to a real picture
    pngs = images(page)
    assert len(pngs) == 11 and page.count("<img") == 11
    for png in pngs:
        im = Image.open(io.BytesIO(png))
        im.load()
        assert im.format == "PNG" and im.width > 300 and im.height > 200
    # self-contained: no script, no URL outside the data URIs, text from files escaped
    rest = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', "", page)
    assert "<script" not in page and "http" not in rest and "src=" not in rest and "url(" not in rest
    assert "&lt;script&gt;alert(1)&lt;/script&gt; the the the" in page
    assert "Tell me a joke about pelicans &amp; owls." in page
    assert 'class="notrun"' not in page and "card missing" not in page  # every part has its inputs
    # before (step 0) and after: the shipped step 20 from guard.json, not the last eval (30)
    assert "before (step 0)" in page and "after (step 20, shipped)" in page
    assert "step 0 answer 0" in page and "step 20 answer 0" in page and "step 30 answer 0" not in page
    assert "win_rate: 0.30 &lt; best 0.60 - noise" in page  # the guard's reason, escaped
    # the pipeline's key figures, from the files above
    assert "<dt>gold</dt><dd>0.45 → 0.41</dd>" in page and "<dt>shipped gold</dt><dd>0.55</dd>" in page
    assert "<dt>accuracy</dt><dd>0.2 → 0.35</dd>" in page
    assert "<dt>corpus</dt><dd>417 docs</dd>" in page  # the world's README at scale 0.05
    assert "<dt>agreement</dt><dd>0.5</dd>" in page  # (1 + 0) / 2 over the two overlapping tasks
    assert "0.62 [0.55, 0.7]" in page  # ppo/best's win rate and its interval in the eval table
    assert "ppo/best (4 games)" not in page and "<td>ppo/best</td>" in page  # arena table, run-relative names


def test_missing_parts_say_not_run(tmp_path, tiny_base):
    from rlhfkit.report import write_report

    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(empty).read_text()
    assert images(page) == [] and not (empty / "feedback.db").exists()  # the report creates no store
    for line in ["not run: pre-training (no rlhfkit pretrain output in RUN)", "not run: rankings",
                 "not run: reward model", "not run: RLHF", "not run: verifiable RL", "not run: DPO",
                 "not run: evaluation (win rates, diversity)", "not run: arena ratings"]:
        assert line in page, line

    # only pre-training, its metrics.jsonl cut mid-line by a kill: the curve from what is readable
    run = tmp_path / "run"
    shutil.copytree(tiny_base, run / "base", ignore=shutil.ignore_patterns("checkpoints"))
    with (run / "base" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 21, "train/lo')
    page = write_report(run, tmp_path / "elsewhere.html").read_text()
    assert len(images(page)) == 1 and not (run / "report.html").exists()
    assert "metrics.jsonl: 1 unreadable line(s) skipped" in page
    assert "not run: SFT (no rlhfkit sft output in RUN)" in page and "not run: RLHF" in page
    # world, tokenizer, sft, rankings, rm, ppo, grpo, dpo, eval (rloo is PPO's alternative: never "missing")
    assert page.count('<div class="card missing">') == 9


def test_cli(tmp_path, tiny_base):
    r = rlhfkit("report", str(tmp_path / "nope"), check=False)
    assert r.returncode == 2 and r.stderr.strip() == f"rlhfkit report: error: {tmp_path / 'nope'}: no such run directory"
    assert not (tmp_path / "nope").exists()
    shutil.copytree(tiny_base, tmp_path / "run" / "base", ignore=shutil.ignore_patterns("checkpoints"))
    r = rlhfkit("report", str(tmp_path / "run"))
    assert r.stdout == f"report: 1 figures -> {tmp_path / 'run' / 'report.html'}\n"
    assert (tmp_path / "run" / "report.html").is_file() and not list((tmp_path / "run").glob(".report.html.*"))
    assert "report " in rlhfkit("--help").stdout



def test_broken_side_files_become_notes(tmp_path):
    """A file a stage left half-written or malformed costs its own part, never the page."""
    from rlhfkit.report import write_report

    run = tmp_path / "run"
    _toml(run / "ppo", "ppo", reward="rm:x")
    _jsonl(run / "ppo" / "metrics.jsonl", [{"step": 1, "rollout/reward_mean": 0.5, "policy/kl_ref": 0.1}])
    (run / "ppo" / "guard.json").write_text('{"shipped_step": 1')  # cut mid-write
    (run / "ppo" / "samples.jsonl").write_text('{"step": 0, "prompt": "p", "response": "r"}\nnot json\n')
    _toml(run / "rm", "reward")
    (run / "rm" / "config.toml").write_text("# rlhfkit reward\nmodel = \n")  # not TOML
    (run / "rm" / "eval.json").write_text("[1, 2")
    _toml(run / "eval" / "x", "eval")
    (run / "eval" / "x" / "eval.json").write_text("[]")  # valid JSON, not {model: metrics}
    page = write_report(run).read_text()
    assert len(images(page)) == 1  # the PPO curves from its one readable metrics line
    assert "ppo: guard.json: unreadable (Expecting" in page and "ppo: samples.jsonl: 1 unreadable line(s) skipped" in page
    assert "not run: the guard (no readable ppo/guard.json)" in page and "after (step 0)" in page
    assert "rm: config.toml: unreadable" in page and "rm: eval.json: unreadable" in page
    assert "not run: reward-model plots" in page and "not run: evaluation (no eval/x/eval.json)" in page
