"""The recipe runner: steps in order, unchanged ones skipped, changed ones re-run."""

from pathlib import Path

import pytest

from rlhfkit.files import UserError
from rlhfkit.recipe import run_recipe

RECIPE = """
[recipe]
run = "{run_dir}"

[world]
args = ["{{run}}/world", "--scale", "0.02"]

[tokenizer]
files = ["{{run}}/world/corpus.txt"]
out = "{{run}}/tok"
vocab_size = {vocab}
"""


def _write(tmp_path, vocab=300):
    p = tmp_path / "r.toml"
    p.write_text(RECIPE.format(run_dir=tmp_path / "run", vocab=vocab))
    return p


def test_second_run_skips_and_a_change_reruns_from_there(tmp_path, capsys):
    run_recipe(_write(tmp_path))
    first = capsys.readouterr().out
    assert "== world (world)" in first and "== tokenizer (tokenizer)" in first
    tok_mtime = (tmp_path / "run" / "tok" / "tokenizer.json").stat().st_mtime_ns

    run_recipe(_write(tmp_path))
    second = capsys.readouterr().out
    assert "world: unchanged" in second and "tokenizer: unchanged" in second
    assert (tmp_path / "run" / "tok" / "tokenizer.json").stat().st_mtime_ns == tok_mtime

    run_recipe(_write(tmp_path, vocab=320))  # only the tokenizer step changed
    third = capsys.readouterr().out
    assert "world: unchanged" in third and "== tokenizer (tokenizer)" in third

    run_recipe(_write(tmp_path, vocab=320), sets=["tokenizer.vocab_size=300"])  # --set is a change too
    assert "== tokenizer (tokenizer)" in capsys.readouterr().out


@pytest.mark.parametrize("body,msg", [
    ('[recipe]\nrun = "x"\n', "no steps"),
    ('[recipe]\nrun = "x"\n[a]\nstage = "nope"\n', "unknown stage 'nope'"),
    ('[recipe]\nrun = "x"\n[tokenizer]\nvocab = 3\n', "unknown key 'vocab'"),
    ('[a]\nstage = "world"\n', "needs `run"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, body, msg):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(UserError, match=msg):
        run_recipe(p)


def test_set_must_name_a_step(tmp_path):
    with pytest.raises(UserError, match="expected STEP.KEY=VALUE"):
        run_recipe(_write(tmp_path), sets=["vocab_size=3"])


def test_force_reruns_the_step_and_everything_after_it(tmp_path, capsys):
    run_recipe(_write(tmp_path))
    capsys.readouterr()
    run_recipe(_write(tmp_path), force=["world"])
    out = capsys.readouterr().out
    assert "== world (world)" in out and "== tokenizer (tokenizer)" in out  # downstream of a re-run step
    run_recipe(_write(tmp_path))
    assert "== " not in capsys.readouterr().out.replace("== world: unchanged", "").replace("== tokenizer: unchanged", "")


def test_clean_paths_are_removed_before_a_rerun(tmp_path, capsys):
    body = RECIPE.format(run_dir=tmp_path / "run", vocab=300) + '\nclean = ["{run}/tok/extra.txt"]\n'
    p = tmp_path / "r.toml"
    p.write_text(body)
    run_recipe(p)
    extra = tmp_path / "run" / "tok" / "extra.txt"
    extra.write_text("left by the previous run")
    run_recipe(p)  # unchanged: skipped, nothing removed
    assert extra.exists()
    run_recipe(p, force=["tokenizer"])
    assert not extra.exists()


def test_the_packaged_demo_runs_end_to_end_at_toy_size(tmp_path):
    # the real demo recipe, every step, shrunk: `make demo` must not break unnoticed
    import json
    import tomllib
    from importlib.resources import files

    from conftest import rlhfkit
    from rlhfkit.recipe import _plan, load_recipe

    shrink = ['world.args=["{run}/world", "--scale", "0.1"]', "pretrain.max_steps=4", "sft.max_steps=3",
              "reward.epochs=1", "ppo.max_steps=2", "grpo.max_steps=2", "dpo.max_steps=2",
              "feedback.args=" + '["fill", "--set", "out={run}/feedback", "--set", "model={run}/sft", '
              '"--set", "prompts={run}/world/prompts_jokes.jsonl", "--set", "max_prompts=24", "--set", "k=4", '
              '"--set", "max_new_tokens=16"]']
    shrink += [f"{e}.{k}" for e in ("eval_jokes", "eval_jokes_ood", "eval_math", "eval_math_ood")
               for k in ("max_prompts=3", "max_new_tokens=16")]
    run = tmp_path / "demo"
    r = rlhfkit("demo", "--run", str(run), *[x for s in shrink for x in ("--set", s)], timeout=600)
    assert "recipe done" in r.stdout
    for d in ("base", "sft", "rm", "ppo", "grpo", "dpo"):
        assert (run / d / "config.json").is_file(), d
    for e in ("jokes", "jokes_ood", "math", "math_ood"):
        ev = json.loads((run / "eval" / e / "eval.json").read_text())
        assert all(m["prompts"] == 3 and m["samples_per_prompt"] == 2 for m in ev.values()), e
    assert list(json.loads((run / "eval" / "jokes" / "eval.json").read_text())) == [
        f"{run}/sft", f"{run}/ppo/best" if (run / "ppo" / "best").is_dir() else f"{run}/ppo", f"{run}/dpo"]
    assert "accuracy" in json.loads((run / "eval" / "math_ood" / "eval.json").read_text())[f"{run}/grpo"]
    # the live view: one line per step, numbered out of the 19; the wall-time table; the report, last
    steps = [n for n in tomllib.loads((files("rlhfkit") / "recipes" / "demo.toml").read_text()) if n != "recipe"]
    assert len(steps) == 19 and steps[-1] == "report"
    lines = r.stdout.splitlines()
    heads = [line for line in lines if line.startswith("== ")]
    assert [h.split()[1] for h in heads] == steps
    assert heads[13].startswith("== dpo (dpo)  [step 14/19, 14 of 19 to run]  elapsed ") and "to go" in heads[13]
    assert any(line.split() == ["dpo", line.split()[1], "s"] for line in lines[lines.index(
        next(x for x in lines if x.startswith("recipe done in"))):])
    assert lines[-2:] == [f"report: {run}/report.html", f"        {(run / 'report.html').resolve().as_uri()}"]
    assert (run / "report.html").stat().st_size > 10_000
    # a rerun with nothing changed would run the printing steps and the report only (planned, not run: fast)
    state = json.loads((run / "recipe-state.json").read_text())
    assert all(state[n]["time_s"] >= 0 for n in steps)  # the next run's estimates
    _, _, st, env, _ = load_recipe(Path(str(files("rlhfkit") / "recipes" / "demo.toml")), str(run), shrink)
    ran = [n for n, runs in zip(st, _plan(st, env, state, [], False)) if runs]
    assert ran == ["jokes", "arithmetic", "rl_jokes", "rl_arithmetic", "report"]
    assert [n for n, runs in zip(st, _plan(st, env, state, ["ppo"], False)) if runs] == [
        "jokes", "arithmetic", "ppo", "rl_jokes", "rl_arithmetic", "eval_jokes", "eval_jokes_ood", "report"]


def test_live_view_estimates_from_the_plan_and_the_pace():
    from rlhfkit.recipe import LiveView, expected_seconds

    exp = expected_seconds(["a", "b", "c"], {"a": {"time_s": 10.0}, "c": {"fp": "x"}}, {"b": 5, "c": 20})
    assert exp == [10.0, 5.0, 20.0]  # last run's time, else eta_s
    v = LiveView(["a", "b", "c"], [True, False, True], exp)
    line = v.start(0, "world")
    # 10 + 20 s to go: b will be skipped
    assert line.startswith("\n== a (world)  [step 1/3, 1 of 2 to run]  elapsed 0:00, about 0:30 to go")
    v.finish(0, 40.0)  # 4x slower than expected: pace (40 + 30) / (10 + 30) = 1.75, shrunk by PRIOR_S = 30
    assert v.rest(2) == 1.75 * 20
    assert v.start(2, "sample").endswith("[step 3/3, 2 of 2 to run]  elapsed 0:00, about 0:35 to go")
    assert "\n  a      40.0 s\n  b     skipped\n" in v.table()


def test_after_a_list_and_first_existing_path(tmp_path, capsys):
    body = RECIPE.format(run_dir=tmp_path / "run", vocab=300) + """
[tok2]
stage = "tokenizer"
after = ["world", "tokenizer"]
files = ["{run}/nothing.txt || {run}/world/corpus.txt"]
out = "{run}/tok2"
vocab_size = 300
"""
    p = tmp_path / "r.toml"
    p.write_text(body)
    run_recipe(p)
    assert _ran(capsys.readouterr().out) == ["world", "tokenizer", "tok2"]  # nothing.txt absent: the corpus
    run_recipe(p, force=["tokenizer"])
    assert _ran(capsys.readouterr().out) == ["tokenizer", "tok2"]  # it follows tokenizer too
    (tmp_path / "run" / "nothing.txt").write_text("a b c " * 50)
    run_recipe(p)
    assert _ran(capsys.readouterr().out) == ["tok2"]  # now the first alternative exists: another input


MINI = """
[recipe]
run = "{run}"

[world]
args = ["{{run}}/world", "--scale", "0.02"]

[tokenizer]
files = ["{{run}}/world/corpus.txt"]
out = "{{run}}/tok"
vocab_size = 300

[pretrain]
out = "{{run}}/base"
tokenizer = "{{run}}/tok"
data = ["{{run}}/world/corpus.txt"]
max_steps = 20
save_every = 3
threads = 1
""" + "".join(f"{kv.split('=')[0]} = {kv.split('=')[1]}\n" for kv in
              ["d_model=32", "n_layers=2", "n_heads=2", "block_size=32", "batch_size=8", "micro_batch_size=4",
               "warmup_steps=2", "eval_every=0", "learning_rate=3e-3"])


def test_a_killed_run_continues_from_the_step_it_was_in(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import rlhfkit

    p = tmp_path / "mini.toml"
    p.write_text(MINI.format(run=tmp_path / "run"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "run", str(p)], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
        ckpts = tmp_path / "run" / "base" / "checkpoints"
        deadline = time.monotonic() + 120
        while not list(ckpts.glob("step-*/state.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-way through pre-training, after its first checkpoint
        proc.wait(30)
    first = (tmp_path / "out.txt").read_text()
    assert "== pretrain (pretrain)" in first and "recipe done" not in first
    r = rlhfkit("run", str(p), timeout=300)
    assert "== world: unchanged" in r.stdout and "== tokenizer: unchanged" in r.stdout
    assert "== pretrain (pretrain)  [step 3/3, 1 of 1 to run]" in r.stdout
    assert "resuming at step" in r.stdout + r.stderr  # the stage itself resumes from its checkpoint
    assert "recipe done" in r.stdout


def _start_human(p, port):
    """`rlhfkit run P --human`: -> (process, token, what it printed up to the token)."""
    import os
    import subprocess
    import sys

    import signal

    # Ctrl-C must reach it as in a terminal: a test run started in the background of a shell without
    # job control inherits SIGINT ignored, and a Python started so installs no KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "run", str(p), "--human", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:  # the person reads the address and the token off the screen
        seen.append(line)
        if line.strip().startswith("token: "):
            return proc, line.split()[1], "".join(seen)
    raise AssertionError("no token printed:\n" + "".join(seen)[-2000:])


def _person(port, token):
    """What the ranking page does for a person: next task, submit an order."""
    import json
    import time
    import urllib.error
    import urllib.request

    def call(method, path, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")

    deadline = time.monotonic() + 60
    while True:  # the page takes a moment to start
        try:
            return call, call("GET", "/api/tasks/next")
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline
            time.sleep(0.3)


def test_human_ranks_through_the_page_while_the_recipe_waits(tmp_path):
    import signal
    import socket

    from rlhfkit.feedback.store import FeedbackStore

    with FeedbackStore.for_run(tmp_path / "run" / "fb") as store:  # three tasks, as `feedback fill` leaves them
        for i in range(3):
            pid = store.add_prompt(f"Tell me a joke {i}.")
            store.create_task(pid, [store.add_response(pid, f"joke {i}.{j}") for j in range(3)])
    p = tmp_path / "h.toml"  # the ranking step, then a step that needs its result
    steps = RLHF[RLHF.index("[rank]"):].replace("{{", "{").replace("}}", "}").replace('after = "world"\n', "")
    p.write_text(f'[recipe]\nrun = "{tmp_path / "run"}"\n'
                 + steps.replace('files = ["{run}/world/corpus.txt"]', 'files = ["{run}/c.txt"]'))
    (tmp_path / "run" / "c.txt").write_text("a pelican walks into a bar " * 40)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    try:
        proc, token, seen = _start_human(p, port)
        procs.append(proc)
        assert f"open http://127.0.0.1:{port}/" in seen and "(3 tasks, 0 ranked;" in seen
        call, (status, task) = _person(port, token)
        call("POST", f"/api/tasks/{task['task_id']}/ranking", {"order": [r["id"] for r in task["responses"]][::-1]})
        proc.send_signal(signal.SIGINT)  # Ctrl-C while waiting: the page stops, the ranking stays
        proc.communicate(timeout=60)
        assert proc.returncode != 0

        proc, token2, seen = _start_human(p, port)  # the same command resumes, as the same person
        procs.append(proc)
        assert token2 == token and "(3 tasks, 1 ranked;" in seen and "[step 1/2, 1 of 2 to run]" in seen
        call, (status, task) = _person(port, token)
        ranked = 0
        while status == 200:
            call("POST", f"/api/tasks/{task['task_id']}/ranking", {"order": [r["id"] for r in task["responses"]]})
            ranked += 1
            status, task = call("GET", "/api/tasks/next")
        assert status == 204 and ranked == 2
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, rest[-2000:]
    finally:
        for pr in procs:
            pr.kill() if pr.poll() is None else None
    assert "ranked 3/3" in rest and "== tok2 (tokenizer)" in rest and "recipe done" in rest
    with FeedbackStore.for_run(tmp_path / "run" / "fb") as store:
        rankings = store.rankings()
    assert len(rankings) == 3 and {r["annotator"] for r in rankings} == {"you"}  # the person's, none simulated


def my_gold(prompt: str, response: str) -> float:
    """A labeler of the test's own: imported by name, as `--labeler test_recipe:my_gold`."""
    return float(len(response))


RLHF = RECIPE + """
[rank]
stage = "feedback"
args = ["simulate", "{{run}}/fb", "--labeler", "{{labeler}}", "--seed", "{{seed}}", "--annotators", "1"]

[tok2]
stage = "tokenizer"
after = "world"
files = ["{{run}}/world/corpus.txt"]
out = "{{run}}/tok2"
vocab_size = 300
"""


def _rlhf_recipe(tmp_path):
    from rlhfkit.feedback.store import FeedbackStore

    FeedbackStore.for_run(tmp_path / "run" / "fb").close()  # an empty store for the ranking step
    p = tmp_path / "r.toml"
    p.write_text(RLHF.format(run_dir=tmp_path / "run", vocab=300))
    return p


def _ran(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.startswith("== ") and "unchanged" not in line]


def test_labeler_and_seed_rerun_only_the_steps_that_use_them(tmp_path, capsys):
    p = _rlhf_recipe(tmp_path)
    run_recipe(p)
    assert _ran(capsys.readouterr().out) == ["world", "tokenizer", "rank", "tok2"]
    run_recipe(p, seed=0)  # the recipe's default seed, named: nothing changes
    assert _ran(capsys.readouterr().out) == []
    run_recipe(p, seed=1)
    assert _ran(capsys.readouterr().out) == ["rank"]  # tok2 follows world (`after`), not rank
    run_recipe(p, seed=1, labeler="test_recipe:my_gold")
    assert _ran(capsys.readouterr().out) == ["rank"]
    run_recipe(p, seed=1, labeler="test_recipe:my_gold")
    assert _ran(capsys.readouterr().out) == []
    with pytest.raises(UserError, match="cannot import module 'nowhere_xyz'"):
        run_recipe(p, labeler="nowhere_xyz:fn")


def test_an_edited_labeler_file_reruns_its_steps(tmp_path, capsys, monkeypatch):
    mod = tmp_path / "mylabeler.py"
    mod.write_text("def score(prompt, response):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    p = _rlhf_recipe(tmp_path)
    run_recipe(p, labeler="mylabeler:score")
    capsys.readouterr()
    mod.write_text("def score(prompt, response):\n    return -len(response)\n")
    run_recipe(p, labeler="mylabeler:score")
    assert _ran(capsys.readouterr().out) == ["rank"]


def test_after_must_name_an_earlier_step(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(RECIPE.format(run_dir=tmp_path / "run", vocab=300).replace('[world]\n', '[world]\nafter = "tokenizer"\n'))
    with pytest.raises(UserError, match="after = 'tokenizer', not a step before it"):
        run_recipe(p)


def test_demo_cli_takes_labeler_and_seed_and_only_rlhf_steps_use_them():
    import tomllib
    from importlib.resources import files

    from conftest import rlhfkit

    text = (files("rlhfkit") / "recipes" / "demo.toml").read_text()
    assert text == (Path(__file__).parent.parent / "recipes" / "demo.toml").read_text()  # the two copies agree
    steps = tomllib.loads(text)
    uses = {name for name, t in steps.items() if name != "recipe" and ("{labeler}" in str(t) or "{seed}" in str(t))}
    # never world, tokenizer, pretrain, sft, grpo or its evals
    assert uses == {"feedback", "rank", "reward", "ppo", "dpo", "eval_jokes", "eval_jokes_ood"}
    assert steps["grpo"]["after"] == "sft" and steps["dpo"]["after"] == "rank"
    assert steps["eval_math"]["after"] == steps["eval_math_ood"]["after"] == "grpo"
    assert steps["report"] == {"args": ["{run}"], "always": True}
    h = rlhfkit("demo", "--help").stdout
    assert "--labeler MODULE:FUNCTION" in h and "--seed SEED" in h and "--human" in h and "--port PORT" in h
    r = rlhfkit("demo", "--run", "/nonexistent/x", "--labeler", "nowhere_xyz:fn", check=False)
    assert r.returncode == 2 and "cannot import module" in r.stderr and r.stderr.strip().count("\n") == 0


def test_the_smollm2_recipe_names_only_keys_its_stages_have(tmp_path, monkeypatch):
    # the real-model recipe runs for most of an hour: a misspelt key must fail here, not 20 minutes in
    import importlib
    import tomllib
    from importlib.resources import files

    from rlhfkit.cli import COMMANDS
    from rlhfkit.config import config_from_dict
    from rlhfkit.feedback.cli import FillConfig
    from rlhfkit.recipe import STEP_KEYS, _substitute, load_recipe
    from rlhfkit.rl.config import check_sizes

    packaged = Path(str(files("rlhfkit") / "recipes" / "smollm2-pelican-jokes.toml"))
    assert packaged.read_text() == (Path(__file__).parent.parent / "recipes" / "smollm2-pelican-jokes.toml").read_text()
    monkeypatch.setenv("RLHFKIT_HOME", str(tmp_path))  # where `rlhfkit models pull` put the model
    run, _, steps, env, eta = load_recipe(packaged, None, [])
    assert run == "runs/smollm2-pelican-jokes" and env["labeler"] == "rlhfkit.rewards.gold:joke"
    assert env["models"] == str(tmp_path / "models")
    assert set(eta) == set(steps)  # every step has an estimate
    assert list(steps)[-1] == "report" and steps["eval_jokes"]["after"] == ["ppo", "dpo"]
    configs = {}
    for name, raw in steps.items():
        module = importlib.import_module(COMMANDS[raw.get("stage", name)][0])
        if hasattr(module, "STAGES"):
            module = module.STAGES[raw.get("stage", name)]
        keys = {k: _substitute(v, env) for k, v in raw.items() if k not in STEP_KEYS}  # {run} {seed}, as run_recipe
        if hasattr(module, "Config"):
            configs[name] = config_from_dict(module.Config, keys, f"[{name}]", stage=name)  # unknown key: UserError
        else:
            assert not keys, name
    sets = _substitute(steps["feedback"]["args"], env)[2::2]  # fill --set k=v ...
    fill = config_from_dict(FillConfig, {}, "[feedback]", sets=sets)
    assert (fill.k, fill.max_prompts) == (4, 64)
    assert all(configs[n].lora for n in ("reward", "ppo", "dpo"))
    assert {configs[n].model for n in ("reward", "ppo", "dpo")} == {str(tmp_path / "models" / "smollm2-135m-instruct")}
    assert check_sizes(configs["ppo"], 1) == 16  # 8 prompts x 2 samples, split in 2 minibatches
