"""The recipe runner: steps in order, unchanged ones skipped, changed ones re-run."""

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
