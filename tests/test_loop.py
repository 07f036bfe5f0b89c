"""Adversarial mining (rlhfkit.mining) and the iterated loop (rlhfkit loop) at toy size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit.feedback.store import FeedbackStore
from rlhfkit.mining import mine, task_key


def letters(prompt: str, response: str) -> float:
    """The simulated person of the toy loop: a response scores by its share of 'a's."""
    return response.count("a") / max(1, len(response))


def _rl_dir(d: Path, ensemble_rel=None) -> Path:
    """A finished RL run as the guard leaves it: samples.jsonl at steps 0/5/10, guard.json with two exploits."""
    d.mkdir(parents=True)
    samples = []
    for step, resp in ((0, "start {}"), (5, "hack {}"), (10, "ship {}")):
        for i in range(3):
            samples.append({"step": step, "prompt": f"p{i}", "response": resp.format(i),
                            "reward": {0: 0.0, 5: 2.0 + i, 10: 1.0}[step], "gold": 9.9})
    (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    guard = {"shipped_step": 10, "stop_step": None, "rules": {"disagreement_rise": 2.0},
             "evals": [{"step": 0, "ensemble_std_rel": None if ensemble_rel is None else 1.0},
                       {"step": 5, "ensemble_std_rel": ensemble_rel}, {"step": 10, "ensemble_std_rel": None}],
             "exploits": [{"step": 5, "prompt": "p0", "response": "hack 0", "start_response": "start 0", "margin": 2.0},
                          {"step": 10, "prompt": "p1", "response": "ship 1", "start_response": "start 1",
                           "margin": 1.0}]}
    (d / "guard.json").write_text(json.dumps(guard))
    return d


def test_mining_queues_each_exploit_against_the_start_and_the_shipped_policy_once(tmp_path):
    rl = _rl_dir(tmp_path / "ppo")
    with FeedbackStore.for_run(tmp_path / "fb") as store:
        added = mine(rl, store)
        assert len(added) == 2
        tasks = [store.task(t) for t in added]
        again = mine(rl, store)  # the same guard.json: nothing new
        counts = store.counts()
    assert again == [] and counts["tasks"] == 2 and counts["tasks_by_kind"] == {"rank": 2}
    # p0: the exploit (step 5), the start's and the shipped step 10's response -> K = 3;
    # p1: the exploit is the shipped response itself -> K = 2 (distinct texts only)
    assert tasks[0]["prompt"] == "p0"
    assert sorted(r["text"] for r in tasks[0]["responses"]) == ["hack 0", "ship 0", "start 0"]
    assert tasks[1]["prompt"] == "p1" and sorted(r["text"] for r in tasks[1]["responses"]) == ["ship 1", "start 1"]
    assert tasks[0]["meta"]["mined"] == {"step": 5, "why": "lost spot check", "margin": 2.0}
    assert task_key("p0", ["a", "b"]) == task_key("p0", ["b", "a"]) != task_key("p1", ["a", "b"])


def test_mining_adds_high_disagreement_samples_of_an_ensemble(tmp_path):
    # step 5's disagreement 3.0x the start's > the rule's 2.0x: its samples above the start's mean
    # proxy (0.0) are candidates, strongest first (rewards 4, 3, 2: p2, p1, p0); p0's "hack 0" is
    # already the first spot-check exploit's task, so 2 + 2 tasks
    rl = _rl_dir(tmp_path / "ppo", ensemble_rel=3.0)
    with FeedbackStore.for_run(tmp_path / "fb") as store:
        added = mine(rl, store)
        whys = [store.task(t)["meta"]["mined"]["why"] for t in added]
        prompts = [store.task(t)["prompt"] for t in added]
    assert whys == ["lost spot check"] * 2 + ["ensemble disagreement"] * 2 and prompts == ["p0", "p1", "p2", "p1"]


def test_mining_reads_every_lost_spot_check_in_the_guards_store(tmp_path):
    # guard.json keeps its top exploits only; the guard's store (RL_DIR/feedback.db) has every spot
    # check, asked as the guard asks them (models step-N / step-0 / a kept candidate's, meta guard.step):
    # arena tasks of 2, and rankings of 3 beside the step-5 candidate
    rl = _rl_dir(tmp_path / "ppo")
    with FeedbackStore.for_run(rl) as spot:
        who = spot.annotator("guard-sim", role="simulated")["id"]
        for step, i, ranked in ((5, 2, [0, 5]), (5, 1, [5, 0]), (10, 0, [0, 10]), (10, 2, [5, 0, 10]),
                                (10, 1, [5, 10, 0])):  # eval steps best first
            pid = spot.add_prompt(f"p{i}", {"guard": {"step": step, "eval_index": i}})
            ids = {s: spot.add_response(pid, samples_text(s, i), model=f"step-{s}") for s in ranked}
            task = spot.create_task(pid, sorted(ids.values()), kind="arena" if len(ids) == 2 else "rank")
            spot.submit_ranking(task, who, [ids[s] for s in ranked], source="simulated")
    with FeedbackStore.for_run(tmp_path / "fb") as store:
        added = mine(rl, store)
        got = [(store.task(t)["prompt"], store.task(t)["meta"]["mined"]["margin"]) for t in added]
    # guard.json's two (margins 2.0, 1.0) plus the store's lost ones: p2 at step 5 (reward 4 - start 0 = 4.0),
    # p0 at step 10 (1.0 - 0.0) and p2 at step 10 (below the start in a ranking of 3: 1.0); p1 at step 5 won
    # against the start, and p1 at step 10 ranked below step 5 but above the start: not exploits
    assert got == [("p2", 4.0), ("p0", 2.0), ("p1", 1.0), ("p0", 1.0), ("p2", 1.0)]


def samples_text(step: int, i: int) -> str:
    return {0: "start {}", 5: "hack {}", 10: "ship {}"}[step].format(i)


def test_feedback_mine_cli(tmp_path):
    from conftest import rlhfkit

    rl = _rl_dir(tmp_path / "ppo")
    (tmp_path / "fb").mkdir()
    assert "mined 2 new" in rlhfkit("feedback", "mine", str(rl), "--store", str(tmp_path / "fb")).stdout
    assert "mined 0 new" in rlhfkit("feedback", "mine", str(rl), "--store", str(tmp_path / "fb")).stdout
    r = rlhfkit("feedback", "mine", str(tmp_path), "--store", str(tmp_path / "fb"), check=False)
    assert r.returncode == 2 and "no guard.json" in r.stderr


# ---------------------------------------------------------------- the loop, 2 rounds at toy size

def _loop_config(tmp_path: Path, tiny_base: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Tell me about {i} cats."}) + "\n"
                                             for i in range(8)))
    (d / "eval.jsonl").write_text("".join(json.dumps({"prompt": f"What about {i} dogs?"}) + "\n" for i in range(4)))
    cfg = tmp_path / "loop.toml"
    cfg.write_text(f"""
out = "{tmp_path / 'loop'}"
model = "{tiny_base}"
prompts = "{d / 'prompts.jsonl'}"
prompts_per_round = 4
k = 3
max_new_tokens = 8
rounds = 2
labeler = "test_loop:letters"
gold = "test_loop:letters"

[reward]
epochs = 1
batch_size = 4
micro_batch_size = 4
max_seq_len = 64
eval_fraction = 0.25
save_every = 0

[ppo]
eval_prompts = "{d / 'eval.jsonl'}"
max_steps = 2
eval_every = 1
eval_temperature = 1.0
prompts_per_step = 4
group_size = 2
max_new_tokens = 8
micro_batch_size = 4
learning_rate = 3e-3
guard = "observe"
guard_spot_checks = 4
""")
    return cfg


def test_two_rounds_write_the_table_and_round_2_starts_from_round_1s_best(tiny_base, tmp_path, capsys):
    import tomllib

    from rlhfkit import loop

    cfg_path = _loop_config(tmp_path, tiny_base)
    rows = loop.run(*loop.load(str(cfg_path), []))
    out = tmp_path / "loop"
    saved = json.loads((out / "loop.json").read_text())["rounds"]
    assert saved == rows and [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert set(r) >= {"rankings", "rm_accuracy", "stop_step", "shipped_step", "proxy", "gold", "top_exploit"}
        assert r["stop_step"] is None and r["shipped_step"] in (0, 1, 2)  # observe, 2 steps: no rule fires
        assert 0.0 <= r["rm_accuracy"] <= 1.0 and r["gold"] is not None
    # round 1 trains on its 4 fresh rankings; round 2 on all so far: round 1's 4, round 2's 4 and the
    # exploits round 1 mined (the labeler ranks every open task)
    assert rows[0]["rankings"] == 4 and rows[1]["rankings"] == 8 + rows[0]["exploits_mined"]
    best1 = out / "round-1" / "ppo" / "best"
    assert rows[0]["shipped"] == str(best1) and (best1 / "config.json").is_file()
    ppo2 = tomllib.loads((out / "round-2" / "ppo" / "config.toml").read_text())
    fill2 = tomllib.loads((out / "round-2" / "feedback" / "fill-config.toml").read_text())
    assert ppo2["model"] == fill2["model"] == str(best1)
    assert "rm_acc" in capsys.readouterr().out

    # a rerun skips both finished rounds: nothing is retrained
    stamp = (out / "round-2" / "rm" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert loop.run(*loop.load(str(cfg_path), [])) == rows
    printed = capsys.readouterr().out
    assert printed.count("finished before, skipped") == 2
    assert (out / "round-2" / "rm" / "model.safetensors").stat().st_mtime_ns == stamp


def test_loop_config_errors_are_one_line(tmp_path):
    from rlhfkit import loop
    from rlhfkit.files import UserError

    with pytest.raises(UserError, match="set by the loop"):
        loop.load(None, ["prompts=p.jsonl", "ppo.model=x"])
    with pytest.raises(UserError, match="prompts"):
        loop.load(None, [])
    cfg, tables = loop.load(None, ["prompts=p.jsonl", "ppo.max_steps=3", "rounds=4"])
    assert cfg.rounds == 4 and tables == {"reward": {}, "ppo": {"max_steps": 3}}


def test_the_packaged_demo_loop_recipe_sets_only_loop_and_stage_keys():
    from importlib.resources import files

    from rlhfkit import loop
    from rlhfkit.recipe import _substitute, load_recipe

    path = Path(str(files("rlhfkit") / "recipes" / "demo_loop.toml"))
    _, _, steps, env, _ = load_recipe(path, "runs/x", [])
    args = _substitute(steps["loop"]["args"], env)
    assert args[::2] == ["--set"] * (len(args) // 2)
    cfg, tables = loop.load(None, args[1::2])
    rcfg, pcfg = loop.stage_configs(cfg, tables, 2, "runs/x/loop/round-1/ppo/best")  # as the stages validate them
    assert (cfg.out, cfg.rounds, pcfg.model, pcfg.reward) == ("runs/x/loop", 2, "runs/x/loop/round-1/ppo/best",
                                                              "rm:runs/x/loop/round-2/rm")
    assert rcfg.data == "runs/x/loop" and rcfg.model == "runs/x/sft" and pcfg.guard == "observe"


def test_loop_cli_help_and_a_bad_key_exit_2():
    from conftest import rlhfkit

    assert "sample -> rank" in rlhfkit("loop", "--help").stdout
    r = rlhfkit("loop", "--set", "prompts=p.jsonl", "--set", "ppo.reward=math", check=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "set by the loop" in r.stderr
