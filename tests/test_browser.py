"""The web page as a person uses it: headless Chromium (Debian's chromium and chromium-driver,
driven by selenium) uploads a cut of the demo clip and speech, runs a job, waits for the
lip-synced video and the timeline picture, saves a screenshot of the finished page, and finds
the result again after a reload; adds a segment in the page's table, previews its plan, runs it
and sees the segment outlined on the timeline; and uploads a playlist as the speech, which is
never played."""

import contextlib
import json
import time
from pathlib import Path

import cv2
import httpx
import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from latentsync.timeline import timeline_figure
from scripts import make_corpus
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


def test_a_segment_from_the_page(app, browser, tmp_path):
    """Open the segments table, give one row a time range and its clip, preview the plan, run it:
    the result plays for the video's length and the timeline outlines the segment."""
    url, folder = app
    video, clip = small_clip(tmp_path / "template.mp4", seconds=1.0, start=2.0), speech(tmp_path / "name.wav", 0.8, start=6.0)
    browser.get(url)
    wait = WebDriverWait(browser, 300, poll_frequency=0.2)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#source-video input[type=file]"))[0].send_keys(str(video))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#source-video video"))
    browser.find_element(By.CSS_SELECTOR, "#segments > button").click()  # open the table
    wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "#segment-1-start input[type=number]") if e.is_displayed()])
    for field, value in (("start", "0.2"), ("end", "0.84")):  # the fields show 0 while empty
        box = browser.find_element(By.CSS_SELECTOR, f"#segment-1-{field} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "#segment-1-audio input[type=file]").send_keys(str(clip))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#segment-1-audio td.filename[aria-label='name.wav']"))  # the clip is in

    browser.find_element(By.CSS_SELECTOR, "#preview-button").click()
    wait.until(lambda d: "frames to regenerate" in d.find_element(By.CSS_SELECTOR, "#status").text)
    assert "Plan: 16 of 25 frames to regenerate" in browser.find_element(By.CSS_SELECTOR, "#status").text
    assert "GPU s of denoising" in browser.find_element(By.CSS_SELECTOR, "#status").text

    results = folder / "data" / "results"
    before = set(results.iterdir())
    browser.find_element(By.CSS_SELECTOR, "#run-button").click()
    duration = "const v = document.querySelector('#lipsynced-video video'); return v && v.readyState >= 1 ? v.duration : null;"
    wait.until(lambda d: d.execute_script(duration))
    wait.until(lambda d: "frames regenerated" in d.find_element(By.CSS_SELECTOR, "#status").text)
    wait.until(lambda d: d.execute_script("const i = document.querySelector('#timeline img'); return i && i.complete && i.naturalWidth > 0;"))
    browser.save_screenshot(str(tmp_path / "segment_page.png"))
    status = browser.find_element(By.CSS_SELECTOR, "#status").text
    assert "16 of 25 frames regenerated" in status and "1 segment" in status
    assert abs(browser.execute_script(duration) - 1.0) <= 0.05  # the video's length: outside the segment, the source

    [result] = set(results.iterdir()) - before
    report = json.loads((result / "report.json").read_text())
    assert report["segments"][0]["start"] == 0.2 and report["segments"][0]["frames_generated"] == 16
    shown = browser.execute_script("return document.querySelector('#timeline img').src")
    assert httpx.get(shown, timeout=30).content == (result / "timeline.png").read_bytes()  # the page shows the job's own picture
    figure = timeline_figure(report)
    figure.canvas.draw()
    picture = cv2.cvtColor(cv2.imread(str(result / "timeline.png")), cv2.COLOR_BGR2RGB)
    axis = figure.axes[1]
    for edge in (0.2, 0.84):  # the segment's outline, dark across the bands where its edges are
        x, y = axis.transData.transform((edge, 0.25))
        assert picture[picture.shape[0] - round(y), round(x)].max() < 60, edge
def ffmpeg_processes() -> list[psutil.Process]:
    """ffmpeg and ffprobe processes below this test process (the app's)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.name() in ("ffmpeg", "ffprobe") and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


@pytest.mark.parametrize("name, live", [("speech.m3u8", False), ("speech.m3u8", True), ("speech.mp3", True)], ids=["m3u8", "live_m3u8", "live_as_mp3"])
def test_a_playlist_as_the_speech_is_never_played(app, browser, tmp_path, name, live):
    """An HLS playlist naming a clip with speech elsewhere on the server (not in any upload
    folder). By its name, the page refuses it before uploading (the box's file types); behind an
    audio file's name, the service's sentence comes back. Either way no audio is offered, the
    named clip is never opened, and no ffmpeg runs on after 60 s."""
    url, folder = app
    for place in ("elsewhere", "upload"):
        (tmp_path / place).mkdir()
    elsewhere = make_corpus.clip(tmp_path / "elsewhere" / "private.ts", 1.0, extra=("-f", "mpegts"))
    playlist = make_corpus.hls_playlist(tmp_path / "upload" / name, elsewhere, live=live)
    opened_before = elsewhere.stat().st_atime
    browser.get(url)
    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#speech-file input[type=file]"))[0].send_keys(str(playlist))
    if name.endswith(".m3u8"):
        expected = f"Invalid file type: {name}. Only .wav, .mp3"  # the page's own check, before any upload
    else:
        expected = "The audio input is an HLS playlist, which can refer to other files and is not accepted; pass an audio file"
    wait.until(lambda d: expected in d.find_element(By.TAG_NAME, "body").text)
    deadline = time.time() + 60
    while ffmpeg_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert ffmpeg_processes() == []
    assert browser.execute_script("return Array.from(document.querySelectorAll('audio')).filter(a => a.src).length") == 0
    assert elsewhere.stat().st_atime == opened_before  # never read
    uploaded = [path.name for path in (folder / "gradio").rglob("*") if path.is_file()]
    assert (name in uploaded) == (not name.endswith(".m3u8")), uploaded
