"""The web page as a person uses it: headless Chromium (Debian's chromium and chromium-driver,
driven by selenium) uploads a cut of the demo clip and speech, runs a job, waits for the
lip-synced video and the timeline picture, saves a screenshot of the finished page, and finds
the result again after a reload."""

from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.media import small_clip, speech

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# The machine's closed network refuses Google's hosts: no background requests, no component updates.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1280,1700")
AUDIO_S = 1.6


@pytest.fixture
def browser(tmp_path):
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "Chromium and its driver are missing: run scripts/setup_env.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def test_a_job_from_the_page(app, browser, tmp_path):
    url, _ = app
    video, audio = small_clip(tmp_path / "talk.mp4", seconds=1.0, start=2.0), speech(tmp_path / "dub.wav", AUDIO_S, start=3.0)
    browser.get(url)
    wait = WebDriverWait(browser, 300, poll_frequency=0.2)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#source-video input[type=file]"))[0].send_keys(str(video))
    browser.find_element(By.CSS_SELECTOR, "#speech-file input[type=file]").send_keys(str(audio))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#source-video video"))  # the upload is in
    wait.until(lambda d: "dub.wav" in d.find_element(By.CSS_SELECTOR, "#speech-file").text.replace("\n", ""))  # name and extension are two spans
    browser.find_element(By.CSS_SELECTOR, "#run-button").click()

    duration = "const v = document.querySelector('#lipsynced-video video'); return v && v.readyState >= 1 ? v.duration : null;"
    wait.until(lambda d: d.execute_script(duration))
    wait.until(lambda d: d.execute_script("const i = document.querySelector('#timeline img'); return i && i.complete && i.naturalWidth > 0;"))
    wait.until(lambda d: "frames regenerated" in d.find_element(By.CSS_SELECTOR, "#status").text)
    browser.save_screenshot(str(tmp_path / "finished_page.png"))

    assert abs(browser.execute_script(duration) - AUDIO_S) <= 0.05  # the lip-synced video plays for the audio's length
    assert browser.execute_script("return document.querySelector('#timeline img').naturalWidth") == 1000
    status = browser.find_element(By.CSS_SELECTOR, "#status").text
    assert "of 40 frames regenerated" in status and "seed 1247" in status
    assert (tmp_path / "finished_page.png").stat().st_size > 10_000

    browser.refresh()  # the result is kept for this browser, across reloads
    wait.until(lambda d: d.execute_script(duration))
    assert "talk.mp4 + dub.wav" in browser.find_element(By.CSS_SELECTOR, "#earlier-results input").get_attribute("value")
    assert "of 40 frames regenerated" in browser.find_element(By.CSS_SELECTOR, "#status").text
