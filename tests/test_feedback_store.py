"""The feedback store: the labelling loop's rules, tokens, schema versions, concurrency, fill.

The loop, the refusals, concurrency and import run on SQLite and PostgreSQL (feedback_backends.py:
set RLHFKIT_TEST_POSTGRES to a throwaway server; the PostgreSQL runs skip without it).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import tomllib
import uuid

import pytest

from conftest import rlhfkit
from feedback_backends import db_url  # noqa: F401 - the fixture
from rlhfkit.cli import main
from rlhfkit.feedback.store import Conflict, FeedbackStore, InvalidRanking, NotFound, StoreError
from rlhfkit.files import UserError


def _fill(store: FeedbackStore, n_tasks: int = 2, k: int = 3, overlap: int = 2) -> list[tuple[int, list[int]]]:
    out = []
    for t in range(n_tasks):
        pid = store.add_prompt(f"prompt {t}", {"messages": [{"role": "user", "content": f"prompt {t}"}]})
        rids = [store.add_response(pid, f"p{t} response {i}", model="ckpt-a", sampling={"temperature": 1.0})
                for i in range(k)]
        out.append((store.create_task(pid, rids, overlap=overlap), rids))
    return out


def _loop(store: FeedbackStore) -> None:
    """The contract's rules, run against any backend."""
    (t1, r1), (t2, r2) = _fill(store)
    alice = store.authenticate(store.add_annotator("alice"))
    bob = store.authenticate(store.add_annotator("bob", role="admin"))
    assert alice["name"] == "alice" and bob["role"] == "admin"

    task = store.next_task(alice["id"])
    assert task["task_id"] == t1 and [r["id"] for r in task["responses"]] == r1  # oldest first, stored order
    assert task["prompt"] == "prompt 0" and task["kind"] == "rank"
    assert store.progress(alice["id"]) == {"done": 0, "remaining": 2}

    order = [r1[2], r1[0], r1[1]]
    rid, created = store.submit_ranking(t1, alice["id"], order, seconds=4.5)
    assert created
    assert store.submit_ranking(t1, alice["id"], order) == (rid, False)  # a resend is idempotent
    with pytest.raises(Conflict):
        store.submit_ranking(t1, alice["id"], [r1[0], r1[2], r1[1]])
    with pytest.raises(InvalidRanking, match="not a permutation"):
        store.submit_ranking(t1, bob["id"], [r1[0], r1[0], r1[1]])
    with pytest.raises(InvalidRanking):
        store.submit_ranking(t1, bob["id"], [r1[0], r1[1]])
    with pytest.raises(InvalidRanking, match="tie"):
        store.submit_ranking(t1, bob["id"], order, tie=True)
    with pytest.raises(NotFound):
        store.submit_ranking(999, alice["id"], order)
    assert isinstance(NotFound("x"), UserError)  # the CLI prints store errors as one line

    assert store.next_task(alice["id"])["task_id"] == t2  # t1 is done for alice
    assert store.next_task(bob["id"])["task_id"] == t1  # overlap 2: bob still sees it
    store.skip_task(t1, bob["id"])
    store.skip_task(t1, bob["id"])  # twice is harmless
    assert store.next_task(bob["id"])["task_id"] == t2
    store.submit_ranking(t2, bob["id"], r2, all_bad=True, source="simulated")
    store.submit_ranking(t2, alice["id"], list(reversed(r2)))
    assert store.next_task(alice["id"]) is None
    assert store.progress(alice["id"]) == {"done": 2, "remaining": 0}
    assert store.progress(bob["id"]) == {"done": 1, "remaining": 0}  # t1 skipped, t2 ranked

    rows = store.rankings()
    assert [r["annotator"] for r in rows] == ["alice", "bob", "alice"]
    first = rows[0]
    assert first["responses"] == ["p0 response 2", "p0 response 0", "p0 response 1"]
    assert first["response_ids"] == order and first["models"] == ["ckpt-a"] * 3
    assert first["seconds"] == 4.5 and first["source"] == "human" and first["kind"] == "rank"
    assert first["meta"]["messages"][0]["content"] == "prompt 0"
    assert [r["annotator"] for r in store.rankings(source="simulated")] == ["bob"]
    assert rows[1]["all_bad"] and not rows[0]["all_bad"]

    assert store.undo_last(alice["id"]) == t2  # the most recent one goes first
    assert store.next_task(alice["id"])["task_id"] == t2
    assert store.undo_last(alice["id"]) == t1
    assert store.undo_last(alice["id"]) is None
    c = store.counts()
    assert (c["prompts"], c["responses"], c["tasks"], c["rankings"], c["tasks_complete"]) == (2, 6, 2, 1, 0)


def test_ranking_loop(db_url):
    with FeedbackStore(db_url) as store:
        _loop(store)


def test_run_store_is_a_file_in_the_run(tmp_path):
    with FeedbackStore.for_run(tmp_path) as store:
        assert store.url.startswith("sqlite:///")
    assert (tmp_path / "feedback.db").is_file()


def test_rankings_refused_for_full_skipped_and_unoffered_tasks(db_url):
    with FeedbackStore(db_url) as store:
        (t1, r1), (t2, r2) = _fill(store, n_tasks=2, k=2, overlap=1)
        a, b, c = (store.annotator(n)["id"] for n in ("a", "b", "c"))
        assert store.submit_ranking(t1, a, r1)[1]
        with pytest.raises(Conflict, match=f"task {t1} is full: it has its 1 ranking"):
            store.submit_ranking(t1, b, r1)  # overlap 1 reached
        assert store.submit_ranking(t1, a, r1)[1] is False  # the ranker's own resend is still idempotent
        store.skip_task(t2, b)
        with pytest.raises(Conflict, match="skipped it"):
            store.submit_ranking(t2, b, r2)
        # the web API asks for offered tasks only: t2 was never handed to c by next_task
        with pytest.raises(Conflict, match="never offered"):
            store.submit_ranking(t2, c, r2, offered_only=True)
        assert store.next_task(c)["task_id"] == t2 and store.next_task(c)["task_id"] == t2  # offered (twice: one row)
        assert store.submit_ranking(t2, c, r2, offered_only=True)[1]
        assert [(r["task_id"], r["annotator"]) for r in store.rankings()] == [(t1, "a"), (t2, "c")]


def test_sampled_batches_carry_keys(db_url):
    """What fill relies on: a batch is stored whole with its keys; a key already taken refuses the whole batch."""
    with FeedbackStore(db_url) as store:
        ids = store.add_sampled_many([("p1", {}, ["a", "b"], "k1"), ("p2", None, ["c", "d"], "k2")], "m")
        assert len(ids) == 2 and store.task_keys(["k1", "k2", "k3"]) == {"k1", "k2"}
        with pytest.raises(Conflict, match="stored meanwhile"):
            store.add_sampled_many([("p3", {}, ["e", "f"], "k3"), ("p1", {}, ["a", "b"], "k1")], "m")
        assert store.task_keys(["k3"]) == set()  # p3 went with the refused batch
        c = store.counts()
        assert (c["prompts"], c["responses"], c["tasks"]) == (2, 4, 2)


def test_racing_for_the_last_places_of_a_task(db_url):
    """8 annotators at once on a task with overlap 3: exactly 3 rankings, the rest told it is full."""
    with FeedbackStore(db_url) as store:
        ((t, rids),) = _fill(store, n_tasks=1, k=3, overlap=3)
        people = [store.annotator(f"r{i}")["id"] for i in range(8)]
        barrier, outcomes = threading.Barrier(8), []

        def go(who):
            barrier.wait()
            try:
                outcomes.append(store.submit_ranking(t, who, rids)[1])
            except Conflict as e:
                outcomes.append(str(e))

        th = [threading.Thread(target=go, args=(p,)) for p in people]
        [x.start() for x in th]
        [x.join() for x in th]
        assert outcomes.count(True) == 3 and sum("is full" in str(o) for o in outcomes) == 5, outcomes
        assert len(store.rankings()) == 3


def test_tasks_validate_their_responses(db_url):
    with FeedbackStore(db_url) as store:
        p1, p2 = store.add_prompt("a"), store.add_prompt("b")
        a, b = store.add_response(p1, "x"), store.add_response(p1, "y")
        c = store.add_response(p2, "z")
        with pytest.raises(StoreError, match="do not all answer"):
            store.create_task(p1, [a, c])
        with pytest.raises(StoreError, match="exactly 2"):
            store.create_task(p1, [a, b, store.add_response(p1, "w")], kind="arena")
        with pytest.raises(StoreError, match="at least 2"):
            store.create_task(p1, [a])
        with pytest.raises(NotFound):
            store.add_response(999, "x")
        t = store.create_task(p1, [a, b], kind="arena")
        ann = store.annotator("voter")
        assert store.submit_ranking(t, ann["id"], [b, a], tie=True, source="arena")[1]
        (r,) = store.rankings()
        assert r["tie"] and r["kind"] == "arena"
        with pytest.raises(Conflict):
            store.add_annotator("voter")


def test_tokens_are_stored_hashed(tmp_path):
    with FeedbackStore.for_run(tmp_path) as store:
        token = store.add_annotator("carol")
        assert len(token) >= 40  # 32 random bytes, url-safe base64
        assert store.authenticate(token)["name"] == "carol"
        assert store.authenticate(token + "x") is None and store.authenticate("") is None
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("feedback.db*"))  # the db and its WAL
    assert token.encode() not in raw


def test_sqlite_settings_and_schema_version(tmp_path):
    db = tmp_path / "feedback.db"
    with FeedbackStore.for_run(tmp_path) as store:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    with sqlite3.connect(db) as c:
        c.execute("UPDATE schema_version SET version = 7")
    with pytest.raises(UserError, match=r"schema version 7.*reads version 2.*newer"):
        FeedbackStore.for_run(tmp_path)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE schema_version SET version = 0")
    with pytest.raises(UserError, match=r"schema version 0.*older"):
        FeedbackStore.for_run(tmp_path)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE prompts (id INTEGER)")
    with pytest.raises(UserError, match="not a database written by rlhfkit"):
        FeedbackStore.for_run(tmp_path, db=str(other))
    with pytest.raises(UserError, match="not a database URL"):
        FeedbackStore("no url at all")
    with pytest.raises(UserError, match="unknown database kind"):
        FeedbackStore("nonsense://host/db")


def _concurrent(store: FeedbackStore, n_threads: int = 8) -> None:
    """Many writers at once: every ranking lands exactly once, nobody sees 'database is locked'."""
    pid = store.add_prompt("race")
    rids = [store.add_response(pid, f"r{i}") for i in range(4)]
    tasks = [store.create_task(pid, rids, overlap=n_threads) for _ in range(10)]
    people = [store.annotator(f"racer-{uuid.uuid4().hex[:6]}-{i}")["id"] for i in range(n_threads)]
    errors, results = [], []

    def work(who: int) -> None:
        try:
            for t in tasks:
                for _ in range(2):  # every request sent twice, like a double click
                    results.append((t, who, store.submit_ranking(t, who, rids, seconds=1.0)))
                store.progress(who)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in people]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    created = [rid for _, _, (rid, c) in results if c]
    assert len(created) == len(tasks) * n_threads  # exactly once per (task, annotator)
    mine = [r for r in store.rankings() if r["task_id"] in tasks]
    assert len(mine) == len(tasks) * n_threads
    assert all(store.next_task(p) is None or store.next_task(p)["task_id"] not in tasks for p in people)


def test_schema_1_is_upgraded_in_place(tmp_path):
    with FeedbackStore.for_run(tmp_path) as store:
        ((t, rids),) = _fill(store, n_tasks=1)
        store.submit_ranking(t, store.annotator("old")["id"], rids)
    with sqlite3.connect(tmp_path / "feedback.db") as c:  # what rlhfkit with schema 1 wrote: no offers table
        c.execute("DROP TABLE offers")
        c.execute("UPDATE schema_version SET version = 1")
    with FeedbackStore.for_run(tmp_path) as store:
        assert len(store.rankings()) == 1
        who = store.annotator("new")["id"]
        assert store.next_task(who)["task_id"] == t  # the offers table is back
    with sqlite3.connect(tmp_path / "feedback.db") as c:
        assert c.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
        assert c.execute("SELECT task_id, annotator_id FROM offers").fetchall() == [(t, who)]


def test_concurrent_writers(db_url):
    with FeedbackStore(db_url) as store:
        _concurrent(store)


def test_two_engines_on_one_sqlite_file(tmp_path):
    two = tmp_path / "two"
    with FeedbackStore.for_run(two) as a, FeedbackStore.for_run(two) as b:  # two engines (processes), one file
        t = _fill(a, n_tasks=1, overlap=2)[0]
        ids = [a.annotator("x")["id"], b.annotator("y")["id"]]
        th = [threading.Thread(target=s.submit_ranking, args=(t[0], who, t[1])) for s, who in zip((a, b), ids)]
        [x.start() for x in th]
        [x.join() for x in th]
        assert len(a.rankings()) == 2


def test_import_rankings_bulk_and_idempotent(db_url):
    recs = [{"prompt": "q", "responses": ["best", "mid", "worst"], "meta": {"messages": [{"role": "user",
             "content": "q"}], "models": ["m1", "m2", "m3"]}},
            {"prompt": "r", "responses": ["a", "b"], "annotator": "zoe", "tie": True, "kind": "arena"}]
    with FeedbackStore(db_url) as store:
        assert store.import_rankings(recs) == (2, 0)
        assert store.import_rankings(recs) == (0, 2)  # same content again: nothing new
        rows = store.rankings()
        assert [r["responses"] for r in rows] == [["best", "mid", "worst"], ["a", "b"]]
        assert rows[0]["models"] == ["m1", "m2", "m3"] and rows[0]["annotator"] == "imported"
        assert rows[1]["annotator"] == "zoe" and rows[1]["tie"] and rows[1]["kind"] == "arena"
        assert {r["source"] for r in rows} == {"imported"}
        with pytest.raises(StoreError, match="at least 2"):
            store.import_rankings([{"prompt": "x", "responses": ["only"]}])


def test_cli_add_annotator_prints_token_last(tmp_path):
    (tmp_path / "run").mkdir()
    r = rlhfkit("feedback", "add-annotator", str(tmp_path / "run"), "dana", "--role", "admin")
    token = r.stdout.strip().splitlines()[-1]
    with FeedbackStore.for_run(tmp_path / "run") as store:
        assert store.authenticate(token) == {"id": 1, "name": "dana", "role": "admin"}
    r = rlhfkit("feedback", "add-annotator", str(tmp_path / "run"), "dana", check=False)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    r = rlhfkit("feedback", "stats", str(tmp_path / "nowhere"), check=False)
    assert r.returncode == 2 and "run directory not found" in r.stderr


def test_cli_readers_need_a_store_and_export_needs_a_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for cmd in (["stats"], ["export", "--out", str(tmp_path / "x.jsonl")], ["simulate", "--labeler", "m:f"]):
        assert main(["feedback", cmd[0], str(empty), *cmd[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "feedback.db: no feedback store here" in err[0], err
    assert list(empty.iterdir()) == []  # no database created by looking
    assert main(["feedback", "stats", str(empty), "--db", str(tmp_path / "none.db")]) == 2
    assert not (tmp_path / "none.db").exists() and "none.db: no feedback store here" in capsys.readouterr().err
    with FeedbackStore.for_run(tmp_path / "run") as store:
        _fill(store, n_tasks=1)
    assert main(["feedback", "export", str(tmp_path / "run"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a directory" in err[0], err
    assert main(["feedback", "export", str(tmp_path / "run"), "--out", str(tmp_path / "prefs.jsonl")]) == 0
    assert (tmp_path / "prefs.jsonl").read_text() == ""  # no rankings yet: an empty file, not an error


@pytest.fixture(scope="module")
def fill_model(tiny_tokenizer, tmp_path_factory):
    import transformers

    from rlhfkit.models import load_tokenizer, save_model, tiny_llama_config

    tok = load_tokenizer(str(tiny_tokenizer))
    cfg = tiny_llama_config(vocab_size=len(tok), d_model=32, n_layers=1, n_heads=2,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("fill") / "model"
    save_model(transformers.LlamaForCausalLM(cfg), tok, path)
    return path


def _tasks(run) -> list[tuple[str, list[str]]]:
    """(prompt, response texts) of every task in a run's store, oldest first."""
    with FeedbackStore.for_run(run) as store:
        who = store.annotator("reader")["id"]
        return [(t["prompt"], [r["text"] for r in t["responses"]])
                for t in map(store.task, store.open_tasks(who))]


def test_fill_samples_k_responses_per_prompt(tmp_path, fill_model, capsys):
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Tell me a joke about owls."},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A frog joke?"}]},
        {"prompt": "unused: past max_prompts"}]) + "\n")
    (tmp_path / "fill.toml").write_text(f'model = "{fill_model}"\nprompts = "{prompts}"\nk = 5\n')
    run = tmp_path / "run"
    # in-process (rlhfkit.cli.main, as the console script runs it): a second interpreter would
    # pay the transformers import again
    args = ["feedback", "fill", "--config", str(tmp_path / "fill.toml"), "--set", f"out={run}", "--set",
            "overlap=2", "--set", "max_new_tokens=6", "--set", "max_prompts=2", "--set", "batch_size=6"]
    assert main(args) == 0
    saved = tomllib.loads((run / "fill-config.toml").read_text())
    assert saved["k"] == 5 and saved["overlap"] == 2 and saved["max_prompts"] == 2
    with FeedbackStore.for_run(run) as store:
        ann = store.annotator("eve")
        t1 = store.next_task(ann["id"])
        assert t1["prompt"] == "Tell me a joke about owls." and len(t1["responses"]) == 5 and t1["overlap"] == 2
        store.submit_ranking(t1["task_id"], ann["id"], [r["id"] for r in t1["responses"]])
        t2 = store.next_task(ann["id"])
        assert t2["meta"]["messages"][0] == {"role": "system", "content": "Be brief."}
        assert store.counts()["tasks"] == 2 and store.counts()["responses"] == 10
        (r,) = store.rankings()
        assert r["models"] == [str(fill_model)] * 5
    capsys.readouterr()
    # the same fill again: nothing new (today's bug appended a second copy of every task)
    assert main(args) == 0
    assert "queued 0 ranking tasks" in capsys.readouterr().out
    with FeedbackStore.for_run(run) as store:
        assert (store.counts()["tasks"], store.counts()["responses"]) == (2, 10)
    # one more prompt (max_prompts 3): only that one is sampled; a new temperature is a new fill of all 3
    assert main(args + ["--set", "max_prompts=3"]) == 0
    assert "queued 1 ranking tasks" in capsys.readouterr().out
    assert main(args + ["--set", "max_prompts=3", "--set", "temperature=0.7"]) == 0
    assert "queued 3 ranking tasks" in capsys.readouterr().out
    with FeedbackStore.for_run(run) as store:
        assert store.counts()["tasks"] == 2 + 1 + 3
    # the model retrained in place (same path, new weights): its samples are new tasks
    weights = next(fill_model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert main(args) == 0
    assert "queued 2 ranking tasks" in capsys.readouterr().out
    assert main(["feedback", "fill", "--set", f"out={run}", "--set", "k=1", "--set", f"prompts={prompts}"]) == 2
    assert "k must be >= 2" in capsys.readouterr().err


def test_fill_killed_then_rerun_finishes_exactly(tmp_path, fill_model, capsys):
    """SIGKILL a fill of 12 prompts after 4 are stored; the rerun stores the other 8, and the run
    ends with the very tasks (same samples) an uninterrupted fill makes (before: 16 tasks)."""
    import json
    import signal
    import subprocess
    import sys

    n, k = 12, 2
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"A joke about animal {i}?"}) + "\n" for i in range(n)))
    (tmp_path / "fill.toml").write_text(f'model = "{fill_model}"\nprompts = "{prompts}"\nk = {k}\n'
                                        "batch_size = 2\nmax_new_tokens = 32\n")  # one prompt per batch
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "feedback", "fill", "--config",
                             str(tmp_path / "fill.toml"), "--set", f"out={killed}"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        for line in proc.stderr:
            if line.startswith(f"feedback fill: 4/{n} "):
                os.kill(proc.pid, signal.SIGKILL)  # mid-fill, the fifth batch in flight
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    stored = len(_tasks(killed))
    assert 4 <= stored < n, stored

    assert main(["feedback", "fill", "--config", str(tmp_path / "fill.toml"), "--set", f"out={killed}"]) == 0
    assert f"queued {n - stored} ranking tasks" in capsys.readouterr().out
    assert main(["feedback", "fill", "--config", str(tmp_path / "fill.toml"), "--set", f"out={killed}"]) == 0
    assert "queued 0 ranking tasks" in capsys.readouterr().out
    resumed = _tasks(killed)
    assert len(resumed) == n and [p for p, _ in resumed] == [f"A joke about animal {i}?" for i in range(n)]
    assert all(len(texts) == k for _, texts in resumed)

    whole = tmp_path / "whole"
    assert main(["feedback", "fill", "--config", str(tmp_path / "fill.toml"), "--set", f"out={whole}"]) == 0
    assert resumed == _tasks(whole)  # the batches' own seeds: killed + rerun == one run
