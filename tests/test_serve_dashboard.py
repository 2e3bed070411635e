"""The dashboard in headless Chromium (Debian's chromium and chromium-driver, driven by
selenium): runs list, a run's page with one bar per shard reaching 100%, an injected error
with its context, the quarantine reasons, no console errors, and a phone-width layout.
Screenshots go to a temporary folder (printed, kept as the test's artifacts)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import IN_CI

pytest.importorskip("fastapi", reason="etl serve needs the serve extra")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium")

from tests.serve_process import SECRET, Served, kill_children, project  # noqa: E402

pytestmark = pytest.mark.timeout(600)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists() and not shutil.which(Path(p).name)]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if IN_CI:
            pytest.fail(message + " (CI is set, so a missing browser is a failure)")
        pytest.skip(message)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER if Path(CHROMEDRIVER).exists()
                                              else shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dashboard-screenshots")
    print(f"screenshots in {folder}")
    return folder


def _wait(what: str, check: Callable[[], object], timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:  # noqa: BLE001 - the page is being redrawn: look again
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"the dashboard did not show {what} within {timeout} s")


def _console_errors(driver) -> list[str]:  # type: ignore[no-untyped-def]
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_dashboard_shows_runs_shard_bars_errors_and_quarantine(tmp_path: Path, browser, shots: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    # Given a server and a pipeline whose sink fails one batch once, with a password in the error
    server = Served(tmp_path, project(tmp_path, slow=0.3, fail=True))
    try:
        # When the dashboard is opened before any run
        browser.get(server.url + "/")
        _wait("the empty runs list", lambda: browser.find_element(By.ID, "no-runs"))
        browser.save_screenshot(str(shots / "01-no-runs.png"))
        # And a run is started from the API
        body = {"pipeline": "servepipe:pipeline", "run_id": "serve-ui-1"}
        assert server.start(body).status_code == 202
        # Then the list shows it, and its link opens the run page
        link = _wait("the run in the list", lambda: browser.find_element(
            By.CSS_SELECTOR, "tr[data-run='serve-ui-1'] a"))
        browser.save_screenshot(str(shots / "02-runs.png"))
        link.click()  # type: ignore[attr-defined]
        _wait("one bar per shard", lambda: len(browser.find_elements(By.CSS_SELECTOR, ".shard .bar")) == 4)
        browser.save_screenshot(str(shots / "03-run-working.png"))
        # And once the run failed, the injected error shows with its context, password masked
        error = _wait("the injected error", lambda: browser.find_element(By.CSS_SELECTOR, "#errors li .message"))
        assert "ConnectionError" in error.text and "postgresql://etl:***@" in error.text  # type: ignore[attr-defined]
        assert SECRET not in browser.page_source
        _wait("the run failed", lambda: browser.find_elements(By.CSS_SELECTOR, "p .badge.failed"))
        assert server.wait_done("serve-ui-1")["status"] == "failed"
        browser.save_screenshot(str(shots / "04-run-failed.png"))
        # When it is started again (resumed) from the API
        assert server.start(body).status_code == 202
        # Then every shard bar reaches 100% and the run shows completed
        def all_full() -> bool:
            bars = browser.find_elements(By.CSS_SELECTOR, ".shard .bar")
            values = [b.get_attribute("aria-valuenow") for b in bars]
            return len(values) == 4 and all(v == "100" for v in values) and bool(
                browser.find_elements(By.CSS_SELECTOR, "p .badge.completed"))
        _wait("every shard bar at 100%", all_full, timeout=120)
        browser.save_screenshot(str(shots / "05-run-completed.png"))
        # And the quarantine reasons and the rows loaded vs quarantined per shard are shown
        reasons = _wait("the quarantine reasons", lambda: [
            e.text for e in browser.find_elements(By.CSS_SELECTOR, "#quarantine td.reason")])
        assert set(reasons) == {"negative amount", "amount over 95"}  # type: ignore[arg-type]
        rows = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".shard-rows")]
        assert len(rows) == 4 and all("loaded" in r and "quarantined" in r for r in rows)
        # And the error stays listed (the run's history), with its context
        assert browser.find_elements(By.CSS_SELECTOR, "#errors li details")
        # When the page is phone-width, nothing sticks out sideways
        browser.set_window_size(390, 844)
        time.sleep(1.5)
        browser.save_screenshot(str(shots / "06-phone.png"))
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, f"the page is {overflow}px wider than a phone screen"
        # And the browser logged no error all along
        assert _console_errors(browser) == []
    except BaseException:
        browser.save_screenshot(str(shots / "failed.png"))
        print("browser log:", browser.get_log("browser"))
        print("server log:", server.output()[-4000:])
        raise
    finally:
        server.stop()
        kill_children(tmp_path)


@pytest.mark.services
def test_dashboard_with_rabbitmq_workers_shows_dead_letters_and_queue_gauges(tmp_path: Path, browser, shots: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import uuid

    from selenium.webdriver.common.by import By

    from tests.cluster import broker_url
    from tests.serve_process import ETL, etl_workers

    # Given two `etl worker`s on RabbitMQ and a sink that fails one batch for good
    env = project(tmp_path, broker_url=broker_url("rabbitmq"),
                  queue=f"test-serve-ui-{uuid.uuid4().hex[:10]}", slow=0.2, fail=True)
    with etl_workers(tmp_path, env):
        server = Served(tmp_path, env)
        try:
            # When a run is started from the API and its page opened
            assert server.start({"pipeline": "servepipe:pipeline", "run_id": "serve-ui-mq"}).status_code == 202
            browser.get(server.url + "/#/run/serve-ui-mq")
            _wait("one bar per shard", lambda: len(browser.find_elements(By.CSS_SELECTOR, ".shard .bar")) == 4)
            # Then the failed batch shows as a dead letter, and the queue gauges count it
            letter = _wait("the dead letter", lambda: browser.find_element(By.CSS_SELECTOR, "#dead-letters tbody tr"))
            assert "ConnectionError" in letter.text and SECRET not in browser.page_source  # type: ignore[attr-defined]
            gauge = _wait("the queue gauges", lambda: browser.find_element(
                By.CSS_SELECTOR, f"#queues tr[data-queue='{env['ETL_QUEUE']}'] td.dead"))
            _wait("one dead letter in the gauge", lambda: gauge.text == "1")  # type: ignore[attr-defined]
            assert "distributed mode" in browser.find_element(By.ID, "mode").text
            browser.save_screenshot(str(shots / "11-rabbitmq-dead-letter.png"))
            # When the dead letter is re-driven (the outage is over)
            redrive = subprocess.run([*ETL, "dlq", "retry", "--run", "serve-ui-mq"], cwd=tmp_path,
                                     env=env, capture_output=True, text=True, timeout=120)
            assert redrive.returncode == 0, redrive.stderr
            # Then every shard bar reaches 100% and the run shows completed
            _wait("every shard bar at 100%", lambda: [
                b.get_attribute("aria-valuenow") for b in browser.find_elements(By.CSS_SELECTOR, ".shard .bar")
            ] == ["100"] * 4 and browser.find_elements(By.CSS_SELECTOR, "p .badge.completed"), timeout=120)
            browser.save_screenshot(str(shots / "12-rabbitmq-completed.png"))
            assert _console_errors(browser) == []
        except BaseException:
            browser.save_screenshot(str(shots / "failed-rabbitmq.png"))
            print("browser log:", browser.get_log("browser"))
            print("server log:", server.output()[-4000:])
            raise
        finally:
            server.stop()
