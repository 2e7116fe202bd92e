"""The web UI in a real browser (Debian's headless Chromium driven by selenium), with every
host but the proxy's unresolvable: the page must need nothing from the internet.

Screenshots land in ``test-artifacts/ui/`` (kept after the run, also when a test fails); the
views one by one are in ``test_ui_views.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import REPO, fake_model, llama_model

ARTIFACTS = REPO / "test-artifacts" / "ui"
#: Where the browser saves downloads (the activity CSV).
DOWNLOADS = ARTIFACTS / "downloads"


@pytest.fixture
def browser(request: pytest.FixtureRequest):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, (
        "the UI tests need Debian's chromium and chromium-driver (.ci/run installs them: "
        "apt-get install -y chromium chromium-driver)")
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900",
                     # Every name but the proxy's address fails: a page that needs a CDN breaks.
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    options.add_experimental_option("prefs", {"download.default_directory": str(DOWNLOADS),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.save_screenshot(str(ARTIFACTS / f"{request.node.name}-last.png"))
    console = "\n".join(f"{e['level']} {e['message']}" for e in driver.get_log("browser"))
    (ARTIFACTS / f"{request.node.name}-console.log").write_text(console)
    driver.quit()


def shot(driver: webdriver.Chrome, name: str, full: bool = False) -> Path:
    """Save a screenshot; ``full``: of the whole page, not only the window's height."""
    path = ARTIFACTS / f"{name}.png"
    if not full:
        driver.save_screenshot(str(path))
        return path
    size = driver.get_window_size()
    for _ in range(2):  # a taller window can lay the page out taller still: measure again
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(max(size["height"], height + 200), 6000))  # + the window frame
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path


def wait(driver: webdriver.Chrome, check, timeout: float = 60):
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda d: check(d))


def model_state(driver: webdriver.Chrome, model: str) -> str:
    cells = driver.find_elements(By.CSS_SELECTOR, f'#models-table tr[data-model="{model}"] .state')
    return cells[0].text if cells else ""


def test_the_ui_loads_offline_lists_models_loads_one_chats_and_shows_activity(
    start_proxy, tiny_model_dir, browser
) -> None:
    proxy = start_proxy({"tiny": llama_model(tiny_model_dir), "fake": fake_model()},
                        groups={"both": {"swap": False, "exclusive": False,
                                         "members": ["tiny", "fake"]}})
    browser.get(f"{proxy.url}/")
    assert browser.current_url.startswith(f"{proxy.url}/ui/"), "/ must redirect a browser to the UI"
    wait(browser, lambda d: d.current_url.endswith("/ui/#/models"))  # the default view's URL
    wait(browser, lambda d: model_state(d, "tiny") == "stopped" and model_state(d, "fake"))
    assert wait(browser, lambda d: d.find_element(By.ID, "connection").text == "live")
    # Everything the page loaded came from the proxy.
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(name.startswith(proxy.url) for name in resources), resources
    shot(browser, "1-models")

    browser.find_element(By.CSS_SELECTOR, 'button.load[data-model="tiny"]').click()
    wait(browser, lambda d: model_state(d, "tiny") == "ready", timeout=90)
    container = browser.find_element(By.CSS_SELECTOR, '#models-table tr[data-model="tiny"] td.container')
    assert container.text.startswith("llamaswap-"), container.text
    shot(browser, "2-model-loaded")

    browser.find_element(By.ID, "tab-playground").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#pg-model option[value="tiny"]'))
    Select(browser.find_element(By.ID, "pg-model")).select_by_value("tiny")
    browser.find_element(By.ID, "pg-max-tokens").clear()
    browser.find_element(By.ID, "pg-max-tokens").send_keys("24")
    browser.find_element(By.ID, "pg-input").send_keys("Tell me about llamas.")
    browser.find_element(By.ID, "pg-send").click()
    wait(browser, lambda d: d.find_element(By.ID, "pg-status").text in ("done",)
         or d.find_element(By.ID, "pg-status").text.startswith("error"), timeout=90)
    assert browser.find_element(By.ID, "pg-status").text == "done"
    answer = browser.find_elements(By.CSS_SELECTOR, ".message.assistant .text")[-1].text
    assert answer.strip(), "the playground streamed no text"
    shot(browser, "3-playground")

    browser.find_element(By.ID, "tab-activity").click()
    row = wait(browser, lambda d: next(
        (r for r in d.find_elements(By.CSS_SELECTOR, "#activity-table tbody tr")
         if "tiny" in r.text and "/v1/chat/completions" in r.text), None))
    rate = row.find_element(By.CSS_SELECTOR, ".gen-rate").text
    assert float(rate) > 0, f"tok/s cell: {rate!r}"
    shot(browser, "4-activity")

    # The row the page shows is the proxy's own record of that request.
    [latest] = httpx.get(f"{proxy.url}/api/metrics/activity", params={"limit": 1}).json()["data"]
    assert row.get_attribute("data-id") == str(latest["id"])


def test_the_ui_unloads_and_shows_the_proxy_log_live(start_proxy, browser) -> None:
    proxy = start_proxy({"fake": fake_model()})
    assert httpx.post(f"{proxy.url}/api/models/load/fake", timeout=60).status_code == 200
    browser.get(f"{proxy.url}/ui/")
    wait(browser, lambda d: model_state(d, "fake") == "ready")
    browser.find_element(By.CSS_SELECTOR, 'button.unload[data-model="fake"]').click()
    wait(browser, lambda d: model_state(d, "fake") == "stopped")

    browser.find_element(By.ID, "tab-logs").click()
    wait(browser, lambda d: "container stopped and removed" in d.find_element(By.ID, "logs-pane-view").text)
    shot(browser, "5-logs")


def test_the_api_docs_render_offline_with_the_inference_routes(start_proxy, browser) -> None:
    proxy = start_proxy({"fake": fake_model()})
    browser.get(f"{proxy.url}/docs")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {e.get_attribute("data-path") for e in
             browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/chat/completions", "/v1/messages", "/api/metrics/activity", "/metrics"} <= paths
    shot(browser, "6-docs")
