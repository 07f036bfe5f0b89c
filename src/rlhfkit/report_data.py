"""Reading a run directory for the report: its stages, their configs, metrics and side files.

A stage directory is one whose config.toml starts "# rlhfkit STAGE" (written by save_config), a
feedback store (feedback.db), or the world (its README). Readers here are lenient where a report
should still show the rest: an unreadable line or file becomes a note on the stage, never an error.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit import report_plots as plots
from rlhfkit.files import UserError

PIPELINE = ["world", "tokenizer", "pretrain", "sft", "feedback", "reward", "ppo", "grpo", "rloo", "dpo", "eval"]
RL_KINDS = ("ppo", "grpo", "rloo")
SKIP_DIRS = {"checkpoints", "best", "candidates", "ref_logprobs", "__pycache__"}


@dataclass
class Stage:
    kind: str
    path: Path
    name: str  # path relative to RUN, as the page shows it
    config: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict)  # what the extras functions read, read once


# ------------------------------------------------------------------------------ reading RUN

def _kind(d: Path) -> str | None:
    for name in ("config.toml", "fill-config.toml"):
        p = d / name
        if p.is_file():
            first = p.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
            if first.startswith("# rlhfkit ") and first.split()[2:]:
                return first.split()[2]
    if (d / "feedback.db").is_file():
        return "feedback"
    readme = d / "README.md"
    if readme.is_file() and readme.read_text(errors="replace").startswith("# rlhfkit synthetic world"):
        return "world"
    return None


def read_rows(path: Path) -> tuple[list[dict], int]:
    """metrics.jsonl -> (rows, unreadable lines): a report shows what it can, a stage killed mid-line included."""
    if not path.is_file():
        return [], 0
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            rows.append(rec)
        else:
            bad += 1
    return rows, bad


def read_json(path: Path, notes: list[str]):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        notes.append(f"{path.name}: unreadable ({e})")
        return None


def discover(run: Path) -> list[Stage]:
    """Every stage directory of RUN (RUN itself, its children and grandchildren), in pipeline order."""
    cands = [run] + [d for d in sorted(run.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    cands += [g for d in cands[1:] if d.name not in SKIP_DIRS for g in sorted(d.iterdir())
              if g.is_dir() and not g.name.startswith(".") and g.name not in SKIP_DIRS]
    stages = []
    for d in cands:
        kind = _kind(d)
        if kind is None or (d == run and kind != "feedback"):
            continue
        st = Stage(kind, d, "." if d == run else d.relative_to(run).as_posix())
        cfg = d / ("fill-config.toml" if kind == "feedback" else "config.toml")
        if cfg.is_file():
            try:
                st.config = tomllib.loads(cfg.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                st.notes.append(f"{cfg.name}: unreadable ({e})")
        st.rows, bad = read_rows(d / "metrics.jsonl")
        if bad:
            st.notes.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")
        stages.append(st)
    order = {k: i for i, k in enumerate(PIPELINE)}
    return sorted(stages, key=lambda s: (order.get(s.kind, len(order)), s.name))


def last(rows: list[dict], key: str):
    _, ys = plots.series(rows, key)
    return ys[-1] if ys else None


def first(rows: list[dict], key: str):
    _, ys = plots.series(rows, key)
    return ys[0] if ys else None


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (bool, int)):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def short(model: str, run: Path) -> str:
    """A model path as the page names it: relative to RUN when inside it."""
    try:
        return Path(model).resolve().relative_to(run.resolve()).as_posix()
    except (ValueError, OSError):
        return model


# ------------------------------------------------------------------------------ per-stage extras

def cached(fn):
    def wrapper(st: Stage):
        if fn.__name__ not in st.cache:
            st.cache[fn.__name__] = fn(st)
        return st.cache[fn.__name__]
    wrapper.__doc__ = fn.__doc__
    return wrapper


@cached
def feedback_stats(st: Stage) -> dict | None:
    """Counts, annotator agreement and arena ratings from the store (read only; nothing is created)."""
    db = st.path / "feedback.db"
    if not db.is_file():
        return None
    import sqlalchemy as sa

    from rlhfkit.feedback import stats
    from rlhfkit.feedback.store import FeedbackStore

    try:
        with FeedbackStore.for_run(st.path) as store:
            rankings = store.rankings()
            return {"counts": store.counts(), "agreement": stats.agreement(rankings),
                    "arena": stats.arena_ratings(rankings)}
    except (UserError, ValueError, KeyError, sa.exc.SQLAlchemyError) as e:  # the rest of the run still shows
        st.notes.append(f"feedback.db: unreadable ({type(e).__name__}: {e})")
        return None


@cached
def rl_extras(st: Stage) -> dict:
    """guard.json, samples.jsonl, the steps to compare (first eval; shipped or last) and the plot marks."""
    guard = read_json(st.path / "guard.json", st.notes)
    samples, bad = read_rows(st.path / "samples.jsonl")
    if bad:
        st.notes.append(f"samples.jsonl: {bad} unreadable line(s) skipped")
    steps = sorted({s["step"] for s in samples if plots.number(s.get("step"))})
    after = guard.get("shipped_step") if isinstance(guard, dict) else None
    if after not in steps:
        after = steps[-1] if steps else None
    _, golds = plots.series(st.rows, "eval/gold_mean")
    gold_steps, _ = plots.series(st.rows, "eval/gold_mean")
    # the gold peak is marked only where gold moved: a flat curve has no peak to stop near
    peak = gold_steps[golds.index(max(golds))] if golds and max(golds) > min(golds) else None
    marks = {"peak": peak}
    if isinstance(guard, dict):
        marks.update(shipped=guard.get("shipped_step"), stop=guard.get("stop_step"))
    return {"guard": guard if isinstance(guard, dict) else None, "samples": samples, "steps": steps,
            "before": steps[0] if steps else None, "after": after, "marks": marks}


def verifiable(st: Stage) -> bool:
    return str(st.config.get("reward", "")).strip() == "math" or last(st.rows, "eval/accuracy") is not None
