"""The web page in a real headless browser: Debian's Chromium driven by Playwright.

Playwright's own browser download cannot work here; it drives the `chromium` package's binary
(`make test` installs it). The test asks a question as a person would, waits for the streamed
answer and the numbered sources, opens a source's passage, and keeps a screenshot in the test's
tmp dir (and, with TRITONRAG_PAGE_SCREENSHOT=path, where the README's picture lives).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUESTION = "How do I read a file line by line?"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("no chromium binary: `apt-get install chromium` (make test does)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


def test_ask_on_the_page_streams_an_answer_with_sources(stack, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(stack.url + "/")
    page.fill("#api-key", stack.api_key)
    page.dispatch_event("#api-key", "change")  # the model list needs the key
    page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
    assert page.input_value("#model") == "rag"
    page.fill("#question", QUESTION)
    page.fill("#max-tokens", "60")
    page.click("#ask")
    page.wait_for_selector('#answer:not(:empty), #status[data-state="error"]', timeout=120_000)  # first tokens
    page.wait_for_selector('#status[data-state="done"], #status[data-state="error"]', timeout=300_000)
    assert page.is_hidden("#error"), page.inner_text("#error")
    assert len(page.inner_text("#answer").strip()) > 20
    sources = page.locator("#sources li")
    assert sources.count() >= 1
    assert all(sources.nth(i).locator(".title").inner_text() for i in range(sources.count()))
    first = sources.nth(0)
    assert not first.locator(".passage").is_visible()
    first.locator("summary").click()
    assert first.locator(".passage").is_visible() and len(first.locator(".passage").inner_text()) > 20
    assert page.inner_text("#ttft").endswith("ms") and float(page.inner_text("#tps")) > 0
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    if os.environ.get("TRITONRAG_PAGE_SCREENSHOT"):
        page.screenshot(path=os.environ["TRITONRAG_PAGE_SCREENSHOT"], full_page=True)


def test_the_bare_llm_from_the_page(stack, browser):
    page = browser.new_page()
    page.goto(stack.url + "/")
    page.fill("#api-key", stack.api_key)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
    llm = page.locator("#model option").nth(1).get_attribute("value")
    page.select_option("#model", llm)
    page.fill("#question", "Name three colours.")
    page.fill("#max-tokens", "12")
    page.click("#ask")
    page.wait_for_selector('#status[data-state="done"], #status[data-state="error"]', timeout=300_000)
    assert page.is_hidden("#error"), page.inner_text("#error")
    assert page.inner_text("#answer").strip() and page.locator("#sources li").count() == 0
    assert 0 < int(page.inner_text("#tokens")) <= 12
