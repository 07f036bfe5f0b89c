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
    from conftest import rlhfkit

    shrink = ['world.args=["{run}/world", "--scale", "0.1"]', "pretrain.max_steps=4", "sft.max_steps=3",
              "reward.epochs=1", "ppo.max_steps=2", "grpo.max_steps=2",
              "feedback.args=" + '["fill", "--set", "out={run}/feedback", "--set", "model={run}/sft", '
              '"--set", "prompts={run}/world/prompts_jokes.jsonl", "--set", "max_prompts=24", "--set", "k=4", '
              '"--set", "max_new_tokens=16"]']
    r = rlhfkit("demo", "--run", str(tmp_path / "demo"), *[x for s in shrink for x in ("--set", s)], timeout=600)
    assert "recipe done" in r.stdout
    for d in ("base", "sft", "rm", "ppo", "grpo"):
        assert (tmp_path / "demo" / d / "config.json").is_file(), d


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
    assert uses == {"feedback", "rank", "reward", "ppo"}  # never world, tokenizer, pretrain, sft, grpo
    assert steps["grpo"]["after"] == "sft"
    h = rlhfkit("demo", "--help").stdout
    assert "--labeler MODULE:FUNCTION" in h and "--seed SEED" in h
    r = rlhfkit("demo", "--run", "/nonexistent/x", "--labeler", "nowhere_xyz:fn", check=False)
    assert r.returncode == 2 and "cannot import module" in r.stderr and r.stderr.strip().count("\n") == 0
