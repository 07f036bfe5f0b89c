"""The report in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Every image decodes (naturalWidth > 0), nothing is requested but the file itself and data: URIs,
no script runs, and the page fits a phone's width. Screenshots: /tmp/rlhfkit-report.png (desktop,
full page) and /tmp/rlhfkit-report-phone.png.

Skips (with the reason) when /usr/bin/chromium or the playwright package is missing:
    apt-get install -y chromium && pip install playwright     # never `playwright install`
"""

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")

from test_report import full_report  # noqa: E402  (after the skips)


def test_report_in_chromium(tmp_path_factory, tiny_tokenizer, tiny_base):
    page_file = full_report(tmp_path_factory, tiny_tokenizer, tiny_base)  # test_report's page, built once
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        requests, errors, dialogs = [], [], []
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(page_file.as_uri(), wait_until="load")

        sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        assert len(sizes) == 11 and all(done and w > 300 and h > 200 for done, w, h in sizes), sizes
        # only the page itself and its data: images; the browser fetched nothing from anywhere else
        assert requests and requests[0] == page_file.as_uri()
        assert all(u.startswith(("file:", "data:")) for u in requests), [u for u in requests if not u.startswith("data:")]
        assert page.locator("script").count() == 0
        # the model's <script> shows as text in the before/after table
        assert page.get_by_text("<script>alert(1)</script> the the the", exact=True).is_visible()
        assert page.locator("section#rlhf h3").first.text_content().startswith("PPO: ppo")
        page.screenshot(path="/tmp/rlhfkit-report.png", full_page=True)

        phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        phone.goto(page_file.as_uri(), wait_until="load")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"page is {width}px wide on a 390px screen"
        phone.screenshot(path="/tmp/rlhfkit-report-phone.png", full_page=False)
        browser.close()
    assert errors == [] and dialogs == []
