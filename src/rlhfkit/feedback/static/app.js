// rlhfkit feedback page: rank K responses (or vote A/B in the arena) against the JSON API.
// Model output is untrusted: every prompt and response goes into the page through textContent,
// never innerHTML, so "<script>" in a response is just text.
"use strict";

const TOKEN_KEY = "rlhfkit.token";
const $ = (id) => document.getElementById(id);

const state = {
  kind: "rank",      // what the server serves: "rank" or "arena"
  task: null,        // {task_id, prompt, responses: [{id, text}]}
  order: [],         // rank: response ids as currently listed, best first
  initial: [],       // rank: the (shuffled) order the task was first shown in
  keys: new Map(),   // rank: response id -> the key (1..K) that picks it
  picked: 0,         // rank: how many of the top of `order` the person has placed
  sides: [],         // arena: [response shown as A, response shown as B]
  shownAt: 0,        // when the task appeared, for `seconds`
  busy: false,       // a request is in flight: ignore further clicks and keys
  dragId: null,
};

// ---------------------------------------------------------------------------------------
// API

async function api(method, path, body) {
  // Submissions are idempotent on the server, so a network error or 5xx is retried.
  let last = null;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const res = await fetch(path, {
        method,
        headers: {
          "Authorization": "Bearer " + (localStorage.getItem(TOKEN_KEY) || ""),
          ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (res.status >= 500) { last = { status: res.status, data: { detail: "server error" } }; }
      else {
        const data = res.status === 204 ? null : await res.json().catch(() => ({}));
        if (res.status === 401) { signOut("Your token was not accepted. Please sign in again."); }
        return { status: res.status, data };
      }
    } catch (e) {
      last = { status: 0, data: { detail: "cannot reach the server" } };
    }
    await new Promise((r) => setTimeout(r, 400 * (attempt + 1)));
  }
  return last;
}

function toast(message, bad = false) {
  const t = $("toast");
  t.textContent = message;
  t.classList.toggle("bad", bad);
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), bad ? 4000 : 1800);
}

function show(section) {
  for (const id of ["signin", "rank", "arena", "done"]) $(id).hidden = id !== section;
}

// ---------------------------------------------------------------------------------------
// signing in

function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  $("who").hidden = true;
  $("signin-error").textContent = message || "";
  show("signin");
  $("token").value = "";
  $("token").focus();
}

async function signIn(token) {
  localStorage.setItem(TOKEN_KEY, token.trim());
  const r = await api("GET", "/api/me");
  if (r.status !== 200) {
    if (r.status !== 401) signOut(r.data.detail || "Cannot sign in.");
    return;
  }
  $("who").hidden = false;
  $("name").textContent = r.data.name;
  state.kind = r.data.kind;
  $("mode-label").textContent = state.kind === "arena" ? "arena" : "ranking";
  showProgress(r.data);
  await loadNext();
}

function showProgress(me) {
  const total = me.done + me.remaining;
  $("progress-text").textContent = `${me.done} done · ${me.remaining} left`;
  $("progress-fill").style.width = total ? `${(100 * me.done) / total}%` : "0";
}

async function refreshProgress() {
  const r = await api("GET", "/api/me");
  if (r.status === 200) showProgress(r.data);
}

// ---------------------------------------------------------------------------------------
// tasks

async function loadNext() {
  const r = await api("GET", "/api/tasks/next");
  if (r.status === 204) { state.task = null; show("done"); return; }
  if (r.status !== 200) { toast(r.data.detail || "Could not load a task.", true); return; }
  state.task = r.data;
  state.shownAt = performance.now();
  if (state.kind === "arena") showArena(r.data); else showRank(r.data);
}

function shuffled(items) {
  // Fisher-Yates: the display order carries no signal (no position bias from the database order)
  const a = items.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

function seconds() {
  return Math.round((performance.now() - state.shownAt) / 100) / 10;
}

async function send(body) {
  if (state.busy || !state.task) return;
  state.busy = true;
  try {
    const r = await api("POST", `/api/tasks/${state.task.task_id}/ranking`, body);
    if (r.status === 200) toast(r.data.created ? "Saved" : "Already saved");
    else if (r.status === 404 || r.status === 409) toast(r.data.detail, true);  // gone or ranked: move on
    else { toast(r.data.detail || "Could not save.", true); return; }
    await Promise.all([refreshProgress(), loadNext()]);
  } finally {
    state.busy = false;
  }
}

async function skip() {
  if (state.busy || !state.task) return;
  state.busy = true;
  try {
    const r = await api("POST", `/api/tasks/${state.task.task_id}/skip`);
    if (r.status !== 200 && r.status !== 404) { toast(r.data.detail || "Could not skip.", true); return; }
    toast("Skipped");
    await Promise.all([refreshProgress(), loadNext()]);
  } finally {
    state.busy = false;
  }
}

async function undo() {
  if (state.busy) return;
  state.busy = true;
  try {
    const r = await api("POST", "/api/undo");
    if (r.status !== 200) { toast(r.data.detail || "Could not undo.", true); return; }
    if (r.data.task_id === null) { toast("Nothing to undo"); return; }
    toast("Your last submission was removed");
    await Promise.all([refreshProgress(), loadNext()]);
  } finally {
    state.busy = false;
  }
}

// ---------------------------------------------------------------------------------------
// ranking view

function showRank(task) {
  $("rank-prompt").textContent = task.prompt;
  state.initial = shuffled(task.responses.map((r) => r.id));
  state.keys = new Map(state.initial.map((id, i) => [id, i + 1]));
  state.order = state.initial.slice();
  state.picked = 0;
  $("all-bad").checked = false;
  const k = task.responses.length;
  $("key-range").textContent = k > 1 ? `1–${Math.min(k, 9)}` : "1";
  show("rank");
  renderRank();
}

function textOf(id) {
  return state.task.responses.find((r) => r.id === id).text;
}

function renderRank() {
  const list = $("responses");
  const k = state.order.length;
  list.classList.toggle("all-bad", $("all-bad").checked);
  list.replaceChildren();
  state.order.forEach((id, i) => {
    if (i === state.picked && state.picked > 0 && state.picked < k) {
      const d = document.createElement("li");
      d.className = "divider";
      d.textContent = "not ranked yet";
      list.append(d);
    }
    const ranked = i < state.picked;
    const li = document.createElement("li");
    li.className = "response " + (ranked ? "ranked" : "unranked");
    li.dataset.id = id;
    li.draggable = true;
    li.tabIndex = 0;
    li.setAttribute("aria-label", ranked ? `rank ${i + 1}` : `key ${state.keys.get(id)}, not ranked`);

    const rank = document.createElement("div");
    rank.className = "rank";
    rank.textContent = ranked ? String(i + 1) : "·";

    const text = document.createElement("div");
    text.className = "text";
    text.textContent = textOf(id);  // untrusted: text only

    const side = document.createElement("div");
    side.className = "side";
    const key = document.createElement("kbd");
    key.textContent = String(state.keys.get(id));
    key.title = "press to pick this one next";
    const move = document.createElement("div");
    move.className = "move";
    for (const [label, delta] of [["↑", -1], ["↓", 1]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.setAttribute("aria-label", delta < 0 ? "move up" : "move down");
      b.disabled = (delta < 0 && i === 0) || (delta > 0 && i === k - 1);
      b.addEventListener("click", (e) => { e.stopPropagation(); moveTo(id, i + delta); });
      move.append(b);
    }
    side.append(key, move);
    li.append(rank, text, side);

    li.addEventListener("click", () => { if (!window.getSelection().toString()) pick(id); });
    li.addEventListener("dragstart", (e) => {
      state.dragId = id;
      li.classList.add("dragging");
      e.dataTransfer.effectAllowed = "move";
      e.dataTransfer.setData("text/plain", String(id));
    });
    li.addEventListener("dragend", () => { state.dragId = null; renderRank(); });
    li.addEventListener("dragover", (e) => {
      e.preventDefault();
      for (const el of list.querySelectorAll(".drop-before")) el.classList.remove("drop-before");
      li.classList.add("drop-before");
    });
    li.addEventListener("drop", (e) => {
      e.preventDefault();
      if (state.dragId === null || state.dragId === id) return;
      const from = state.order.indexOf(state.dragId);
      let to = state.order.indexOf(id);
      const box = li.getBoundingClientRect();
      if (e.clientY > box.top + box.height / 2) to += 1;  // dropped on the lower half: after it
      if (from < to) to -= 1;
      moveTo(state.dragId, to);
    });
    list.append(li);
  });
  $("submit").disabled = !(state.picked === k || $("all-bad").checked);
}

function pick(id) {
  // the first key pressed is the best: put it at the next free rank
  const at = state.order.indexOf(id);
  if (at < state.picked) return;  // already placed
  state.order.splice(at, 1);
  state.order.splice(state.picked, 0, id);
  state.picked += 1;
  if (state.picked === state.order.length - 1) state.picked = state.order.length;  // the last one is implied
  renderRank();
}

function moveTo(id, to) {
  // dragging or the arrows arrange the whole list: it then counts as fully ranked
  const from = state.order.indexOf(id);
  to = Math.max(0, Math.min(state.order.length - 1, to));
  state.order.splice(from, 1);
  state.order.splice(to, 0, id);
  state.picked = state.order.length;
  renderRank();
}

function resetRank() {
  state.order = state.initial.slice();
  state.picked = 0;
  renderRank();
}

function submitRank() {
  if ($("submit").disabled) return;
  send({ order: state.order.slice(), all_bad: $("all-bad").checked, seconds: seconds() });
}

// ---------------------------------------------------------------------------------------
// arena view: the two checkpoints' answers on random sides; which is which is never shown

function showArena(task) {
  $("arena-prompt").textContent = task.prompt;
  state.sides = shuffled(task.responses);
  $("answer-a").textContent = state.sides[0].text;
  $("answer-b").textContent = state.sides[1].text;
  show("arena");
}

function vote(which) {
  const [a, b] = state.sides.map((r) => r.id);
  if (which === "tie") send({ order: [a, b], tie: true, seconds: seconds() });
  else send({ order: which === "a" ? [a, b] : [b, a], seconds: seconds() });
}

// ---------------------------------------------------------------------------------------
// wiring

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === "INPUT" && e.target.type !== "checkbox") return;
  if (!state.task || !$("signin").hidden) return;
  const k = e.key.toLowerCase();
  if (k === "u") { e.preventDefault(); undo(); return; }
  if (k === "s") { e.preventDefault(); skip(); return; }
  if (state.kind === "arena") {
    if (k === "a" || k === "b" || k === "t") { e.preventDefault(); vote(k === "t" ? "tie" : k); }
    return;
  }
  if (/^[1-9]$/.test(e.key)) {
    const id = [...state.keys].find(([, n]) => n === Number(e.key));
    if (id) { e.preventDefault(); pick(id[0]); }
  } else if (e.key === "Backspace") { e.preventDefault(); resetRank(); }
  else if (e.key === "Enter") { e.preventDefault(); submitRank(); }
  else if (k === "x") { $("all-bad").checked = !$("all-bad").checked; renderRank(); }
});

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value); });
  $("sign-out").addEventListener("click", () => signOut());
  $("submit").addEventListener("click", submitRank);
  $("reset").addEventListener("click", resetRank);
  $("all-bad").addEventListener("change", renderRank);
  for (const id of ["undo", "arena-undo", "done-undo"]) $(id).addEventListener("click", undo);
  for (const id of ["skip", "arena-skip"]) $(id).addEventListener("click", skip);
  $("reload").addEventListener("click", () => { refreshProgress(); loadNext(); });
  $("vote-a").addEventListener("click", () => vote("a"));
  $("vote-b").addEventListener("click", () => vote("b"));
  $("vote-tie").addEventListener("click", () => vote("tie"));
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) signIn(token); else signOut();
});
