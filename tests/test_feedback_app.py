"""The ranking web app's API against a real FeedbackStore: SQLite and PostgreSQL (feedback_backends.py).

TestClient for the contract (auth, 204, 404/409/413/422/503, idempotency, undo, skip, two
annotators, arena votes, the offline /docs) and a schemathesis fuzz of /openapi.json; the load
and SIGKILL tests against a real server are in test_feedback_load.py.
"""

import json
import socket
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from feedback_backends import db_url  # noqa: E402,F401 - the fixture
from rlhfkit.feedback.app import MAX_BODY, create_app, ensure_arena, prepare_arena, read_prompts  # noqa: E402
from rlhfkit.feedback.store import FeedbackStore  # noqa: E402
from rlhfkit.files import UserError  # noqa: E402

# ---------------------------------------------------------------------------------------
# helpers


def fill(store: FeedbackStore, n_tasks: int, k: int = 4, overlap: int = 1, kind: str = "rank") -> list[int]:
    """n_tasks tasks of k responses each ("prompt i" / "answer i.j"); -> task ids, oldest first."""
    ids = []
    for i in range(n_tasks):
        pid = store.add_prompt(f"prompt {i}")
        rids = [store.add_response(pid, f"answer {i}.{j}", model=f"m{j}") for j in range(k)]
        ids.append(store.create_task(pid, rids, kind=kind, overlap=overlap))
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def store(db_url):
    s = FeedbackStore(db_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    """For what does not depend on the database (the body limit, the docs): SQLite only."""
    s = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    yield s
    s.close()


@pytest.fixture
def client(store):
    with TestClient(create_app(store)) as c:
        yield c


# ---------------------------------------------------------------------------------------
# the contract, through TestClient


def test_no_token_no_access(store, client):
    fill(store, 1)
    good = store.add_annotator("alice")
    for headers in ({}, auth("not-a-token"), {"Authorization": f"Basic {good}"}, auth("x" * 10_000)):
        for method, path in [("GET", "/api/me"), ("GET", "/api/tasks/next"), ("POST", "/api/undo"),
                             ("POST", "/api/tasks/1/skip")]:
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, r.text)
            assert "token" in r.json()["detail"]
        r = client.post("/api/tasks/1/ranking", headers=headers, json={"order": [1, 2, 3, 4]})
        assert r.status_code == 401
    assert store.rankings() == []
    # the page itself and the API docs need no token; the page forbids non-local scripts
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/style.css").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/api/me", "/api/tasks/next", "/api/tasks/{task_id}/ranking",
                          "/api/tasks/{task_id}/skip", "/api/undo"}


def test_rank_submit_idempotent_conflict_and_204(store, client):
    t1, t2 = fill(store, 2, k=3)
    h = auth(store.add_annotator("alice"))
    me = client.get("/api/me", headers=h).json()
    assert me == {"name": "alice", "role": "annotator", "kind": "rank", "done": 0, "remaining": 2}

    task = client.get("/api/tasks/next", headers=h).json()
    assert task["task_id"] == t1 and task["prompt"] == "prompt 0" and task["kind"] == "rank"
    ids = [r["id"] for r in task["responses"]]
    assert [r["text"] for r in task["responses"]] == ["answer 0.0", "answer 0.1", "answer 0.2"]

    order = [ids[2], ids[0], ids[1]]
    r = client.post(f"/api/tasks/{t1}/ranking", headers=h, json={"order": order, "all_bad": False, "seconds": 3.2})
    assert r.status_code == 200 and r.json()["created"] is True
    rid = r.json()["ranking_id"]
    # the same submission again (a retry after a lost reply): stored once
    again = client.post(f"/api/tasks/{t1}/ranking", headers=h, json={"order": order, "seconds": 9.9})
    assert again.status_code == 200 and again.json() == {"ranking_id": rid, "created": False}
    # a different order for a task already ranked
    r = client.post(f"/api/tasks/{t1}/ranking", headers=h, json={"order": [ids[0], ids[1], ids[2]]})
    assert r.status_code == 409 and "already ranked" in r.json()["detail"]

    (stored,) = store.rankings()
    assert stored["response_ids"] == order and stored["responses"] == ["answer 0.2", "answer 0.0", "answer 0.1"]
    assert stored["annotator"] == "alice" and stored["source"] == "human" and stored["seconds"] == 3.2

    assert client.get("/api/tasks/next", headers=h).json()["task_id"] == t2
    assert client.get("/api/me", headers=h).json()["done"] == 1
    t2_ids = [r["id"] for r in client.get("/api/tasks/next", headers=h).json()["responses"]]
    r = client.post(f"/api/tasks/{t2}/ranking", headers=h, json={"order": t2_ids, "all_bad": True})
    assert r.status_code == 200
    r = client.get("/api/tasks/next", headers=h)
    assert r.status_code == 204 and r.content == b""
    assert client.get("/api/me", headers=h).json() | {"name": 0} == {
        "name": 0, "role": "annotator", "kind": "rank", "done": 2, "remaining": 0}
    assert [x["all_bad"] for x in store.rankings()] == [False, True]


@pytest.mark.parametrize("body, status, words", [
    ({"order": [1, 2]}, 422, "not a permutation"),                 # a response missing
    ({"order": [1, 2, 3, 3]}, 422, "not a permutation"),           # a duplicate
    ({"order": [1, 2, 3, 99]}, 422, "not a permutation"),          # a response of no task
    ({"order": [5, 6, 7, 8]}, 422, "not a permutation"),           # another task's responses
    ({"order": []}, 422, "order"),
    ({"order": [1, 2, 3, 2**64]}, 422, "order"),                   # beyond SQLite's 64-bit integers
    ({"order": ["a", 2, 3, 4]}, 422, "order"),
    ({"order": [1, 2, 3, 4], "seconds": -1}, 422, "seconds"),
    ({"order": [1, 2, 3, 4], "annotator_id": 2}, 422, "annotator_id"),  # cannot write as someone else
    ({"order": [1, 2, 3, 4], "tie": True}, 422, "tie"),            # ties are for 2-way votes only
    ({}, 422, "order"),
])
def test_bad_rankings_are_4xx_with_a_detail(store, client, body, status, words):
    fill(store, 2, k=4)  # task 1: responses 1..4, task 2: responses 5..8
    h = auth(store.add_annotator("alice"))
    store.add_annotator("bob")
    r = client.post("/api/tasks/1/ranking", headers=h, json=body)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str) and words in r.json()["detail"]
    assert store.rankings() == []


def test_malformed_bodies_and_unknown_tasks(store, client):
    fill(store, 1, k=2)
    h = auth(store.add_annotator("alice"))
    for raw in (b"", b"{", b"[1, 2]", b'{"order": NaN}', b'{"order": [1, 2], "seconds": Infinity}', b"\xff\xfe"):
        r = client.post("/api/tasks/1/ranking", headers=h | {"Content-Type": "application/json"}, content=raw)
        assert r.status_code == 422, (raw, r.text)
    for task in ("2", "0", "-1", str(2**63), "abc"):
        r = client.post(f"/api/tasks/{task}/ranking", headers=h, json={"order": [1, 2]})
        assert r.status_code in (404, 422), (task, r.text)
        assert r.status_code == (404 if task == "2" else 422)
        assert client.post(f"/api/tasks/{task}/skip", headers=h).status_code == (404 if task == "2" else 422)
    assert client.post("/api/tasks/2/ranking", headers=h, json={"order": [1, 2]}).json()["detail"] == \
        "task 2 not found"


def test_skip_and_undo(store, client):
    t1, t2, t3 = fill(store, 3, k=2)
    h = auth(store.add_annotator("alice"))
    assert client.post("/api/undo", headers=h).json() == {"task_id": None}  # nothing yet
    assert client.post(f"/api/tasks/{t1}/skip", headers=h).json() == {"task_id": t1, "skipped": True}
    assert client.post(f"/api/tasks/{t1}/skip", headers=h).status_code == 200  # skipping twice is harmless
    task = client.get("/api/tasks/next", headers=h).json()
    assert task["task_id"] == t2  # the skipped task is not shown again
    order = [r["id"] for r in task["responses"]][::-1]
    assert client.post(f"/api/tasks/{t2}/ranking", headers=h, json={"order": order}).status_code == 200
    assert client.get("/api/me", headers=h).json()["done"] == 1
    assert client.get("/api/tasks/next", headers=h).json()["task_id"] == t3

    assert client.post("/api/undo", headers=h).json() == {"task_id": t2}
    assert store.rankings() == []
    assert client.get("/api/tasks/next", headers=h).json()["task_id"] == t2  # shown again, to redo
    # after an undo a different order is accepted (no 409)
    r = client.post(f"/api/tasks/{t2}/ranking", headers=h, json={"order": order[::-1]})
    assert r.status_code == 200 and r.json()["created"] is True
    assert store.rankings()[0]["response_ids"] == order[::-1]


def test_annotators_are_isolated(store, client):
    (t1,) = fill(store, 1, k=2, overlap=2)
    (t2,) = fill(store, 1, k=2, overlap=1)
    ha, hb = auth(store.add_annotator("alice")), auth(store.add_annotator("bob"))
    order = [r["id"] for r in client.get("/api/tasks/next", headers=ha).json()["responses"]]
    assert client.post(f"/api/tasks/{t1}/ranking", headers=ha, json={"order": order}).status_code == 200
    # bob still gets t1 (overlap 2): alice's ranking is not his; a different order from him is no conflict
    assert client.get("/api/tasks/next", headers=hb).json()["task_id"] == t1
    assert client.get("/api/me", headers=hb).json()["done"] == 0
    r = client.post(f"/api/tasks/{t1}/ranking", headers=hb, json={"order": order[::-1]})
    assert r.status_code == 200 and r.json()["created"] is True
    # bob's undo removes bob's ranking, never alice's
    assert client.post("/api/undo", headers=hb).json() == {"task_id": t1}
    assert client.post("/api/undo", headers=hb).json() == {"task_id": None}
    assert [(x["annotator"], x["response_ids"]) for x in store.rankings()] == [("alice", order)]
    # t2 has overlap 1: once bob ranks it, alice is not offered it
    assert client.post(f"/api/tasks/{t1}/skip", headers=hb).status_code == 200
    task = client.get("/api/tasks/next", headers=hb).json()
    assert task["task_id"] == t2
    t2_ids = [r["id"] for r in task["responses"]]
    client.post(f"/api/tasks/{t2}/ranking", headers=hb, json={"order": t2_ids})
    assert client.get("/api/tasks/next", headers=ha).status_code == 204
    assert client.get("/api/me", headers=ha).json()["done"] == 1


def test_full_skipped_and_unoffered_tasks_are_refused(store, client):
    (t1,) = fill(store, 1, k=2, overlap=1)
    (t2,) = fill(store, 1, k=2, overlap=2)
    ha, hb, hc = (auth(store.add_annotator(n)) for n in ("alice", "bob", "carol"))
    ids = {t: [r["id"] for r in store.task(t)["responses"]] for t in (t1, t2)}
    # alice and bob are both shown t1 (overlap 1); alice ranks it first, so it is full for bob
    assert client.get("/api/tasks/next", headers=ha).json()["task_id"] == t1
    assert client.get("/api/tasks/next", headers=hb).json()["task_id"] == t1
    assert client.post(f"/api/tasks/{t1}/ranking", headers=ha, json={"order": ids[t1]}).status_code == 200
    r = client.post(f"/api/tasks/{t1}/ranking", headers=hb, json={"order": ids[t1]})
    assert r.status_code == 409 and f"task {t1} is full" in r.json()["detail"]
    # carol never asked for a task: t2 was never offered to her
    r = client.post(f"/api/tasks/{t2}/ranking", headers=hc, json={"order": ids[t2]})
    assert r.status_code == 409 and "never offered" in r.json()["detail"]
    # bob skips t2 once offered; a ranking of it afterwards is refused
    assert client.get("/api/tasks/next", headers=hb).json()["task_id"] == t2
    assert client.post(f"/api/tasks/{t2}/skip", headers=hb).status_code == 200
    r = client.post(f"/api/tasks/{t2}/ranking", headers=hb, json={"order": ids[t2]})
    assert r.status_code == 409 and "skipped" in r.json()["detail"]
    assert [(x["task_id"], x["annotator"]) for x in store.rankings()] == [(t1, "alice")]


def test_bodies_over_the_limit_are_413(sqlite_store):
    store = sqlite_store
    client = TestClient(create_app(store))
    fill(store, 1, k=2)
    h = auth(store.add_annotator("alice"))
    big = b'{"order": [1, 2], "pad": "' + b"x" * MAX_BODY + b'"}'
    r = client.post("/api/tasks/1/ranking", headers=h | {"Content-Type": "application/json"}, content=big)
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    chunks = (big[i:i + 4096] for i in range(0, len(big), 4096))  # no Content-Length: counted as it arrives
    r = client.post("/api/tasks/1/ranking", headers=h | {"Content-Type": "application/json"}, content=chunks)
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    r = client.post("/api/tasks/1/ranking", headers=h | {"Content-Type": "application/json", "Content-Length": "x1"},
                    content=b"{}")
    assert r.status_code in (400, 422)  # httpx may refuse a bad header itself; never a 5xx
    assert store.rankings() == []


def test_413_without_reading_the_body(tmp_path):
    """A real server: 16 MB announced, 1 KB sent; the answer comes at once and the body is never read."""
    import threading

    import uvicorn

    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1", port=free_port(), log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        while not server.started:
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", server.config.port), timeout=10) as sock:
            sock.sendall(b"POST /api/tasks/1/ranking HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 16777216\r\n\r\n" + b"x" * 1024)
            t0, reply = time.perf_counter(), b""
            while b"\r\n\r\n" not in reply:
                part = sock.recv(65536)
                if not part:
                    break
                reply += part
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert time.perf_counter() - t0 < 5  # it did not wait for the other 16 MB
    finally:
        server.should_exit = True
        th.join(10)
        store.close()


def test_docs_are_served_offline(sqlite_store):
    """/docs and /redoc load Swagger UI and ReDoc from this server (fastapi-offline), no CDN."""
    client = TestClient(create_app(sqlite_store))
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(page).text
        assert f'src="/static-offline-docs/{asset}"' in html, html[:500]
        assert "cdn" not in html.lower() and "https://" not in html
        js = client.get(f"/static-offline-docs/{asset}")
        assert js.status_code == 200 and len(js.content) > 100_000  # the real bundle, not a stub
    assert client.get("/static-offline-docs/swagger-ui.css").status_code == 200


def test_database_failure_is_503(tmp_path):
    import sqlalchemy as sa

    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    (t,) = fill(store, 1, k=2)
    h = auth(store.add_annotator("alice"))
    with TestClient(create_app(store)) as c:
        ids = [r["id"] for r in c.get("/api/tasks/next", headers=h).json()["responses"]]
        store.engine.dispose()  # new connections from here on refuse every write: a real SQLite error
        sa.event.listen(store.engine, "connect", lambda conn, _: conn.execute("PRAGMA query_only=ON"))
        r = c.post(f"/api/tasks/{t}/ranking", headers=h, json={"order": ids})
        assert r.status_code == 503 and "database error" in r.json()["detail"], r.text
    store.close()


def test_arena_votes(store):
    (t1, t2) = fill(store, 2, k=2, kind="arena")
    fill(store, 1, k=3)  # a rank task: not served in arena mode
    h = auth(store.add_annotator("alice"))
    with TestClient(create_app(store, kind="arena")) as c:
        assert c.get("/api/me", headers=h).json()["kind"] == "arena"
        task = c.get("/api/tasks/next", headers=h).json()
        assert task["kind"] == "arena" and len(task["responses"]) == 2
        a, b = (r["id"] for r in task["responses"])
        # a tie sent from two page loads that showed the pair on different sides: one vote
        r1 = c.post(f"/api/tasks/{t1}/ranking", headers=h, json={"order": [b, a], "tie": True})
        r2 = c.post(f"/api/tasks/{t1}/ranking", headers=h, json={"order": [a, b], "tie": True})
        assert r1.status_code == r2.status_code == 200 and r2.json()["created"] is False
        x, y = (r["id"] for r in c.get("/api/tasks/next", headers=h).json()["responses"])
        assert c.post(f"/api/tasks/{t2}/ranking", headers=h, json={"order": [y, x]}).status_code == 200
        assert c.get("/api/tasks/next", headers=h).status_code == 204
    votes = store.rankings()
    assert [(v["source"], v["kind"], v["tie"], v["response_ids"]) for v in votes] == [
        ("arena", "arena", True, sorted([a, b])), ("arena", "arena", False, [y, x])]


def test_prepare_arena_samples_each_checkpoint(tmp_path, sqlite_store):
    store = sqlite_store
    pytest.importorskip("transformers")
    import torch
    from transformers import LlamaForCausalLM

    from rlhfkit.models import save_model, tiny_llama_config
    from rlhfkit.tokenizer import train_tokenizer

    pytest.importorskip("rlhfkit.generation")
    tok = train_tokenizer(["the pelican tells a joke about fish"] * 20, vocab_size=300, min_frequency=1)
    ckpts = []
    for i in range(3):
        torch.manual_seed(i)
        cfg = tiny_llama_config(len(tok), d_model=32, n_layers=1, n_heads=2, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
        ckpts.append(str(tmp_path / f"ckpt{i}"))
        save_model(LlamaForCausalLM(cfg), tok, ckpts[-1])
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": f"joke {i}"}) + "\n" for i in range(5)))
    prompts = read_prompts(prompts_file, n=4)
    assert prompts == ["joke 0", "joke 1", "joke 2", "joke 3"]

    sampling = dict(max_new_tokens=6, temperature=1.0, top_p=1.0, seed=0)
    assert ensure_arena(tmp_path, store.url, ckpts, prompts_file, n_prompts=4, **sampling) == 4
    # `rlhfkit label --arena` started again with the same arguments: nothing sampled, nothing added
    assert ensure_arena(tmp_path, store.url, ckpts, prompts_file, n_prompts=4, **sampling) == 0
    aid = store.annotator("sim")["id"]
    tasks = [store.task(t) for t in store.open_tasks(aid, kind="arena")]
    assert [t["prompt"] for t in tasks] == prompts and all(len(t["responses"]) == 2 for t in tasks)
    assert store.counts()["responses"] == 3 * 4  # one answer per checkpoint per prompt
    # pairs rotate over (0,1), (0,2), (1,2), (0,1): read the checkpoints back through the votes
    for t in tasks:
        store.submit_ranking(t["task_id"], aid, [r["id"] for r in t["responses"]], source="arena")
    pairs = [tuple(r["models"]) for r in store.rankings()]
    c0, c1, c2 = ckpts
    assert pairs == [(c0, c1), (c0, c2), (c1, c2), (c0, c1)]

    with pytest.raises(UserError, match="at least two"):
        prepare_arena(store, ckpts[:1], prompts)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        read_prompts(bad)


# ---------------------------------------------------------------------------------------
# fuzz: schemathesis generates requests from /openapi.json; no input may produce a 5xx

def test_fuzz_openapi_no_server_error(tmp_path):
    """schemathesis cases (valid and invalid) for every operation of /openapi.json, with a real token.

    Half the cases are steered onto real tasks (and, for rankings, a permutation of the task's
    real response ids with the rest of the generated body kept), so the fuzz also exercises
    the store's accept / idempotent / conflict paths, not only the 404s of random ids.
    """
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

    store = FeedbackStore(f"sqlite:///{tmp_path / 'fuzz.db'}")
    tasks = fill(store, 3, k=3, overlap=2) + fill(store, 2, k=2, kind="arena")
    ids = {t: [r["id"] for r in store.task(t)["responses"]] for t in tasks}
    token = store.add_annotator("fuzzer")
    headers, fuzzer = auth(token), store.authenticate(token)["id"]
    import sqlalchemy as sa

    from rlhfkit.feedback.store import offers

    with store.engine.begin() as conn:  # every task offered to the fuzzer, so steered rankings can be accepted
        conn.execute(sa.insert(offers), [{"task_id": t, "annotator_id": fuzzer, "created_at": 0.0} for t in tasks])
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(store))
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    statuses = []
    try:
        for result in schema.get_all_operations():
            op = result.ok()
            strategy = op.as_strategy(GenerationMode.POSITIVE) | op.as_strategy(GenerationMode.NEGATIVE)

            @given(case=strategy, data=st.data())
            @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case, data):
                if "task_id" in (case.path_parameters or {}) and data.draw(st.booleans()):
                    t = case.path_parameters["task_id"] = data.draw(st.sampled_from(tasks))
                    if isinstance(case.body, dict) and "order" in case.body:
                        case.body["order"] = data.draw(st.permutations(ids[t]))
                statuses.append(case.call_and_validate(headers=headers, checks=checks).status_code)

            run()
    finally:
        store.close()
    assert len(statuses) >= 5 * 20, len(statuses)  # 5 operations, each fuzzed
    assert {200, 401, 404, 422} <= set(statuses), sorted(set(statuses))  # the fuzz reached every kind of answer
