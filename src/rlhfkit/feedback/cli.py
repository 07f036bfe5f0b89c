"""`rlhfkit feedback`: fill a run's store with tasks, add annotators, simulate, import, export, stats.

    rlhfkit feedback fill --config fill.toml --set k=5          # sample K responses per prompt, queue tasks
    rlhfkit feedback add-annotator runs/fb alice [--role admin]  # prints the token on its last line
    rlhfkit label runs/fb --port 8000                            # people rank in the browser (feedback/app.py)
    rlhfkit feedback simulate runs/fb --labeler rlhfkit.rewards.gold:joke --annotators 3 --temperature 0.5
    rlhfkit feedback import runs/fb hh-rlhf.jsonl.gz [--format auto|rlhfkit|hh|trl|oasst]
    rlhfkit feedback export runs/fb --out prefs.jsonl [--pairs]
    rlhfkit feedback stats runs/fb [--gold module:fn] [--json]
    rlhfkit feedback mine runs/demo/ppo --store runs/demo/feedback  # the RL run's exploits -> rank tasks

The store is RUN/feedback.db (SQLite) unless `--db` (or fill's `db` key) names a database
URL such as postgresql://user@host/rlhf. Export/import record formats: see feedback/formats.py.
`fill` and `import` are idempotent: run again, they add only what is not in the store yet (a
killed fill, rerun, finishes the rest); `simulate`, `export` and `stats` need an existing store.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import describe, key, load_config, save_config
from rlhfkit.files import UserError


@dataclass
class FillConfig:
    out: str = key("runs/demo/feedback", "run dir: feedback.db and fill-config.toml are written here")
    model: str = key("runs/demo/sft", "the model that samples the responses (dir, .gguf or hub id)")
    prompts: str = key("", "JSONL, one {\"prompt\": str} or {\"messages\": [...]} per line (chat template applied)")
    k: int = key(5, "responses sampled per prompt (the K a person ranks)")
    max_new_tokens: int = key(64, "tokens per response at most")
    temperature: float = key(1.0, "sampling temperature (diverse responses make rankings informative)")
    top_p: float = key(0.95, "nucleus sampling mass")
    seed: int = key(0, "sampling seed")
    overlap: int = key(1, "annotators who rank each task (>= 2 measures agreement)")
    max_prompts: int = key(0, "use the first N prompts (0: all)")
    batch_size: int = key(32, "sequences per generate call (prompts x k)")
    backend: str = key("torch", "sampler backend: torch or hf")
    db: str | None = key(None, "database URL (postgresql://...) or SQLite path; unset: OUT/feedback.db")


FILL_AGAIN = """\
A second run adds nothing new: each prompt's task carries a key made of the prompt record
(and which occurrence of it in the file), the model (its path, and its weight files' sizes
and times: a model retrained in place is a new one) and the sampling settings (k,
temperature, top_p, max_new_tokens, seed, backend), and prompts whose key is already in
the store are not sampled again. So a killed fill, rerun with the same settings, samples
only the prompts it had not stored (a batch is stored whole or not at all), and ends with
exactly the tasks one uninterrupted run makes, the same samples included (each batch has
its own seed). Changing a sampling setting or the model queues a new task per prompt;
overlap and batch_size are not part of the key."""


def _model_stamp(model: str) -> list:
    """Which model: its resolved path (runs/x and ./runs/x are one) and its weight files' names, sizes
    and modification times, so a model retrained in place is a new model; a hub id as given."""
    path = Path(model)
    if not path.exists():
        return [model]
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")) \
        if path.is_dir() else [path]
    return [str(path.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _fill_key(rec: dict, occurrence: int, model: list, sampling: dict) -> str:
    ident = ["fill", occurrence, rec, model, sampling]
    return hashlib.sha256(json.dumps(ident, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _batch_seed(seed: int, start: int) -> int:
    """The sampling seed of the batch that starts at prompt `start`: a rerun samples it identically."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{start}".encode()).digest()[:8], "big") >> 1


def fill(cfg: FillConfig) -> int:
    """Sample cfg.k responses for each prompt not yet in the store and queue one ranking task per
    prompt; -> tasks queued by this run (0 when an earlier run did them all; see FILL_AGAIN)."""
    from rlhfkit.data import read_prompts
    from rlhfkit.feedback.store import FeedbackStore

    if not cfg.prompts:
        raise UserError("feedback fill: set `prompts` (a JSONL file of prompts)")
    if cfg.k < 2:
        raise UserError(f"feedback fill: k must be >= 2 to rank anything, got {cfg.k}")
    if cfg.overlap < 1:
        raise UserError(f"feedback fill: overlap must be >= 1, got {cfg.overlap}")
    if cfg.batch_size < 1:
        raise UserError(f"feedback fill: batch_size must be >= 1, got {cfg.batch_size}")
    records = read_prompts(cfg.prompts)
    if cfg.max_prompts > 0:
        records = records[: cfg.max_prompts]
    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
                "seed": cfg.seed}
    ident = {**sampling, "k": cfg.k, "backend": cfg.backend}
    seen: dict[str, int] = {}
    keys, stamp = [], _model_stamp(cfg.model)
    for rec in records:
        text = json.dumps(rec, sort_keys=True, ensure_ascii=False)
        keys.append(_fill_key(rec, seen.get(text, 0), stamp, ident))
        seen[text] = seen.get(text, 0) + 1
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    store = FeedbackStore.for_run(out, cfg.db)  # open (and check the schema) before the slow part
    try:
        done = store.task_keys(keys)
        save_config(cfg, out / "fill-config.toml", stage="feedback fill")
        queued = _sample_into(store, cfg, records, keys, done, sampling) if len(done) < len(keys) else 0
    finally:
        store.close()
    again = f"; {len(done)} prompts were already in the store" if done else ""
    print(f"queued {queued} ranking tasks of {cfg.k} responses (overlap {cfg.overlap}) in {out}{again}")
    return queued


def _sample_into(store, cfg: FillConfig, records: list[dict], keys: list[str], done: set[str],
                 sampling: dict) -> int:
    import torch

    from rlhfkit.data import encode_prompt
    from rlhfkit.generation import generate
    from rlhfkit.models import eos_token_ids, load_causal_lm, load_tokenizer

    tok = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model)
    eos = eos_token_ids(model, tok)
    per_batch = max(1, cfg.batch_size // cfg.k)  # whole prompts per batch: a task's K responses land together
    queued, total = 0, len(records) - len(done)
    for start in range(0, len(records), per_batch):
        batch = [(r, key) for r, key in zip(records[start: start + per_batch], keys[start: start + per_batch])
                 if key not in done]
        if not batch:
            continue
        ids = [encode_prompt(tok, r["messages"]) for r, _ in batch]
        gen = torch.Generator().manual_seed(_batch_seed(cfg.seed, start))
        rollout = generate(model, [p for p in ids for _ in range(cfg.k)], max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, eos_token_ids=eos,
                           pad_token_id=tok.pad_token_id, generator=gen, backend=cfg.backend)
        texts = rollout.texts(tok)
        store.add_sampled_many([(r["prompt"], {k: v for k, v in r.items() if k != "prompt"},
                                 texts[i * cfg.k: (i + 1) * cfg.k], key) for i, (r, key) in enumerate(batch)],
                               cfg.model, sampling, overlap=cfg.overlap)
        queued += len(batch)
        print(f"feedback fill: {queued}/{total} prompts sampled", file=sys.stderr, flush=True)
    return queued


# ------------------------------------------------------------------------------ the command

def _store(a):
    from rlhfkit.feedback.store import FeedbackStore

    if a.cmd == "import":
        Path(a.run).mkdir(parents=True, exist_ok=True)
    elif not a.db and not Path(a.run).is_dir():
        raise UserError(f"{a.run}: run directory not found (make one with `rlhfkit feedback fill` "
                        "or `rlhfkit feedback import`)")
    elif a.cmd in READERS:  # reading an empty place must not leave an empty database behind
        path = Path(a.db) if a.db and "://" not in a.db else None if a.db else Path(a.run) / "feedback.db"
        if path is not None and not path.is_file():
            raise UserError(f"{path}: no feedback store here (fill it with `rlhfkit feedback fill` or "
                            "`rlhfkit feedback import`, or give --db)")
    if a.cmd == "export":
        out = Path(a.out)
        if out.is_dir() or a.out.endswith(("/", "\\")):
            raise UserError(f"--out {a.out}: is a directory; give a file name such as {out / 'prefs.jsonl'}")
        if out.parent.exists() and not out.parent.is_dir():
            raise UserError(f"--out {a.out}: {out.parent} is a file, not a directory")
    return FeedbackStore.for_run(a.run, a.db)


def _parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"rlhfkit {name}", description=__doc__.strip().split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(cmd: str, help: str, run: bool = True, **kw) -> argparse.ArgumentParser:
        sp = sub.add_parser(cmd, help=help, description=help, **kw)
        if run:
            sp.add_argument("run", help="run directory (holds feedback.db)")
            sp.add_argument("--db", help="database URL or SQLite path instead of RUN/feedback.db")
        return sp

    sp = add("fill", "sample K responses per prompt from a model and queue ranking tasks", run=False,
             epilog=FILL_AGAIN + "\n\nkeys (name, default, meaning):\n" + describe(FillConfig),
             formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--config", help="TOML file of flat key = value pairs")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")

    sp = add("add-annotator", "create an annotator; prints the login token on the last line")
    sp.add_argument("name")
    sp.add_argument("--role", default="annotator", choices=["annotator", "admin"])

    sp = add("simulate", "answer queued tasks with simulated annotators (noisy Plackett-Luce over a gold score)")
    sp.add_argument("--labeler", required=True, metavar="MODULE:FUNCTION",
                    help="gold score fn(prompt, response) -> float, e.g. rlhfkit.rewards.gold:joke")
    sp.add_argument("--temperature", type=float, default=0.5, help="noise: 0 is a perfect labeler")
    sp.add_argument("--annotators", type=int, default=3, help="simulated annotators sim-1..sim-N")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--kind", choices=["rank", "arena", "all"], default="all")
    sp.add_argument("--all-bad-below", type=float, default=None, help="flag all bad when the best gold is below")
    sp.add_argument("--tie-margin", type=float, default=None, help="2-way: tie when gold differs by at most this")

    sp = add("import", "import rankings or preference pairs from a file (source 'imported')")
    sp.add_argument("file", help=".jsonl or .jsonl.gz")
    sp.add_argument("--format", default="auto", choices=["auto", "rlhfkit", "hh", "trl", "oasst"])
    sp.add_argument("--annotator", default=None, help="annotator name for records without one (default: import:FORMAT)")

    sp = add("export", "write rankings (or their chosen/rejected pairs) as JSONL")
    sp.add_argument("--out", required=True, help="output .jsonl or .jsonl.gz")
    sp.add_argument("--pairs", action="store_true", help="one {prompt, chosen, rejected} line per implied pair")
    sp.add_argument("--source", choices=["human", "simulated", "imported", "arena"], help="only this source")

    sp = add("stats", "counts, throughput, inter-annotator agreement, arena ratings")
    sp.add_argument("--gold", metavar="MODULE:FUNCTION", help="also score each annotator against this gold function")
    sp.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for rating intervals")
    sp.add_argument("--json", action="store_true", help="print the numbers as JSON")

    sp = add("mine", "queue an RL run's exploits (guard.json) as ranking tasks (rlhfkit.mining)", run=False)
    sp.add_argument("rl_dir", help="an RL run's out dir (guard.json, samples.jsonl)")
    sp.add_argument("--store", required=True, help="run directory of the store to add to (its feedback.db)")
    sp.add_argument("--db", help="database URL or SQLite path instead of STORE/feedback.db")
    sp.add_argument("--limit", type=int, default=0, help="keep the strongest N exploits (0: all)")
    return p


def cli(name: str, argv: list[str]) -> int:
    a = _parser(name).parse_args(argv)
    if a.cmd == "fill":
        fill(load_config(FillConfig, a.config, a.set, stage="feedback fill"))
        return 0
    if a.cmd == "mine":
        return _mine(a)
    store = _store(a)
    try:
        return COMMANDS[a.cmd](store, a)
    finally:
        store.close()


def _add_annotator(store, a) -> int:
    token = store.add_annotator(a.name, a.role)
    print(f"annotator {a.name!r} ({a.role}) created; the token is shown once, only its hash is stored:")
    print(token)
    return 0


def _simulate(store, a) -> int:
    from rlhfkit.feedback.labelers import load_gold, simulate

    gold = load_gold(a.labeler)
    kinds = ("rank", "arena") if a.kind == "all" else (a.kind,)
    added = simulate(store, gold, annotators=a.annotators, temperature=a.temperature, seed=a.seed, kinds=kinds,
                     all_bad_below=a.all_bad_below, tie_margin=a.tie_margin)
    print(f"simulated {sum(added.values())} rankings ({', '.join(f'{k} {v}' for k, v in added.items())})")
    return 0


def _import(store, a) -> int:
    from rlhfkit.feedback.formats import read_preferences

    records = read_preferences(a.file, a.format)
    fmt = records[0]["meta"]["format"]
    added, skipped = store.import_rankings(records, annotator=a.annotator or f"import:{fmt}")
    again = f"; {skipped} were already in the store" if skipped else ""
    print(f"imported {added} rankings from {a.file} ({fmt}){again}")
    return 0


def _export(store, a) -> int:
    from rlhfkit.feedback.formats import export_records, write_preferences

    rankings = store.rankings(source=a.source)
    records = export_records(rankings, pairs=a.pairs)
    write_preferences(records, a.out)
    what = "pairs" if a.pairs else "rankings"
    print(f"wrote {len(records)} {what} from {len(rankings)} rankings to {a.out}")
    return 0


def _stats(store, a) -> int:
    from rlhfkit.feedback.labelers import load_gold
    from rlhfkit.feedback.stats import feedback_stats, format_stats

    s = feedback_stats(store, gold=load_gold(a.gold) if a.gold else None, bootstrap=a.bootstrap)
    print(json.dumps(s, indent=2) if a.json else format_stats(s))
    return 0


def _mine(a) -> int:
    from rlhfkit.feedback.store import FeedbackStore
    from rlhfkit.mining import mine

    if not a.db and not Path(a.store).is_dir():
        raise UserError(f"--store {a.store}: run directory not found")
    with FeedbackStore.for_run(a.store, a.db) as store:
        added = mine(a.rl_dir, store, a.limit)
    print(f"mined {len(added)} new ranking tasks from {a.rl_dir} into {a.db or a.store}"
          + ("" if added else " (its exploits were already there, or it found none)"))
    return 0


READERS = ("simulate", "export", "stats")  # commands that need an existing store
COMMANDS = {"add-annotator": _add_annotator, "simulate": _simulate, "import": _import, "export": _export,
            "stats": _stats}
