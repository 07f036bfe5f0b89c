"""`rlhfkit label RUN`: the ranking (or arena) web page for annotators, and its REST API.

    rlhfkit feedback add-annotator runs/demo alice        # prints alice's token once
    rlhfkit label runs/demo --port 8000                    # open http://127.0.0.1:8000
    rlhfkit label runs/demo --arena runs/demo/sft runs/demo/rl/step-200 --prompts prompts.jsonl

One static page (src/rlhfkit/feedback/static/: index.html, app.js, style.css; no build step,
nothing from a CDN) talks to a small JSON API. The API is the public contract, documented at
/docs and /openapi.json:

    GET  /api/me                        who am I, how far along
    GET  /api/tasks/next                the next task, recorded as offered to you (204: none left)
    POST /api/tasks/{task_id}/ranking   {"order": [ids best first], "all_bad", "seconds", "tie"}
    POST /api/tasks/{task_id}/skip
    POST /api/undo                      delete my most recent ranking

Every call carries `Authorization: Bearer TOKEN` (tokens from `rlhfkit feedback add-annotator`,
stored hashed). Identity comes only from the token, so nobody can write as someone else.
Client mistakes map to 4xx with a `detail` message (store.NotFound -> 404, InvalidRanking -> 422,
Conflict -> 409: a task already ranked differently, full, skipped, or never offered to you by
/api/tasks/next; a body over 64 KiB -> 413, refused before it is read); the request bodies are
strict pydantic models bounded to what SQLite can hold, so no client input reaches the database
as something it cannot store. A failing database (down, locked past its timeout) is 503.
/docs and /redoc serve Swagger UI and ReDoc from the fastapi-offline package: no CDN.

Arena mode samples one answer per checkpoint per prompt, then serves blind A/B votes: each vote
is a 2-way ranking (tie=True for ties) with source "arena"; `rlhfkit feedback stats` rates them.
"""

# no `from __future__ import annotations`: FastAPI resolves the endpoint annotations at run
# time, and the dependency aliases (Who, TaskId) live inside create_app.
import json
import sys
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from rlhfkit.feedback.store import Conflict, FeedbackStore, InvalidRanking, NotFound, StoreError, Unavailable
from rlhfkit.files import UserError, atomic_write_text

STATIC = Path(__file__).parent / "static"
STATIC_FILES = ("index.html", "app.js", "style.css")
MAX_ID = 2**63 - 1  # SQLite INTEGER is signed 64-bit: a larger id would overflow in the driver (a 500)
MAX_K = 64  # responses per task; far above any real K, keeps a hostile body small
MAX_BODY = 64 * 1024  # bytes; a ranking of MAX_K ids is well under 2 KiB
STORE_ERROR_STATUS = {NotFound: 404, InvalidRanking: 422, Conflict: 409, Unavailable: 503}  # other: 400


# ---------------------------------------------------------------------------------------
# request / response bodies: the OpenAPI schema is generated from these

Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class ResponseOut(BaseModel):
    id: int
    text: str = Field(description="model output: untrusted, display as plain text")


class TaskOut(BaseModel):
    task_id: int
    kind: Literal["rank", "arena"]
    prompt: str
    responses: list[ResponseOut]


class RankingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # e.g. an "annotator" field is refused: identity is the token
    order: list[Id] = Field(min_length=1, max_length=MAX_K, description="the task's response ids, best first")
    all_bad: bool = Field(False, description="every response is unacceptable (the order still says which is least bad)")
    seconds: float | None = Field(None, ge=0, le=7 * 86400, allow_inf_nan=False, description="time spent on the task")
    tie: bool = Field(False, description="arena: the two answers are equally good (the order is then ignored)")


class RankingOut(BaseModel):
    ranking_id: int
    created: bool = Field(description="false when this exact ranking was already stored (a resend)")


class SkipOut(BaseModel):
    task_id: int
    skipped: bool = True


class UndoOut(BaseModel):
    task_id: int | None = Field(description="the task whose ranking was deleted; null when there was none")


class MeOut(BaseModel):
    name: str
    role: str
    kind: Literal["rank", "arena"] = Field(description="what this server asks for: ranking K responses or arena votes")
    done: int
    remaining: int


class ErrorOut(BaseModel):
    detail: str


def _errors(*codes: int) -> dict:
    return {c: {"model": ErrorOut} for c in codes}


# ---------------------------------------------------------------------------------------
# the app


class _TooLarge(HTTPException):
    # an HTTPException, so that FastAPI, reading the body inside an endpoint, answers it as a 413
    # with {"detail"} (it turns any other exception from the body into a 400)
    def __init__(self, limit: int):
        super().__init__(413, f"request body too large: over the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app reads it.

    A declared Content-Length over the limit is refused at once, without reading a byte of the
    body; a chunked body is counted as it arrives and refused at the first chunk past the limit.
    Pure ASGI rather than Starlette's http middleware, which would wrap every response too."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            return await _send_error(send, 400, f"invalid Content-Length {declared.decode('latin-1')[:40]!r}")
        if declared is not None and int(declared) > self.limit:
            return await _send_error(send, 413, f"request body too large: {int(declared)} bytes, "
                                                f"the limit is {self.limit}")
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge(self.limit)
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge as e:  # read outside an endpoint
            if not started:
                await _send_error(send, 413, e.detail)


async def _send_error(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})  # the unread rest of the body is not waited for
    await send({"type": "http.response.body", "body": body})


def create_app(store: FeedbackStore, kind: str = "rank") -> FastAPI:
    """A FastAPI app serving the page and the API over `store`; `kind` is "rank" or "arena"."""
    from fastapi_offline import FastAPIOffline

    if kind not in ("rank", "arena"):
        raise UserError(f"kind must be 'rank' or 'arena', got {kind!r}")
    # FastAPIOffline: FastAPI whose /docs and /redoc load Swagger UI and ReDoc from the package, not a CDN
    app = FastAPIOffline(
        title="rlhfkit feedback",
        version="1",
        description="Rank model responses (or vote in the arena). Authenticate with `Authorization: Bearer TOKEN` "
        "(tokens come from `rlhfkit feedback add-annotator RUN NAME`).",
    )
    app.state.store = store
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    bearer = HTTPBearer(auto_error=False, description="annotator token from `rlhfkit feedback add-annotator`")

    def annotator(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> dict:
        who = store.authenticate(cred.credentials) if cred and len(cred.credentials) <= 512 else None
        if who is None:
            raise HTTPException(401, "missing or unknown token: sign in with the token from "
                                     "`rlhfkit feedback add-annotator`", headers={"WWW-Authenticate": "Bearer"})
        return who

    # a task's kind never changes: remember it instead of reading the task on every submission
    task_kind = lru_cache(maxsize=100_000)(lambda task_id: store.task(task_id)["kind"])  # NotFound is not cached

    Who = Annotated[dict, Depends(annotator)]
    TaskId = Annotated[int, PathParam(ge=1, le=MAX_ID)]

    @app.exception_handler(StoreError)
    def _store_error(request: Request, e: StoreError) -> JSONResponse:
        # the store raises people-facing errors; each kind is a client mistake with its own status
        code = next((c for cls, c in STORE_ERROR_STATUS.items() if isinstance(e, cls)), 400)
        return JSONResponse({"detail": str(e)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        # one readable line instead of FastAPI's list, so every error body is {"detail": str}
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)

    # sync endpoints: FastAPI runs each in a worker thread; the store is safe for concurrent use
    @app.get("/api/me", response_model=MeOut, responses=_errors(401, 503), tags=["annotator"])
    def me(who: Who) -> MeOut:
        """Who the token belongs to, what this server asks for, and how far along they are."""
        p = store.progress(who["id"], kind=kind)
        return MeOut(name=who["name"], role=who["role"], kind=kind, done=p["done"], remaining=p["remaining"])

    @app.get("/api/tasks/next", response_model=TaskOut, responses={204: {"description": "no task left for you"},
                                                                   **_errors(401, 503)}, tags=["tasks"])
    def next_task(who: Who):
        """The oldest task you have not ranked or skipped that still needs rankings; 204 when none is left."""
        t = store.next_task(who["id"], kind=kind)
        if t is None:
            return Response(status_code=204)
        return TaskOut(task_id=t["task_id"], kind=t.get("kind", kind), prompt=t["prompt"],
                       responses=[ResponseOut(id=r["id"], text=r["text"]) for r in t["responses"]])

    @app.post("/api/tasks/{task_id}/ranking", response_model=RankingOut,
              responses=_errors(400, 401, 404, 409, 413, 422, 503),
              tags=["tasks"])
    def submit(task_id: TaskId, body: RankingIn, who: Who) -> RankingOut:
        """Store your ranking (response ids best first) of a task /api/tasks/next gave you. The same
        ranking sent again is stored once (created false); 409 for a different order of a task you
        already ranked (undo first), a task that is full (its overlap reached), one you skipped, or
        one never offered to you."""
        # a tie has no order: store it canonically so resending a tie from a re-shuffled page is idempotent
        order = sorted(body.order) if body.tie else list(body.order)
        source = "arena" if task_kind(task_id) == "arena" else "human"  # NotFound -> 404
        rid, created = store.submit_ranking(task_id, who["id"], order, all_bad=body.all_bad, seconds=body.seconds,
                                            source=source, tie=body.tie, offered_only=True)
        return RankingOut(ranking_id=rid, created=created)

    @app.post("/api/tasks/{task_id}/skip", response_model=SkipOut, responses=_errors(401, 404, 413, 422, 503),
              tags=["tasks"])
    def skip(task_id: TaskId, who: Who) -> SkipOut:
        """Do not show you this task again."""
        store.skip_task(task_id, who["id"])
        return SkipOut(task_id=task_id)

    @app.post("/api/undo", response_model=UndoOut, responses=_errors(401, 413, 503), tags=["tasks"])
    def undo(who: Who) -> UndoOut:
        """Delete your most recent ranking; its task comes back in /api/tasks/next."""
        return UndoOut(task_id=store.undo_last(who["id"]))

    # the page: one HTML file plus its script and style, all local (CSP forbids anything else)
    page_headers = {
        "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                   "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=page_headers)

    # explicit routes, not a middleware: Starlette's http middleware would wrap every API call too
    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(STATIC / name, headers=page_headers)

    return app


# ---------------------------------------------------------------------------------------
# arena: sample one answer per checkpoint per prompt, one task per prompt for a rotated pair


def read_prompts(path: str | Path, n: int | None = None) -> list[str]:
    from rlhfkit.files import read_jsonl

    prompts = []
    for i, rec in enumerate(read_jsonl(path), 1):
        if not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise UserError(f"{path}:{i}: expected {{\"prompt\": \"...\"}} with a non-empty string")
        prompts.append(rec["prompt"])
    return prompts[:n] if n else prompts


def sample_answers(checkpoint: str, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.8,
                   top_p: float = 0.95, seed: int = 0, batch_size: int = 16) -> list[str]:
    """One sampled answer per prompt from `checkpoint`, through its chat template."""
    import torch

    from rlhfkit.generation import generate
    from rlhfkit.models import eos_token_ids, load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(checkpoint), load_tokenizer(checkpoint)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    eos = eos_token_ids(model, tok)
    texts: list[str] = []
    for i in range(0, len(prompts), batch_size):
        batch = []
        for p in prompts[i:i + batch_size]:
            chat = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False)
            batch.append(tok(chat, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            rollout = generate(model, batch, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               eos_token_ids=eos, pad_token_id=tok.pad_token_id, generator=gen)
        texts += rollout.texts(tok)
    return texts


def prepare_arena(store: FeedbackStore, checkpoints: list[str], prompts: list[str], **sampling) -> int:
    """Sample every checkpoint on every prompt; create one arena task per prompt -> number of tasks.

    Prompt i compares the pair `pairs[i % len(pairs)]` of all checkpoint pairs, so with C
    checkpoints every pair gets about len(prompts) / (C (C-1) / 2) votes' worth of tasks.
    """
    if len(checkpoints) < 2:
        raise UserError("--arena: give at least two checkpoints")
    if len(set(checkpoints)) != len(checkpoints):
        raise UserError("--arena: the same checkpoint is listed twice")
    answers = {}
    for c in checkpoints:
        print(f"arena: sampling {len(prompts)} answers from {c} ...", file=sys.stderr)
        answers[c] = sample_answers(c, prompts, **sampling)
    pairs = list(combinations(checkpoints, 2))
    for i, text in enumerate(prompts):
        pid = store.add_prompt(text, meta={"arena": True})
        rids = {c: store.add_response(pid, answers[c][i], model=c, sampling=sampling) for c in checkpoints}
        a, b = pairs[i % len(pairs)]
        store.create_task(pid, [rids[a], rids[b]], kind="arena")
    return len(prompts)


def ensure_arena(run_dir: str | Path, db: str | None, checkpoints: list[str], prompts_file: str | Path,
                 n_prompts: int | None = None, **sampling) -> int:
    """prepare_arena once per (checkpoints, prompts, sampling): -> tasks created (0 when already done).

    Restarting `rlhfkit label --arena` with the same arguments must not sample again and
    add duplicate tasks: what was prepared is recorded in RUN/arena.json.
    """
    prompts = read_prompts(prompts_file, n_prompts)
    marker = Path(run_dir) / "arena.json"
    spec = {"checkpoints": list(checkpoints), "prompts": str(Path(prompts_file).resolve()),
            "n_prompts": len(prompts), "db": db or "", **sampling}
    done = json.loads(marker.read_text()) if marker.is_file() else []
    if spec in done:
        return 0
    store = FeedbackStore.for_run(run_dir, db)
    try:
        n = prepare_arena(store, list(checkpoints), prompts, **sampling)
    finally:
        store.close()
    atomic_write_text(marker, json.dumps(done + [spec], indent=1))
    return n


# ---------------------------------------------------------------------------------------
# serving


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, db: str | None = None,
          kind: str = "rank") -> None:
    import socket

    import uvicorn

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:  # one clear line, not a traceback
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    store = FeedbackStore.for_run(run_dir, db)
    try:
        app = create_app(store, kind)
        print(f"rlhfkit label: serving {kind} tasks on http://{host}:{port}/  (API docs: /docs)", file=sys.stderr)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        store.close()


def cli(name: str, argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog=f"rlhfkit {name}", description="Serve the ranking (or arena) page for annotators.")
    p.add_argument("run", help="run directory (its feedback.db is used unless --db is given)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (tokens travel in clear "
                                                       "text: put TLS in front)")
    p.add_argument("--db", help="database URL (sqlite:///path or postgresql://...); default RUN/feedback.db")
    p.add_argument("--arena", nargs="+", metavar="CKPT", help="blind A/B voting between these model dirs")
    p.add_argument("--prompts", help="arena prompts: JSONL with {\"prompt\": ...} per line")
    p.add_argument("--n-prompts", type=int, default=50, help="arena: use the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    kind = "rank"
    if not args.arena and not args.db and not (Path(args.run) / "feedback.db").is_file():
        raise UserError(f"{Path(args.run) / 'feedback.db'} not found (fill it first: rlhfkit feedback ...; "
                        "or give --db URL)")
    if args.arena:
        if not args.prompts:
            raise UserError("--arena needs --prompts FILE.jsonl")
        kind = "arena"
        n = ensure_arena(args.run, args.db, args.arena, args.prompts, args.n_prompts,
                         max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                         seed=args.seed)
        print(f"arena: {n} new tasks over {len(args.arena)} checkpoints", file=sys.stderr)
    serve(args.run, args.host, args.port, args.db, kind)
    return 0
