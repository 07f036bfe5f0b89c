"""The ranking API under load, on a real `rlhfkit label` server: 50 annotators and 2,000 rankings
(SQLite and PostgreSQL, feedback_backends.py), and a SIGKILL mid-load that loses no acknowledged ranking."""

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402

from feedback_backends import db_url  # noqa: E402,F401 - the fixture
from rlhfkit.feedback.store import FeedbackStore  # noqa: E402
from test_feedback_app import auth, fill, free_port  # noqa: E402

class Server:
    """`rlhfkit label RUN --port P [--db URL]` in a subprocess; stopped (SIGKILL) on exit whatever happens."""

    def __init__(self, run_dir: Path, db: str):
        self.run_dir, self.db, self.port, self.proc = run_dir, db, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        self.log = open(self.run_dir / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "label", str(self.run_dir),
                                      "--port", str(self.port), "--db", self.db],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.run_dir / f'server-{self.port}.log').read_text()}")
            try:
                if httpx.get(self.url + "/openapi.json", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("server did not start in 30 s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __exit__(self, *exc) -> None:
        self.kill()
        self.log.close()


async def annotate(url: str, token: str, n: int, seed: int, acked: list, errors: list, stop: asyncio.Event) -> None:
    """One annotator: fetch the next task, rank it randomly, sometimes resend; n rankings or until stopped.

    `acked` gets (token, task_id, ranking_id, order) for every 200; a connection error (the
    server was killed) ends this annotator, a 5xx is recorded in `errors`.
    """
    rng = random.Random(seed)
    h = auth(token)
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        done = 0
        try:
            while done < n and not stop.is_set():
                r = await c.get("/api/tasks/next", headers=h)
                if r.status_code >= 500:
                    errors.append(("next", r.status_code, r.text))
                if r.status_code != 200:
                    return
                task = r.json()
                order = [x["id"] for x in task["responses"]]
                rng.shuffle(order)
                body = {"order": order, "seconds": round(rng.uniform(1, 20), 1)}
                for attempt in range(1 + (rng.random() < 0.1)):  # 10% resent: must come back created=False
                    r = await c.post(f"/api/tasks/{task['task_id']}/ranking", headers=h, json=body)
                    if r.status_code != 200:
                        errors.append(("submit", r.status_code, r.text))
                        return
                    if attempt == 1 and r.json()["created"]:
                        errors.append(("resend created a second ranking", task["task_id"]))
                    acked.append((token, task["task_id"], r.json()["ranking_id"], order))
                done += 1
        except httpx.TransportError:
            return  # the server went away


def setup_run(db: str, n_annotators: int, n_tasks: int) -> list[str]:
    with FeedbackStore(db) as s:
        fill(s, n_tasks, k=4, overlap=n_annotators)  # every annotator ranks every task
        return [s.add_annotator(f"a{i:02d}") for i in range(n_annotators)]


def check_stored(db: str, acked: list, tokens: list[str]) -> list[dict]:
    """Every acknowledged ranking is in the db with its order, and each (task, annotator) once."""
    names = {t: f"a{i:02d}" for i, t in enumerate(tokens)}
    with FeedbackStore(db) as s:
        stored = s.rankings()
    by_id = {r["ranking_id"]: r for r in stored}
    for token, task_id, rid, order in acked:
        r = by_id.get(rid)
        assert r is not None, f"acknowledged ranking {rid} lost"
        assert (r["task_id"], r["annotator"], r["response_ids"]) == (task_id, names[token], order)
    pairs = [(r["task_id"], r["annotator"]) for r in stored]
    assert len(pairs) == len(set(pairs))
    return stored


def test_load_50_annotators_2000_rankings(tmp_path, db_url):
    n_annotators, per_annotator = 50, 40  # 50 x 40 = 2,000 rankings
    tokens = setup_run(db_url, n_annotators, per_annotator)
    acked, errors = [], []

    async def main():
        stop = asyncio.Event()
        await asyncio.wait_for(asyncio.gather(*(
            annotate(srv.url, t, per_annotator, i, acked, errors, stop) for i, t in enumerate(tokens))), timeout=90)

    with Server(tmp_path, db_url) as srv:
        t0 = time.perf_counter()
        asyncio.run(main())
        elapsed = time.perf_counter() - t0
    assert errors == []
    stored = check_stored(db_url, acked, tokens)
    assert len(stored) == 2000
    assert len({a[2] for a in acked}) == 2000  # resends came back with the first id
    n_requests = 2 * 2000 + (len(acked) - 2000)
    print(f"\nload ({db_url.split(':')[0]}): {n_annotators} annotators, 2000 rankings ({len(acked) - 2000} resends) in {elapsed:.1f} s = "
          f"{2000 / elapsed:.0f} rankings/s, {n_requests / elapsed:.0f} requests/s, no 5xx")


def test_sigkill_mid_load_loses_no_acknowledged_ranking(tmp_path):
    # SQLite only: killing the web server tests the store's own durability (WAL, synchronous=FULL);
    # on PostgreSQL that is the server's, and the load test above covers its code path
    db_url = f"sqlite:///{tmp_path / 'feedback.db'}"
    n_annotators, n_tasks = 20, 40
    tokens = setup_run(db_url, n_annotators, n_tasks)
    acked, errors = [], []

    async def main(srv):
        stop = asyncio.Event()
        clients = asyncio.gather(*(annotate(srv.url, t, n_tasks, i, acked, errors, stop)
                                   for i, t in enumerate(tokens)))
        deadline = time.time() + 30
        while len(acked) < 150 and time.time() < deadline:
            await asyncio.sleep(0.01)
        srv.kill()  # SIGKILL with requests in flight
        await asyncio.wait_for(clients, timeout=60)

    with Server(tmp_path, db_url) as srv:
        asyncio.run(main(srv))
    assert 150 <= len(acked) < n_annotators * n_tasks, len(acked)
    assert errors == []
    with Server(tmp_path, db_url) as srv:  # restart on the same db: it opens, and the counts agree
        stored = check_stored(db_url, acked, tokens)
        for i, t in enumerate(tokens):
            done = httpx.get(srv.url + "/api/me", headers=auth(t)).json()["done"]
            mine = {a[1] for a in acked if a[0] == t}
            # at most one more than acknowledged: a ranking committed whose reply the kill cut off
            assert len(mine) <= done <= len(mine) + 1
    print(f"\nsigkill: {len({a[2] for a in acked})} rankings acknowledged before the kill, {len(stored)} stored "
          "after restart, none lost")
