"""Run a recipe: the stages of a run, in order, each skipped when nothing it depends on changed.

    rlhfkit run recipes/my-run.toml [--run runs/x] [--set pretrain.max_steps=50] [--force STEP]
    rlhfkit demo [--run runs/demo] [--labeler MODULE:FUNCTION] [--seed N] [--set STEP.KEY=V]
                                                      # the packaged recipe rlhfkit/recipes/demo.toml
    rlhfkit demo --human [--port 8000]                # you rank the jokes on the ranking page
    rlhfkit demo --loop [--run runs/demo] [--set loop.KEY=V]   # demo.toml up to sft, then demo_loop.toml

A recipe is TOML. `[recipe]` holds `run` (the run directory; `{run}` in any string below is
replaced by it), a `description`, and the defaults of `labeler` and `seed` (`{labeler}` and
`{seed}` below; `--labeler` and `--seed` override them); `{models}` is where `rlhfkit models pull`
puts models (RLHFKIT_HOME/models, by default ~/.cache/rlhfkit/models). Every other table is a
step, run in file order:

    [pretrain]              # the step's name; `stage` defaults to it
    out = "{run}/base"      # config stages take their keys here, exactly as in --config files
    max_steps = 300

    [samples]
    stage = "sample"        # plain commands take their command line in `args`
    args = ["{run}/sft", "--prompt", "Tell me a joke about pelicans.", "-n", "3"]
    always = true           # run even when unchanged (printing steps)

A step is skipped when its fingerprint — its own table, the stamp of the step it follows (the
one before it, or those its `after` names: a step or a list), the size and mtime of every
existing file its strings name, and for a step that uses `{labeler}` the labeler module's source
file — equals the one recorded in `{run}/recipe-state.json` when it last finished. Each time a step runs it gets a
new stamp, so editing a step (or `--force STEP`) re-runs it and the steps that follow it, and
nothing before it. `inputs = [...]` lists what a step depends on without taking it as a key
(the demo's sampling step lists `{labeler}`: a new labeler re-ranks from an empty store).
A step that re-runs after finishing once starts afresh: its `out/checkpoints` and the paths in
its `clean` list are removed first (`clean = ["{run}/feedback"]` for a step that appends).
An interrupted run (Ctrl-C, kill) has recorded every step that finished, so running it again
continues with the step it was in, which resumes from its own checkpoints. A string "A || B" is
the first of A, B that exists when the step starts (the last when none does): the demo evaluates
"{run}/ppo/best || {run}/ppo", the guard's shipped checkpoint when there is one.

While it runs, each step prints one line: its number out of the total, the time so far and an
estimate of the rest (from the steps' times in the previous run, recorded in the state, else
`[recipe.eta_s]` (step = seconds), scaled by the pace of the steps done so far). At the
end: a table of wall time per step and, last, where RUN/report.html is when a step wrote it.
With `--human`, a `feedback simulate STORE` step is done by a person instead: it serves STORE's
ranking page (`rlhfkit label`), prints its address and a login token, and goes on when every
task is ranked.

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


def models_home() -> Path:
    from rlhfkit.models import home

    return home() / "models"


def _substitute(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, v in env.items():
            value = value.replace("{" + name + "}", v)
        if " || " in value:  # "A || B": the first that exists (the last when none does)
            options = value.split(" || ")
            return next((o for o in options if Path(o).exists()), options[-1])
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
                ) -> tuple[str, str, dict[str, dict], dict[str, str], dict[str, float]]:
    """-> (run dir, description, steps, the substitutions {run} {labeler} {seed} {models}, typical seconds per step)."""
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
    env["models"] = str(models_home())
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
        for a in after if isinstance(after, list) else [] if after is None else [after]:
            if a not in steps or names.index(a) >= names.index(name):
                raise UserError(f"{path}: step [{name}] has after = {a!r}, not a step before it")
    eta = head.get("eta_s", {})
    if not isinstance(eta, dict) or not all(isinstance(v, (int, float)) for v in eta.values()):
        raise UserError(f"{path}: [recipe] eta_s must be a table of seconds per step ([recipe.eta_s] pretrain = 120)")
    return run, head.get("description", ""), steps, env, {k: float(v) for k, v in eta.items()}


def _follows(raw: dict, prev: str, stamp_of: dict[str, str]) -> Any:
    """The stamp(s) a step's fingerprint includes: the step before it, or those its `after` names."""
    after = raw.get("after")
    if after is None:
        return prev
    if isinstance(after, list):
        return [stamp_of.get(a, "") for a in after]
    return stamp_of.get(after, "")


def _fingerprint(name: str, raw: dict, table: dict, env: dict, follows: Any, human: bool) -> str:
    stamps = [s for k, v in table.items() if k != "clean" for s in _file_stamps(v)]
    if "{labeler}" in json.dumps(raw):
        stamps += _module_stamp(env["labeler"])
    what = [follows, name, table, stamps] + (["human"] if human and _human_store(name, table) else [])
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _human_store(name: str, table: dict) -> str | None:
    """The store a `feedback simulate STORE` step ranks: under --human a person ranks it instead."""
    args = table.get("args", [])
    if table.get("stage", name) == "feedback" and len(args) >= 2 and args[0] == "simulate":
        return str(args[1])
    return None


def _plan(steps: dict, env: dict, state: dict, force: list[str], human: bool) -> list[bool]:
    """Which steps will run, decided as run_recipe decides (a step that runs gets a new stamp)."""
    prev, stamp_of, runs = "", {}, []
    for name, raw in steps.items():
        table = {k: _substitute(v, env) for k, v in raw.items()}
        fp = _fingerprint(name, raw, table, env, _follows(table, prev, stamp_of), human)
        done = state.get(name) if isinstance(state.get(name), dict) else {}
        skip = done.get("fp") == fp and not table.get("always") and name not in force
        runs.append(not skip)
        if not table.get("always"):
            prev = stamp_of[name] = done["stamp"] if skip else f"new:{name}"
    return runs


def expected_seconds(names: list[str], state: dict, eta: dict[str, float], default: float = 10.0) -> list[float]:
    """Each step's time in the previous run (the state's time_s), else the recipe's eta_s, else `default`."""
    return [float(state[n]["time_s"]) if isinstance(state.get(n), dict) and "time_s" in state[n]
            else eta.get(n, default) for n in names]


def _clock(s: float) -> str:
    s = round(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


PRIOR_S = 30.0


class LiveView:
    """One line per step: which runs, its number out of the total, time so far, an estimate of the rest.

    A step's expected seconds are its time in the previous run of this recipe (recorded in the
    state), else the recipe's `eta_s` table (typical times on 2 CPU cores), else 10 s; the
    estimate of the rest is scaled by how the steps run so far compare with their expectations.
    Plain lines (no cursor tricks): they read the same in a terminal and in a CI log."""

    def __init__(self, names: list[str], will_run: list[bool], expected: list[float]):
        self.names, self.will_run, self.expected = names, will_run, expected
        self.t0, self.done_s, self.done_expected = time.perf_counter(), 0.0, 0.0
        self.times: dict[str, float | None] = {}

    def rest(self, i: int) -> float:
        """Seconds expected for steps i.. that will run, scaled by this run's pace (within 4x either way)."""
        # shrunk towards 1 by PRIOR_S of expected time: one quick step says little about the pace
        pace = min(4.0, max(0.25, (self.done_s + PRIOR_S) / (self.done_expected + PRIOR_S)))
        return pace * sum(e for e, r in zip(self.expected[i:], self.will_run[i:]) if r)

    def start(self, i: int, stage: str) -> str:
        n_run = sum(self.will_run)
        k = sum(self.will_run[:i]) + 1
        return (f"\n== {self.names[i]} ({stage})  [step {i + 1}/{len(self.names)}, {k} of {n_run} to run]  "
                f"elapsed {_clock(time.perf_counter() - self.t0)}, about {_clock(self.rest(i))} to go")

    def finish(self, i: int, seconds: float) -> None:
        self.times[self.names[i]] = seconds
        self.done_s += seconds
        self.done_expected += self.expected[i]

    def table(self) -> str:
        total = time.perf_counter() - self.t0
        w = max(len(n) for n in self.names) + 2
        rows = [f"  {n:<{w}}" + (f"{self.times[n]:8.1f} s" if n in self.times else f"{'skipped':>10}")
                for n in self.names]
        return f"\nrecipe done in {_clock(total)} ({total:.0f} s); wall time per step:\n" + "\n".join(rows)


def wait_for_people(store_dir: str, port: int, poll_s: float = 1.0, say_every_s: float = 30.0) -> None:
    """--human: serve the store's ranking page and wait until every task is ranked.

    The token is kept in STORE/human-token (mode 600) so an interrupted wait resumes as the same
    annotator; Ctrl-C stops the page and leaves the store as it is (the step re-runs next time)."""
    import subprocess

    from rlhfkit.feedback.store import FeedbackStore

    token_file = Path(store_dir) / "human-token"
    with FeedbackStore.for_run(store_dir) as store:
        token = token_file.read_text().strip() if token_file.is_file() else ""
        if not store.authenticate(token):
            names = {a["name"] for a in store.annotators()}
            name = next(n for n in ("you", *(f"you-{i}" for i in range(2, 10 ** 6))) if n not in names)
            token = store.add_annotator(name)
            token_file.touch(mode=0o600)
            atomic_write_text(token_file, token + "\n")
            token_file.chmod(0o600)

        def left() -> tuple[int, int]:
            c = store.counts()
            return c["tasks_complete"], c["tasks"]

        done, total = left()
        if total == 0:
            raise UserError(f"{store_dir}: no ranking tasks to rank (the step before fills them)")
        server = subprocess.Popen([sys.executable, "-m", "rlhfkit", "label", store_dir, "--port", str(port)])
        try:
            print(f"\nrank the jokes yourself: open http://127.0.0.1:{port}/ and sign in with the token below\n"
                  f"  ({total} tasks, {done} ranked; the run goes on when all are ranked; Ctrl-C stops here and "
                  f"the same command with --human resumes)\n  token: {token}", flush=True)
            said, last = time.monotonic(), done
            while done < total:
                if server.poll() is not None:
                    raise UserError(f"the ranking page stopped (exit code {server.returncode}); "
                                    f"is port {port} free? (--port)")
                time.sleep(poll_s)
                done, total = left()
                if done != last and time.monotonic() - said >= say_every_s or done == total:
                    print(f"  ranked {done}/{total}", flush=True)
                    said, last = time.monotonic(), done
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


def run_recipe(path: Path, run: str | None = None, sets: list[str] | None = None,
               force: list[str] | None = None, labeler: str | None = None, seed: int | None = None,
               human: bool = False, port: int = 8000, until: str | None = None) -> None:
    from rlhfkit.cli import COMMANDS

    force = force or []
    run, description, steps, env, eta = load_recipe(path, run, sets or [], {"labeler": labeler, "seed": seed})
    if until in steps:  # only the steps up to this one (demo --loop: the world, pre-training and SFT)
        steps = dict(list(steps.items())[: list(steps).index(until) + 1])
    for name, raw in steps.items():
        stage = raw.get("stage", name)
        if stage not in COMMANDS or stage in ("run", "demo"):
            raise UserError(f"{path}: step [{name}] names unknown stage '{stage}'")
    if any("{labeler}" in json.dumps(t) for t in steps.values()):
        from rlhfkit.feedback.labelers import load_gold

        load_gold(env["labeler"])  # a bad labeler fails here, before any step runs
    state_path = Path(run) / "recipe-state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    print(f"recipe {path.name} -> {run}" + (f": {description}" if description else ""))
    names = list(steps)
    view = LiveView(names, _plan(steps, env, state, force, human), expected_seconds(names, state, eta))
    # `prev` is the stamp of the last step that produces outputs: a fresh random stamp each
    # time that step runs, so every step after a re-run step re-runs too (even under --force)
    prev = ""
    stamp_of: dict[str, str] = {}  # this run's stamp of each step so far (for `after`)
    for i, (name, raw) in enumerate(steps.items()):
        stage = raw.get("stage", name)
        table = {k: _substitute(v, env) for k, v in raw.items()}
        keys = {k: v for k, v in table.items() if k not in STEP_KEYS}
        fp = _fingerprint(name, raw, table, env, _follows(table, prev, stamp_of), human)
        done = state.get(name) if isinstance(state.get(name), dict) else {}
        if done.get("fp") == fp and not table.get("always") and name not in force:
            print(f"\n== {name}: unchanged since it last finished, skipped  [step {i + 1}/{len(names)}]")
            prev = stamp_of[name] = done["stamp"]
            continue
        if "fp" in done:
            # it finished before (under other settings, or --force): what it wrote belongs to that
            # run, so it starts afresh (an interrupted step has no state entry and resumes instead)
            if "out" in keys:
                shutil.rmtree(Path(keys["out"]) / "checkpoints", ignore_errors=True)
            for path_ in table.get("clean", []):
                shutil.rmtree(path_, ignore_errors=True) if Path(path_).is_dir() else Path(path_).unlink(missing_ok=True)
        print(view.start(i, stage), flush=True)
        t = time.perf_counter()
        if human and _human_store(name, table):
            wait_for_people(_human_store(name, table), port)
        else:
            _run_step(path, name, stage, table, keys, COMMANDS)
        seconds = time.perf_counter() - t
        view.finish(i, seconds)
        state[name] = {"time_s": round(seconds, 1)}  # the next run's estimate
        if not table.get("always"):
            prev = stamp_of[name] = hashlib.sha256(f"{fp}:{time.time_ns()}".encode()).hexdigest()
            state[name].update(fp=fp, stamp=prev)
        Path(run).mkdir(parents=True, exist_ok=True)
        atomic_write_text(state_path, json.dumps(state, indent=1))
    print(view.table())
    print(f"outputs: {run}/")
    report = Path(run) / "report.html"
    if report.is_file():  # the last lines: where to look
        print(f"report: {report}\n        {report.resolve().as_uri()}", flush=True)


def _run_step(path: Path, name: str, stage: str, table: dict, keys: dict, commands: dict) -> None:
    module = importlib.import_module(commands[stage][0])
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
    p.add_argument("--human", action="store_true",
                   help="you rank the jokes: the ranking step serves its page (address and token printed) and waits "
                        "until every task is ranked, instead of the simulated person")
    p.add_argument("--port", type=int, default=8000, help="with --human: the ranking page's port (default 8000)")
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
                       a.force, a.labeler, a.seed, a.human, a.port)
            return 0
    else:
        path = Path(a.recipe)
    run_recipe(path, a.run, a.set, a.force, a.labeler, a.seed, a.human, a.port)
    return 0
