"""Preference files in and out: rlhfkit JSONL, HH-RLHF, TRL pairs, OpenAssistant trees.

`read_preferences(path, format="auto")` turns any of them into ranked records

    {"prompt": str, "responses": [best, ..., worst], "meta": {"messages": [...], "file": ..., "line": n, ...},
     "annotator"?: str, "all_bad": bool, "tie": bool}

which the reward stage can train on directly, or `rlhfkit feedback import` puts in a store.
`meta["messages"]` is the prompt as a conversation ([{"role": "user"|"assistant"|"system",
"content"}], so a chat template can be applied); `prompt` is its text: the user's message
for a one-turn prompt, else the turns as "User: ...\n\nAssistant: ..." paragraphs.

Formats (plain `.jsonl` or `.jsonl.gz`; `auto` looks at the first record):
- `rlhfkit`: what `rlhfkit feedback export` writes, one ranking per line:
  {"prompt", "messages"?, "responses": [best..worst], "annotator", "source", "all_bad", "tie", "kind",
   "models", "seconds", "task_id", "created_at"}; `export --pairs` writes TRL pair lines instead.
- `hh`: Anthropic HH-RLHF {"chosen", "rejected"}, each a whole dialogue "\\n\\nHuman: ... \\n\\nAssistant: ...";
  the shared prefix up to the last common "\\n\\nAssistant:" is the prompt, the rest of each is a
  response. Also TRL's implicit-prompt form, where chosen/rejected are whole message lists.
- `trl`: {"prompt", "chosen", "rejected"}, each a string or a list of messages.
- `oasst`: OpenAssistant message trees ({"message_tree_id", "prompt": {..., "replies": [...]}}), or
  the flat message export (one message per line with "message_id", "parent_id"); every set of
  >= 2 sibling assistant replies with a `rank` is one K-way ranking (rank 0 = best), and the
  prompt is the conversation from the root to their parent.

Every format: a ranking of K > 2 responses that lists one text twice is refused at its line,
and so is a file whose pairs all have chosen == rejected (a lone such pair is kept).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from rlhfkit.files import UserError, atomic_write_bytes

FORMATS = ("auto", "rlhfkit", "hh", "trl", "oasst")
Line = tuple[str, dict]  # ("file:line", record)


# ------------------------------------------------------------------------------ helpers

def _lines(path: Path) -> Iterator[Line]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: malformed JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
                yield where, rec
    except (OSError, EOFError, UnicodeDecodeError) as e:  # a truncated .gz, a binary file
        raise UserError(f"{path}: cannot read ({e})") from None


def render_messages(messages: list[dict]) -> str:
    """The prompt text of a conversation: the user's message alone for one turn, else labelled turns."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    label = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{label.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def _messages(value: Any, where: str, what: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                              and isinstance(m.get("role"), str) for m in value):
        raise UserError(f"{where}: '{what}' must be a string or a list of {{\"role\", \"content\"}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text(value: Any, where: str, what: str) -> str:
    """A response given as a string, or as assistant messages (their contents joined)."""
    if isinstance(value, str):
        return value
    msgs = _messages(value, where, what)
    return "\n\n".join(m["content"] for m in msgs if m["role"] == "assistant") or "\n\n".join(
        m["content"] for m in msgs)


def _record(prompt_msgs: list[dict], responses: list[str], where: str, fmt: str, **extra) -> dict:
    meta = {"messages": prompt_msgs, "file": where.rsplit(":", 1)[0], "line": int(where.rsplit(":", 1)[1]),
            "format": fmt}
    meta.update(extra.pop("meta", {}))
    return {"prompt": render_messages(prompt_msgs), "responses": responses, "meta": meta,
            "all_bad": bool(extra.pop("all_bad", False)), "tie": bool(extra.pop("tie", False)), **extra}


def _need(rec: dict, keys: tuple[str, ...], where: str, fmt: str) -> None:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise UserError(f"{where}: not a {fmt} record (missing {', '.join(repr(k) for k in missing)}; "
                        f"has {', '.join(repr(k) for k in list(rec)[:6])})")


# ------------------------------------------------------------------------------ readers

def _read_rlhfkit(lines: Iterator[Line]) -> Iterator[dict]:
    for where, rec in lines:
        _need(rec, ("prompt", "responses"), where, "rlhfkit")
        resp = rec["responses"]
        if not isinstance(resp, list) or len(resp) < 2 or not all(isinstance(r, str) for r in resp):
            raise UserError(f"{where}: 'responses' must be a list of at least 2 strings, best first")
        msgs = _messages(rec["messages"], where, "messages") if rec.get("messages") else \
            [{"role": "user", "content": str(rec["prompt"])}]
        extra = {k: rec[k] for k in ("annotator", "seconds", "kind") if rec.get(k) is not None}
        meta = {k: rec[k] for k in ("source", "models", "task_id", "created_at") if rec.get(k) is not None}
        out = _record(msgs, resp, where, "rlhfkit", all_bad=rec.get("all_bad", False), tie=rec.get("tie", False),
                      meta=meta, **extra)
        out["prompt"] = str(rec["prompt"])  # keep the exact text (a rendered multi-turn prompt stays as written)
        yield out


_TURN = re.compile(r"\n\n(Human|Assistant):")
_ASSISTANT = "\n\nAssistant:"


def _parse_dialogue(text: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{"role": "user", "content": "a"}, {"role": "assistant", ...}]."""
    parts = _TURN.split(text)
    msgs = [{"role": "system", "content": parts[0].strip()}] if parts[0].strip() else []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return msgs


def _split_hh(chosen: str, rejected: str, where: str) -> tuple[list[dict], str, str, bool]:
    # The prompt ends at the last "\n\nAssistant:" lying wholly inside the common prefix. A few
    # HH pairs diverge before their final turn; then a response carries the later turns too.
    common = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(_ASSISTANT, 0, common)
    if cut < 0:
        raise UserError(f"{where}: 'chosen' and 'rejected' share no \"\\n\\nHuman: ...\\n\\nAssistant:\" prefix")
    start = cut + len(_ASSISTANT)
    a, b = chosen[start:], rejected[start:]
    return _parse_dialogue(chosen[:cut]), a.strip(), b.strip(), bool(_TURN.search(a) or _TURN.search(b))


def _split_messages(chosen: list[dict], rejected: list[dict], where: str) -> tuple[list[dict], str, str]:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and chosen[n - 1]["role"] == "assistant" and (n >= len(chosen) or chosen[n]["role"] != "assistant"):
        n -= 1  # identical final assistant turns: the prompt still ends before an assistant reply
    if n == 0:
        raise UserError(f"{where}: 'chosen' and 'rejected' share no prompt messages")
    return chosen[:n], _text(chosen[n:], where, "chosen"), _text(rejected[n:], where, "rejected")


def _read_hh(lines: Iterator[Line]) -> Iterator[dict]:
    for where, rec in lines:
        _need(rec, ("chosen", "rejected"), where, "hh")
        c, r = rec["chosen"], rec["rejected"]
        if isinstance(c, str) and isinstance(r, str):
            msgs, a, b, diverged = _split_hh(c, r, where)
            yield _record(msgs, [a, b], where, "hh", meta={"diverged_early": True} if diverged else {})
        else:
            msgs, a, b = _split_messages(_messages(c, where, "chosen"), _messages(r, where, "rejected"), where)
            yield _record(msgs, [a, b], where, "hh")


def _read_trl(lines: Iterator[Line]) -> Iterator[dict]:
    for where, rec in lines:
        _need(rec, ("prompt", "chosen", "rejected"), where, "trl")
        p = rec["prompt"]
        if rec.get("messages"):  # rlhfkit's own pair export keeps the conversation beside the text
            msgs = _messages(rec["messages"], where, "messages")
        elif isinstance(p, str):
            msgs = [{"role": "user", "content": p}]
        else:
            msgs = _messages(p, where, "prompt")
        extra = {k: rec[k] for k in ("annotator",) if rec.get(k)}
        out = _record(msgs, [_text(rec["chosen"], where, "chosen"), _text(rec["rejected"], where, "rejected")],
                      where, "trl", all_bad=rec.get("all_bad", False), **extra)
        if isinstance(p, str):
            out["prompt"] = p
        yield out


_OASST_ROLE = {"prompter": "user", "assistant": "assistant"}


def _oasst_groups(node: dict, path: list[dict], where: str, tree_id: str) -> Iterator[dict]:
    if not isinstance(node.get("text"), str) or node.get("role") not in _OASST_ROLE:
        raise UserError(f"{where}: OASST message {node.get('message_id')!r} needs 'text' and a role "
                        "'prompter' or 'assistant'")
    path = path + [{"role": _OASST_ROLE[node["role"]], "content": node["text"]}]
    kids = [k for k in node.get("replies") or [] if not k.get("deleted")]
    for k in kids:
        rank = k.get("rank")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise UserError(f"{k.get('_where', where)}: OASST message {k.get('message_id')!r}: 'rank' must be a "
                            f"whole number >= 0 (0 = best), got {rank!r}")
    ranked = sorted((k for k in kids if k.get("rank") is not None and k.get("role") == "assistant"),
                    key=lambda k: k["rank"])
    if len(ranked) >= 2:
        yield _record(list(path), [k["text"] for k in ranked], where, "oasst", meta={
            "message_tree_id": tree_id, "parent_id": node.get("message_id"),
            "message_ids": [k.get("message_id") for k in ranked], "ranks": [k["rank"] for k in ranked],
            "lang": node.get("lang")})
    for k in kids:
        yield from _oasst_groups(k, path, where, tree_id)


def _read_oasst(lines: Iterator[Line]) -> Iterator[dict]:
    flat: dict[str, dict] = {}  # the flat export: rebuild the trees from parent ids first
    first_where = None
    for where, rec in lines:
        if isinstance(rec.get("prompt"), dict) and "message_tree_id" in rec:
            yield from _oasst_groups(rec["prompt"], [], where, rec["message_tree_id"])
        elif "message_id" in rec and "parent_id" in rec:
            first_where = first_where or where
            flat[rec["message_id"]] = dict(rec, replies=[], _where=where)
        else:
            raise UserError(f"{where}: not an OASST record (expected a message tree with 'message_tree_id' and "
                            "'prompt', or a message with 'message_id' and 'parent_id')")
    roots = []
    for msg in flat.values():
        parent = flat.get(msg["parent_id"]) if msg["parent_id"] else None
        if parent is not None:
            parent["replies"].append(msg)
        elif not msg["parent_id"]:
            roots.append(msg)
    for root in roots:
        yield from _oasst_groups(root, [], root["_where"], root.get("message_tree_id", root["message_id"]))


READERS: dict[str, Callable[[Iterator[Line]], Iterator[dict]]] = {
    "rlhfkit": _read_rlhfkit, "hh": _read_hh, "trl": _read_trl, "oasst": _read_oasst,
}


def detect_format(rec: dict) -> str | None:
    if "responses" in rec and "prompt" in rec:
        return "rlhfkit"
    if "message_tree_id" in rec or ("message_id" in rec and "parent_id" in rec):
        return "oasst"
    if "chosen" in rec and "rejected" in rec:
        return "trl" if "prompt" in rec else "hh"
    return None


def read_preferences(path: str | Path, format: str = "auto") -> list[dict]:
    """Ranked records (responses best first) from a preference file; UserError names file:line."""
    path = Path(path)
    if format not in FORMATS:
        raise UserError(f"unknown preference format {format!r} (one of {', '.join(FORMATS)})")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise UserError(f"{path}: no records")
    if format == "auto":
        format = detect_format(first[1]) or ""
        if not format:
            raise UserError(f"{first[0]}: cannot tell the format (keys {', '.join(list(first[1])[:6])}); "
                            f"pass --format {'|'.join(FORMATS[1:])}")

    def chained() -> Iterator[Line]:
        yield first
        yield from lines

    records = _distinct(list(READERS[format](chained())), path)
    if not records:
        raise UserError(f"{path}: no ranked groups in this {format} file")
    return records


def _distinct(records: list[dict], path: Path) -> list[dict]:
    """Refuse rankings that cannot teach a reward model anything, naming the file and line.

    A K-way ranking (K > 2) that lists one text twice would rank a response above itself; a
    file whose pairs all have chosen == rejected gives every pair the constant loss ln 2 and a
    zero gradient. A lone equal pair is kept: real sets (HH-RLHF) hold a few."""
    same = []
    for r in records:
        resp = r["responses"]
        if len(set(resp)) == len(resp):
            continue
        where = f"{r['meta']['file']}:{r['meta']['line']}"
        if len(resp) > 2:
            first = next(i for i, t in enumerate(resp) if resp.index(t) != i)
            raise UserError(f"{where}: the ranking lists the same response twice (places {resp.index(resp[first]) + 1}"
                            f" and {first + 1} of {len(resp)}: {resp[first][:40]!r}); each response must appear once")
        same.append(where)
    if same and len(same) == len(records):
        raise UserError(f"{same[0]}: every pair has chosen == rejected (all {len(same)} records of {path}): "
                        "nothing to learn from")
    return records


# ------------------------------------------------------------------------------ writers

def ranking_pairs(responses: list[str]) -> list[tuple[str, str]]:
    """A best-first ranking as every (chosen, rejected) pair it implies: K(K-1)/2 of them."""
    return [(responses[i], responses[j]) for i in range(len(responses)) for j in range(i + 1, len(responses))]


def export_records(rankings: list[dict], pairs: bool = False) -> list[dict]:
    """Store rankings (FeedbackStore.rankings()) as rlhfkit lines, or as TRL pair lines with `pairs`.
    Ties carry no preference, so they have no pairs."""
    out = []
    for r in rankings:
        msgs = (r.get("meta") or {}).get("messages")
        base = {"prompt": r["prompt"], **({"messages": msgs} if msgs else {})}
        if pairs:
            if r.get("tie"):
                continue
            for chosen, rejected in ranking_pairs(r["responses"]):
                out.append({**base, "chosen": chosen, "rejected": rejected, "annotator": r["annotator"],
                            "source": r["source"], "all_bad": r["all_bad"]})
        else:
            out.append({**base, "responses": r["responses"], "annotator": r["annotator"], "source": r["source"],
                        "all_bad": r["all_bad"], "tie": r["tie"], "kind": r["kind"], "models": r["models"],
                        "seconds": r["seconds"], "task_id": r["task_id"], "created_at": r["created_at"]})
    return out


def write_preferences(records: list[dict], path: str | Path) -> None:
    """JSONL (gzipped for a .gz name), written atomically."""
    path = Path(path)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if path.name.endswith(".gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
            f.write(data)
        data = buf.getvalue()
    atomic_write_bytes(path, data)
