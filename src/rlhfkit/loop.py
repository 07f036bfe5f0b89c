"""The iterated RLHF loop: rounds of sample -> rank -> retrain the reward model -> RL -> mine exploits.

    rlhfkit loop --config loop.toml [--set rounds=3] [--set ppo.max_steps=40] [--set reward.epochs=3]
    rlhfkit demo --loop                      # the packaged recipes/demo_loop.toml on the demo world

Round r (1..rounds), each in OUT/round-r/:
1. sample: the round's start policy (round 1: `model`; round r: round r-1's shipped checkpoint,
   its ppo/best/) writes `k` responses to each of the round's `prompts_per_round` prompts (the
   next slice of `prompts`, wrapping around) into the loop's one store, OUT/feedback.db
   (round-r/feedback/ holds the slice and fill-config.toml);
2. rank: `labeler` (a simulated person, module:function) ranks every open task in the store, the
   fresh ones and the exploits mined in the round before; with no labeler people rank them on
   the ranking page (`rlhfkit label OUT`) and the loop stops until they have: rerun it then;
3. reward: a reward model trained on ALL rankings in the store so far -> round-r/rm
   (the `[reward]` table's keys; `model` defaults to the loop's `model`);
4. ppo: PPO from the round's start policy against that reward model, with the guard ->
   round-r/ppo with best/ and guard.json (the `[ppo]` table's keys; `gold` is logged for the
   table only: the guard and every decision of the loop ignore it);
5. mine: the guard's exploits (rlhfkit.mining) go into the store as ranking tasks, so round r+1's
   labeler ranks the model's own exploits and round r+1's reward model learns from them.

The config is TOML: the loop's keys flat, plus `[reward]` and `[ppo]` tables passed through to
those stages (`out`, `model`, `data` and `reward` are the loop's to set). `--set ppo.KEY=V` and
`--set reward.KEY=V` override a table's key. Writes OUT/loop.json (the rounds table) and prints
it; per round: the rankings the reward model was trained on, its held-out accuracy, the
guard's stop and shipped steps, the shipped policy's proxy reward (under that round's reward
model) and gold (if `gold` is set), and the top exploit's text.

Resumable: OUT/loop-state.json records each finished step of each round (written atomically);
a rerun skips finished rounds and steps (sampling, ranking and mining are idempotent anyway).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhfkit.config import _at_least, _parse_set, config_from_dict, describe, key, save_config
from rlhfkit.files import UserError, atomic_write_text

TABLES = ("reward", "ppo")
OWNED = {"reward": ("out", "data", "db"), "ppo": ("out", "model", "reward")}  # the loop sets these per round


@dataclass
class LoopConfig:
    out: str = key("runs/loop", "the loop's directory: feedback.db, round-N/, loop.json")
    model: str = key("runs/demo/sft", "round 1's start policy (and the reward models' init unless reward.model)")
    prompts: str = key("", "prompts JSONL to rank; each round takes the next prompts_per_round of them")
    prompts_per_round: int = key(64, "prompts sampled and ranked per round", check=_at_least(1))
    k: int = key(4, "responses per prompt (the K a person ranks)", check=_at_least(2))
    max_new_tokens: int = key(48, "tokens per sampled response at most")
    temperature: float = key(1.0, "sampling temperature of the ranked responses")
    rounds: int = key(2, "rounds of sample -> rank -> reward -> ppo -> mine", check=_at_least(1))
    labeler: str = key("rlhfkit.rewards.gold:joke", "who ranks: module:function, a simulated person (also the "
                                                    "guard's, unless ppo.guard_labeler); empty: people")
    labeler_temperature: float = key(0.15, "the simulated person's noise (0.15: ~71% agreement, as people)")
    gold: str = key("", "module:function logged beside the proxy, for the rounds table only (never decides)")
    mine: bool = key(True, "queue each round's exploits for the next round's rankings")
    seed: int = key(0, "seed of round 1; round r samples, ranks and runs PPO with seed + r - 1")


# ------------------------------------------------------------------------------ config

def load(path: str | None, sets: list[str]) -> tuple[LoopConfig, dict[str, dict]]:
    """The loop's keys and its [reward] / [ppo] tables, from a TOML file and --set items."""
    data: dict = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: config not found") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
    tables = {t: dict(data.pop(t, {})) for t in TABLES}
    flat_sets = []
    for item in sets:
        name, value = _parse_set(item)
        table, dot, k = name.partition(".")
        if dot and table in TABLES and k:
            tables[table][k] = value
        else:
            flat_sets.append(item)
    for t, keys in tables.items():
        taken = sorted(set(keys) & set(OWNED[t]))
        if taken:
            raise UserError(f"[{t}] {', '.join(taken)}: set by the loop for each round (leave them out)")
    cfg = config_from_dict(LoopConfig, data, path or "loop config", flat_sets, stage="loop")
    if not cfg.prompts:
        raise UserError("loop: set `prompts` (a JSONL file of prompts to rank)")
    return cfg, tables


def stage_configs(cfg: LoopConfig, tables: dict[str, dict], r: int, start: str) -> tuple:
    """Round r's reward and PPO configs (validated as those stages validate their own)."""
    from rlhfkit.stages import ppo, reward

    rd = Path(cfg.out) / f"round-{r}"
    rkeys = {"model": cfg.model, "seed": cfg.seed, **tables["reward"], "out": str(rd / "rm"), "data": cfg.out}
    pkeys = {"value_init": f"rm:{rd / 'rm'}", "seed": cfg.seed + r - 1, "guard_labeler": cfg.labeler,
             "guard_labeler_temperature": cfg.labeler_temperature, "prompts": cfg.prompts, "gold": cfg.gold,
             **tables["ppo"], "out": str(rd / "ppo"), "model": start, "reward": f"rm:{rd / 'rm'}"}
    return (config_from_dict(reward.Config, rkeys, "loop [reward]", stage="reward"),
            config_from_dict(ppo.Config, pkeys, "loop [ppo]", stage="ppo"))


# ------------------------------------------------------------------------------ the steps of a round

def prompt_slice(cfg: LoopConfig, r: int, out: Path) -> Path:
    """Round r's prompts: the next prompts_per_round of `prompts`, wrapping around -> out/prompts.jsonl."""
    from rlhfkit.data import read_prompts

    if (out / "prompts.jsonl").is_file():  # a resumed round keeps its prompts (fill's task keys hold them)
        return out / "prompts.jsonl"
    recs = read_prompts(cfg.prompts)
    lo = (r - 1) * cfg.prompts_per_round
    chosen = [recs[(lo + i) % len(recs)] for i in range(min(cfg.prompts_per_round, len(recs)))]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "prompts.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chosen))
    return out / "prompts.jsonl"


def sample(cfg: LoopConfig, r: int, start: str) -> int:
    from rlhfkit.feedback.cli import FillConfig, fill

    rd = Path(cfg.out) / f"round-{r}" / "feedback"
    fc = config_from_dict(FillConfig, {
        "out": str(rd), "model": start, "prompts": str(prompt_slice(cfg, r, rd)), "k": cfg.k,
        "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "seed": cfg.seed + r - 1,
        "db": str(Path(cfg.out) / "feedback.db")}, "loop fill", stage="feedback fill")
    return fill(fc)


def rank(cfg: LoopConfig, r: int) -> bool:
    """The labeler ranks every open task; -> False when people still have tasks to rank."""
    from rlhfkit.feedback.labelers import load_gold, simulate
    from rlhfkit.feedback.store import FeedbackStore

    with FeedbackStore.for_run(cfg.out) as store:
        if cfg.labeler:
            added = simulate(store, load_gold(cfg.labeler), annotators=1, temperature=cfg.labeler_temperature,
                             seed=cfg.seed + r - 1, kinds=("rank",))
            print(f"loop: round {r}: {sum(added.values())} tasks ranked by {cfg.labeler}")
            return True
        c = store.counts()
    left = c["tasks"] - c["tasks_complete"]
    if left:
        print(f"loop: round {r}: {left} tasks wait for people: `rlhfkit label {cfg.out}`, then run the loop again")
    return not left


def row(r: int, rm_dir: Path, ppo_dir: Path, mined: int, rankings: int) -> dict:
    """The rounds table's line for a finished round, read from what its stages wrote."""
    from rlhfkit.files import read_jsonl

    guard = json.loads((ppo_dir / "guard.json").read_text()) if (ppo_dir / "guard.json").is_file() else {}
    ev = json.loads((rm_dir / "eval.json").read_text())["metrics"] if (rm_dir / "eval.json").is_file() else {}
    shipped = guard.get("shipped_step")
    at = [s for s in read_jsonl(ppo_dir / "samples.jsonl") if s["step"] == shipped] \
        if shipped is not None and (ppo_dir / "samples.jsonl").is_file() else []
    golds = [s["gold"] for s in at if "gold" in s]
    ex = guard.get("exploits") or []
    return {"round": r, "rankings": rankings, "rm_accuracy": ev.get("rm/accuracy"),
            "stop_step": guard.get("stop_step"), "shipped_step": shipped, "reason": guard.get("reason"),
            "proxy": sum(s["reward"] for s in at) / len(at) if at else None,
            "gold": sum(golds) / len(golds) if golds else None, "labels_used": guard.get("labels_used"),
            "top_exploit": ex[0]["response"] if ex else None, "exploits_mined": mined,
            "shipped": str(shipped_dir(ppo_dir))}


def shipped_dir(ppo_dir: Path) -> Path:
    """What a round ships: the guard's best/, or (guard off) the run's final model."""
    return ppo_dir / "best" if (ppo_dir / "best" / "config.json").is_file() else ppo_dir


def table(rows: list[dict]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    lines = [f"{'round':>5} {'rankings':>8} {'rm_acc':>6} {'stop':>5} {'ship':>5} {'proxy':>7} {'gold':>7}  "
             "top exploit"]
    for x in rows:
        ex = (x["top_exploit"] or "-").replace("\n", " ")
        lines.append(f"{x['round']:>5} {x['rankings']:>8} {f(x['rm_accuracy'], '.3f'):>6} {f(x['stop_step'], 'd'):>5} "
                     f"{f(x['shipped_step'], 'd'):>5} {f(x['proxy'], '.3f'):>7} {f(x['gold'], '.3f'):>7}  "
                     f"{ex[:70] + ('...' if len(ex) > 70 else '')}")
    return "\n".join(lines) + "\n(proxy: under that round's reward model; gold: logged only, never decides)"


# ------------------------------------------------------------------------------ the loop

def run(cfg: LoopConfig, tables: dict[str, dict]) -> list[dict]:
    from rlhfkit.feedback.store import FeedbackStore
    from rlhfkit.mining import mine
    from rlhfkit.rankings import load_rankings, usable
    from rlhfkit.stages import ppo, reward

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stage_configs(cfg, tables, 1, cfg.model)  # a bad [reward] / [ppo] key fails before any round runs
    save_config(cfg, out / "config.toml", stage="loop")
    atomic_write_text(out / "tables.json", json.dumps(tables, indent=1) + "\n")
    state_path = out / "loop-state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"rounds": {}}

    def save() -> None:
        atomic_write_text(state_path, json.dumps(state, indent=1) + "\n")

    rows, start = [], cfg.model
    for r in range(1, cfg.rounds + 1):
        st = state["rounds"].setdefault(str(r), {"done": []})
        rd = out / f"round-{r}"
        if "row" in st:
            print(f"\n== loop round {r}: finished before, skipped")
            rows.append(st["row"])
            start = st["row"]["shipped"]
            continue
        print(f"\n== loop round {r} (start: {start})", flush=True)
        rcfg, pcfg = stage_configs(cfg, tables, r, start)
        if "sample" not in st["done"]:
            sample(cfg, r, start)
            st["done"].append("sample")
            save()
        if not rank(cfg, r):
            return rows  # people have tasks to rank; a rerun continues here
        if "reward" not in st["done"]:
            st["rankings"] = len(usable(load_rankings(cfg.out), rcfg.skip_all_bad))
            reward.run(rcfg)
            st["done"].append("reward")
            save()
        if "ppo" not in st["done"]:
            ppo.run(pcfg)
            st["done"].append("ppo")
            save()
        mined = 0
        if cfg.mine:
            with FeedbackStore.for_run(cfg.out) as store:
                mined = len(mine(rd / "ppo", store))
            print(f"loop: round {r}: {mined} exploits queued for ranking")
        st["row"] = row(r, rd / "rm", rd / "ppo", mined, st.get("rankings", 0))
        save()
        rows.append(st["row"])
        start = st["row"]["shipped"]
        atomic_write_text(out / "loop.json", json.dumps({"rounds": rows}, indent=1) + "\n")
    atomic_write_text(out / "loop.json", json.dumps({"rounds": rows, "config": asdict(cfg), **tables},
                                                    indent=1) + "\n")
    print("\n" + table(rows))
    return rows


def cli(name: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog=f"rlhfkit {name}", description=__doc__.strip().split("\n")[0],
        epilog=__doc__.strip().split("\n", 1)[1] + "\nkeys (name, default, meaning):\n" + describe(LoopConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML: the loop's keys, plus [reward] and [ppo] tables")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key (reward.KEY=V, ppo.KEY=V: a stage table's key)")
    a = p.parse_args(argv)
    cfg, tables = load(a.config, a.set)
    run(cfg, tables)
    return 0
