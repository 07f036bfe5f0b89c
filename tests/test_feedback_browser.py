"""The ranking page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Sign in with a token, rank 5 responses by keyboard, submit, and find the ranking in the store;
model output with <script> and onerror= shows as text and fires nothing; undo; drag-and-drop;
the arena's a/t/b keys. Screenshots (desktop and phone width) go to /tmp/rlhfkit-*.png.

Skips (with the reason) when /usr/bin/chromium or the playwright package is missing:
    apt-get install -y chromium && pip install playwright     # never `playwright install`
"""

import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
pytest.importorskip("fastapi")

from rlhfkit.feedback.app import create_app  # noqa: E402
from rlhfkit.feedback.store import FeedbackStore  # noqa: E402

TEXTS = [
    "Why did the pelican get kicked out of the restaurant? It had a very big bill.",
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(2)"> pelicans are birds',
    "A pelican walks into a bar.\nThe bartender says: why the long face?\n(wrong animal)",
    "the the the the the the the the",
]


class ThreadServer:
    """uvicorn serving `app` on a free port of 127.0.0.1 in a thread; stopped on exit."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 15
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def wait_for(fn, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def shown(page) -> list[tuple[str, str]]:
    """(key, text) of each card, top to bottom."""
    return page.eval_on_selector_all("#responses li.response",
                                     "els => els.map(e => [e.querySelector('kbd').textContent,"
                                     " e.querySelector('.text').textContent])")


def test_rank_by_keyboard_in_chromium(tmp_path, browser):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    pid = store.add_prompt("Tell me a joke about pelicans.")
    task = store.create_task(pid, [store.add_response(pid, t, model="sft") for t in TEXTS])
    pid2 = store.add_prompt("Another one, please.")
    store.create_task(pid2, [store.add_response(pid2, f"joke {i}") for i in range(3)])
    token = store.add_annotator("alice")
    dialogs = []
    with ThreadServer(create_app(store)) as srv:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url)

        # sign in once; the token is kept in localStorage
        page.locator("#token").fill(token)
        page.keyboard.press("Enter")
        page.locator("#rank").wait_for(state="visible")
        assert page.locator("#name").text_content() == "alice"
        assert page.locator("#progress-text").text_content() == "0 done · 2 left"
        assert page.locator("#rank-prompt").text_content() == "Tell me a joke about pelicans."

        # untrusted text is text: no script or img element was created, nothing fired
        cards = shown(page)
        assert sorted(t for _, t in cards) == sorted(TEXTS)
        assert page.locator("main script, main img").count() == 0
        assert page.get_by_text("<script>alert(1)</script>", exact=True).is_visible()

        # keyboard: the first key pressed is the best, and so on
        want = [TEXTS[3], TEXTS[0], TEXTS[2], TEXTS[1], TEXTS[4]]
        key_of = {t: k for k, t in cards}
        assert page.locator("#submit").is_disabled()
        for t in want[:4]:  # the fifth is implied
            page.keyboard.press(key_of[t])
        assert [t for _, t in shown(page)] == want
        assert page.locator("#submit").is_enabled()
        assert page.locator("li.ranked .rank").all_text_contents() == ["1", "2", "3", "4", "5"]
        page.screenshot(path="/tmp/rlhfkit-rank-desktop.png", full_page=True)

        page.keyboard.press("Enter")
        (r,) = wait_for(store.rankings)
        assert r["task_id"] == task and r["responses"] == want and r["annotator"] == "alice"
        assert r["source"] == "human" and r["all_bad"] is False and 0 <= r["seconds"] < 60
        page.locator("#rank-prompt", has_text="Another one").wait_for()
        wait_for(lambda: page.locator("#progress-text").text_content() == "1 done · 1 left")

        # undo brings the first task back; drag-and-drop then reorders the whole list
        page.keyboard.press("u")
        page.locator("#rank-prompt", has_text="pelicans").wait_for()
        assert store.rankings() == []
        cards = [t for _, t in shown(page)]
        page.locator("li.response").nth(4).drag_to(page.locator("li.response").nth(0),
                                                   target_position={"x": 20, "y": 5})
        dragged = [cards[4]] + cards[:4]
        assert [t for _, t in shown(page)] == dragged
        page.locator("#all-bad").check()
        page.locator("#submit").click()
        (r,) = wait_for(store.rankings)
        assert r["responses"] == dragged and r["all_bad"] is True

        # a reload keeps the session (localStorage), no second sign-in
        page.reload()
        page.locator("#rank-prompt", has_text="Another one").wait_for()
        assert page.locator("#signin").is_hidden()

        # phone width: the same page, stacked
        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                 has_touch=True)
        phone.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        phone.goto(srv.url)
        phone.evaluate("t => localStorage.setItem('rlhfkit.token', t)", token)
        phone.reload()
        phone.locator("#rank").wait_for(state="visible")
        assert phone.locator(".for-touch").is_visible() and phone.locator(".for-keys").is_hidden()
        phone.locator("li.response").first.tap()  # tap picks the next best
        assert phone.locator("li.ranked").count() == 1
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"page is {width}px wide on a 390px screen"
        phone.screenshot(path="/tmp/rlhfkit-rank-phone.png", full_page=True)
    store.close()
    assert dialogs == [] and errors == []


def test_arena_keys_in_chromium(tmp_path, browser):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    for i in range(2):
        pid = store.add_prompt(f"Write a haiku about pelican {i}.")
        a = store.add_response(pid, f"answer from ckpt-A {i}", model="ckpt-A")
        b = store.add_response(pid, f"answer from ckpt-B {i}", model="ckpt-B")
        store.create_task(pid, [a, b], kind="arena")
    token = store.add_annotator("bob")
    with ThreadServer(create_app(store, kind="arena")) as srv:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(srv.url)
        page.locator("#token").fill(token)
        page.keyboard.press("Enter")
        page.locator("#arena").wait_for(state="visible")
        assert page.locator("#mode-label").text_content() == "arena"
        assert "ckpt" not in page.locator(".pair .label").all_text_contents()  # labels are only A and B
        right = page.locator("#answer-b").text_content()
        page.screenshot(path="/tmp/rlhfkit-arena-desktop.png", full_page=True)
        phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        phone.goto(srv.url)
        phone.evaluate("t => localStorage.setItem('rlhfkit.token', t)", token)
        phone.reload()
        phone.locator("#arena").wait_for(state="visible")
        phone.screenshot(path="/tmp/rlhfkit-arena-phone.png", full_page=True)
        phone.close()
        page.keyboard.press("b")  # B is better
        (v,) = wait_for(store.rankings)
        assert v["responses"][0] == right and v["source"] == "arena" and v["tie"] is False
        page.locator("#arena-prompt", has_text="pelican 1").wait_for()
        page.keyboard.press("t")
        wait_for(lambda: len(store.rankings()) == 2)
        assert store.rankings()[1]["tie"] is True
        page.locator("#done").wait_for(state="visible")
    store.close()


def test_api_docs_render_offline(tmp_path, browser):
    """/docs (Swagger UI) and /redoc (ReDoc) render with every request outside this server refused."""
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    with ThreadServer(create_app(store)) as srv:
        page = browser.new_page()
        outside = []

        def only_local(route):
            if route.request.url.startswith(srv.url):
                route.continue_()
            else:  # what a machine without network would see
                outside.append((route.request.resource_type, route.request.url))
                route.abort()

        page.route("**/*", only_local)
        page.goto(srv.url + "/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=15000)
        assert "rlhfkit feedback" in page.inner_text(".swagger-ui .info .title")
        assert page.locator(".opblock").count() >= 5  # the five operations, drawn by the local bundle
        page.goto(srv.url + "/redoc")
        page.wait_for_selector("h1:has-text('rlhfkit feedback')", timeout=15000)
        # ReDoc's bundle links its sidebar logo from its own site: an image, whose absence hides nothing
        assert [(kind, url) for kind, url in outside if kind != "image"] == [], outside
    store.close()
