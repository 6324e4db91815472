"""The chat page in a real browser: Debian's headless chromium driven by Selenium through chromium-driver.

Upload an image, ask a question, see the streamed reply appear: the page shows what the API answers for
that image and question. The screenshot goes to the test's folder; with EVE_MS_DOCS_SCREENSHOT=1 it
also replaces docs/serve_chat.png (the README's picture).
"""
import os
import shutil
from pathlib import Path

import pytest
from openai import OpenAI

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's; nothing is downloaded
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=900,700"]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "serve_chat.png"
QUESTION = "What is in the picture?"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    assert not missing, f"{missing} missing: apt-get install chromium chromium-driver (.ci/run does)"
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_chat_page_sends_an_uploaded_image_and_a_question_and_streams_the_reply(server, browser, picture, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path, data_url = picture
    client = OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)
    expected = client.chat.completions.create(
        model="tiny-eve", temperature=0, max_tokens=MAX_TOKENS,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                               {"type": "text", "text": QUESTION}]}],
    ).choices[0].message.content
    assert expected

    browser.get(server + "/")
    assert browser.title == "eve-ms chat" and browser.find_element(By.ID, "model").text == "tiny-eve"
    browser.find_element(By.ID, "image").send_keys(path)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "preview").is_displayed())
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys(str(MAX_TOKENS))
    browser.find_element(By.ID, "prompt").send_keys(QUESTION)
    browser.find_element(By.ID, "send").click()
    reply = WebDriverWait(browser, 240).until(lambda d: d.find_element(By.CSS_SELECTOR, ".reply[data-done='true']"))

    assert "error" not in reply.get_attribute("class"), reply.get_attribute("textContent")
    assert reply.get_attribute("textContent") == expected  # the image and the question reached the model
    assert int(reply.get_attribute("data-chunks")) >= 2  # it arrived in pieces
    user = browser.find_element(By.CSS_SELECTOR, ".turn.user")
    assert user.get_attribute("textContent") == QUESTION and user.find_element(By.TAG_NAME, "img")

    shot = tmp_path / "serve_chat.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    if os.environ.get("EVE_MS_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
