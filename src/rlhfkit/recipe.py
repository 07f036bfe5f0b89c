"""Run a recipe: the stages of a run, in order, each skipped when nothing it depends on changed.

    rlhfkit run recipes/my-run.toml [--run runs/x] [--set pretrain.max_steps=50] [--force STEP]
    rlhfkit demo [--run runs/demo] [--labeler MODULE:FUNCTION] [--seed N] [--set STEP.KEY=V]
                                                      # the packaged recipe rlhfkit/recipes/demo.toml
    rlhfkit demo --loop [--run runs/demo] [--set loop.KEY=V]   # demo.toml up to sft, then demo_loop.toml

A recipe is TOML. `[recipe]` holds `run` (the run directory; `{run}` in any string below is
replaced by it), a `description`, and the defaults of `labeler` and `seed` (`{labeler}` and
`{seed}` below; `--labeler` and `--seed` override them). Every other table is a step, run in
file order:

    [pretrain]              # the step's name; `stage` defaults to it
    out = "{run}/base"      # config stages take their keys here, exactly as in --config files
    max_steps = 300

    [samples]
    stage = "sample"        # plain commands take their command line in `args`
    args = ["{run}/sft", "--prompt", "Tell me a joke about pelicans.", "-n", "3"]
    always = true           # run even when unchanged (printing steps)

A step is skipped when its fingerprint — its own table, the stamp of the step it follows (the
one before it, or the one its `after` names), the size and mtime of every existing file its
strings name, and for a step that uses `{labeler}` the labeler module's source file — equals the
one recorded in `{run}/recipe-state.json` when it last finished. Each time a step runs it gets a
new stamp, so editing a step (or `--force STEP`) re-runs it and the steps that follow it, and
nothing before it. `inputs = [...]` lists what a step depends on without taking it as a key
(the demo's sampling step lists `{labeler}`: a new labeler re-ranks from an empty store).
A step that re-runs after finishing once starts afresh: its `out/checkpoints` and the paths in
its `clean` list are removed first (`clean = ["{run}/feedback"]` for a step that appends).

The demo's `{labeler}` is the simulated person of every RLHF step (its rankings, the guard's spot
checks, the gold logged beside the proxy reward), and `{seed}` seeds those steps only, so
`rlhfkit demo --labeler mygold:fn --seed 1` re-runs the RLHF steps and never pre-training or SFT.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from rlhfkit.config import _parse_set, config_from_dict
from rlhfkit.files import UserError, atomic_write_text

STEP_KEYS = ("stage", "args", "always", "clean", "after", "inputs")
DEFAULT_VARS = {"labeler": "rlhfkit.rewards.gold:joke", "seed": 0}


def _substitute(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, v in env.items():
            value = value.replace("{" + name + "}", v)
        return value
    if isinstance(value, list):
        return [_substitute(v, env) for v in value]
    return value


def _module_stamp(spec: str) -> list:
    """(file, size, mtime) of the source of a module:function's module: an edited labeler re-runs its steps."""
    import importlib.util

    try:
        found = importlib.util.find_spec(spec.partition(":")[0])
    except (ImportError, ValueError):
        return []
    return _file_stamps(found.origin) if found is not None and found.origin else []


def _file_stamps(value: Any) -> list:
    """(path, size, mtime) for each existing file a value names: inputs changed -> re-run."""
    out = []
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str) and len(v) < 4096 and Path(v).is_file():
            st = Path(v).stat()
            out.append((v, st.st_size, st.st_mtime_ns))
    return out


def load_recipe(path: Path, run: str | None, sets: list[str], overrides: dict | None = None
                ) -> tuple[str, str, dict[str, dict], dict[str, str]]:
    """-> (run dir, description, steps, the substitutions {run} {labeler} {seed})."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: recipe not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    head = data.pop("recipe", {})
    run = run or head.get("run")
    if not run:
        raise UserError(f"{path}: [recipe] needs `run = \"runs/NAME\"` (or pass --run)")
    env = {name: str(v) for name, v in {**DEFAULT_VARS, **{k: head[k] for k in DEFAULT_VARS if k in head},
                                        **{k: v for k, v in (overrides or {}).items() if v is not None}}.items()}
    env["run"] = run
    steps = {name: dict(table) for name, table in data.items() if isinstance(table, dict)}
    if not steps:
        raise UserError(f"{path}: no steps (each [table] is a step)")
    for item in sets:
        dotted, value = _parse_set(item)
        step, _, k = dotted.partition(".")
        if step not in steps or not k:
            raise UserError(f"--set {item}: expected STEP.KEY=VALUE with STEP one of {', '.join(steps)}")
        steps[step][k] = value
    names = list(steps)
    for name, table in steps.items():
        after = table.get("after")
        if after is not None and (after not in steps or names.index(after) >= names.index(name)):
            raise UserError(f"{path}: step [{name}] has after = {after!r}, not a step before it")
    return run, head.get("description", ""), steps, env


def run_recipe(path: Path, run: str | None = None, sets: list[str] | None = None,
               force: list[str] | None = None, labeler: str | None = None, seed: int | None = None,
               until: str | None = None) -> None:
    from rlhfkit.cli import COMMANDS

    run, description, steps, env = load_recipe(path, run, sets or [], {"labeler": labeler, "seed": seed})
    if until in steps:  # only the steps up to this one (demo --loop: the world, pre-training and SFT)
        steps = dict(list(steps.items())[: list(steps).index(until) + 1])
    if any("{labeler}" in json.dumps(t) for t in steps.values()):
        from rlhfkit.feedback.labelers import load_gold

        load_gold(env["labeler"])  # a bad labeler fails here, before any step runs
    state_path = Path(run) / "recipe-state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    print(f"recipe {path.name} -> {run}" + (f": {description}" if description else ""))
    # `prev` is the stamp of the last step that produces outputs: a fresh random stamp each
    # time that step runs, so every step after a re-run step re-runs too (even under --force)
    prev, t_all, timings = "", time.perf_counter(), []
    stamp_of: dict[str, str] = {}  # this run's stamp of each step so far (for `after`)
    for name, raw in steps.items():
        stage = raw.get("stage", name)
        if stage not in COMMANDS or stage in ("run", "demo"):
            raise UserError(f"{path}: step [{name}] names unknown stage '{stage}'")
        table = {k: _substitute(v, env) for k, v in raw.items()}
        keys = {k: v for k, v in table.items() if k not in STEP_KEYS}
        stamps = [s for k, v in table.items() if k != "clean" for s in _file_stamps(v)]
        if "{labeler}" in json.dumps(raw):
            stamps += _module_stamp(env["labeler"])
        follows = stamp_of.get(table["after"], "") if "after" in table else prev
        fp = hashlib.sha256(json.dumps([follows, name, table, stamps], sort_keys=True, default=str).encode()
                            ).hexdigest()
        done = state.get(name) if isinstance(state.get(name), dict) else {}
        if done.get("fp") == fp and not table.get("always") and name not in (force or []):
            print(f"\n== {name}: unchanged since it last finished, skipped")
            prev = stamp_of[name] = done["stamp"]
            continue
        if done:
            # it finished before (under other settings, or --force): what it wrote belongs to that
            # run, so it starts afresh (an interrupted step has no state entry and resumes instead)
            if "out" in keys:
                shutil.rmtree(Path(keys["out"]) / "checkpoints", ignore_errors=True)
            for path_ in table.get("clean", []):
                shutil.rmtree(path_, ignore_errors=True) if Path(path_).is_dir() else Path(path_).unlink(missing_ok=True)
        print(f"\n== {name} ({stage})", flush=True)
        t = time.perf_counter()
        module = importlib.import_module(COMMANDS[stage][0])
        if hasattr(module, "STAGES"):  # one module, several config stages (grpo, rloo)
            module = module.STAGES[stage]
        if hasattr(module, "cli") and not hasattr(module, "Config"):
            if keys:
                raise UserError(f"{path}: step [{name}] ({stage}) takes its command line in `args`, not {sorted(keys)}")
            rc = module.cli(stage, [str(a) for a in table.get("args", [])])
            if rc:
                raise UserError(f"step [{name}] failed (exit code {rc})")
        else:
            module.run(config_from_dict(module.Config, keys, f"{path} [{name}]", stage=stage))
        timings.append((name, time.perf_counter() - t))
        if table.get("always"):
            continue  # a printing step: nothing downstream depends on it
        prev = stamp_of[name] = hashlib.sha256(f"{fp}:{time.time_ns()}".encode()).hexdigest()
        state[name] = {"fp": fp, "stamp": prev}
        Path(run).mkdir(parents=True, exist_ok=True)
        atomic_write_text(state_path, json.dumps(state, indent=1))
    total = time.perf_counter() - t_all
    print(f"\nrecipe done in {total:.0f} s" + "".join(f"\n  {n:<12} {s:7.1f} s" for n, s in timings))
    print(f"outputs: {run}/")


def cli(name: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"rlhfkit {name}", description=__doc__.strip().split("\n")[0])
    if name == "run":
        p.add_argument("recipe", help="recipe TOML file")
    p.add_argument("--run", help="run directory (overrides the recipe's)")
    p.add_argument("--set", action="append", default=[], metavar="STEP.KEY=VALUE", help="override a step's key")
    p.add_argument("--force", action="append", default=[], metavar="STEP", help="re-run this step even if unchanged")
    p.add_argument("--labeler", metavar="MODULE:FUNCTION",
                   help="the simulated person of every RLHF step: fn(prompt, response) -> float, higher is better, "
                        "imported from the current directory or PYTHONPATH (demo default: rlhfkit.rewards.gold:joke)")
    p.add_argument("--seed", type=int, help="seed of the RLHF steps only (ranking-task sampling, labeler noise, "
                                            "reward model, RL); pre-training and SFT are kept")
    if name == "demo":
        p.add_argument("--loop", action="store_true",
                       help="the iterated loop instead of one RLHF pass: demo.toml's steps up to sft, then "
                            "recipes/demo_loop.toml (rlhfkit loop)")
    a = p.parse_args(argv)
    if os.getcwd() not in sys.path:  # `--labeler mygold:fn` finds mygold.py in the current directory
        sys.path.insert(0, os.getcwd())
    if name == "demo":
        from importlib.resources import files

        path = Path(str(files("rlhfkit") / "recipes" / "demo.toml"))
        if a.loop:  # --set loop.KEY=V goes to the loop's recipe, every other --set to demo.toml's steps
            run_recipe(path, a.run, [s for s in a.set if not s.startswith("loop.")], a.force, a.labeler, a.seed,
                       until="sft")
            run_recipe(path.with_name("demo_loop.toml"), a.run, [s for s in a.set if s.startswith("loop.")],
                       a.force, a.labeler, a.seed)
            return 0
    else:
        path = Path(a.recipe)
    run_recipe(path, a.run, a.set, a.force, a.labeler, a.seed)
    return 0
