"""The chat page in a real browser: Debian's Chromium, headless, driven by Playwright (no browser download)."""
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# counts the times streamed text lands in a reply, from before the page's own script runs
COUNT_UPDATES = """
window.textUpdates = 0;
new MutationObserver(records => {
  for (const r of records) {
    const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    if (el && el.closest && el.closest(".turn.assistant .reasoning, .turn.assistant .content")) window.textUpdates++;
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def test_chat_page_streams_a_reply_with_its_thinking(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser at {CHROMIUM} (Debian's chromium package)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page()
            urls = []
            page.on("request", lambda request: urls.append(request.url))
            page.add_init_script(COUNT_UPDATES)
            page.goto(f"{server.url}/")
            page.fill("#key", server.key)
            page.fill("#prompt", "What is 347 + 589?")
            page.click("#send")
            usage = page.locator(".turn.assistant .usage")
            sync_api.expect(usage).to_contain_text("$", timeout=30_000)      # shown once the reply is done
            thinking = page.locator(".turn.assistant details.thinking")
            assert thinking.count() == 1 and thinking.locator("summary").inner_text() == "Thinking"
            assert thinking.locator(".reasoning").inner_text().strip()
            assert "cache hit" in usage.inner_text() and "reasoning" in usage.inner_text()
            assert page.evaluate("window.textUpdates") >= 2                 # it arrived in pieces
            assert page.locator(".turn.user .content").inner_text() == "What is 347 + 589?"
            screenshot = tmp_path / "chat.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
        finally:
            browser.close()
    assert urls and all(url.startswith(server.url) for url in urls), urls   # the page talks to its server only
