"""`medvlp app diagnose|explain` in a real headless Chromium (Selenium): upload a real image, see the result.

Saves the screenshots used in the README (docs/diagnose.png, docs/explain.png). Skips with the reason
when Chromium, chromedriver or Selenium are missing (CI installs them: `.ci/run`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
CHROMEDRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver")) if p and Path(p).is_file()),
                    None)

_spec = importlib.util.spec_from_file_location("_medvlp_explain_fixtures_e2e", ROOT / "tests" / "explain" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
demo_run = _fixtures.demo_run


def _requirements() -> None:
    if CHROMIUM is None:
        pytest.skip("no Chromium browser found (apt-get install chromium chromium-driver)")
    if CHROMEDRIVER is None:
        pytest.skip("no chromedriver found at /usr/bin/chromedriver (apt-get install chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install 'medvlp[test]')")
    pytest.importorskip("streamlit", reason="streamlit is not installed (pip install 'medvlp[app]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_app(name: str, run: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "MEDVLP_DEMO_RUN": str(run)}
    proc = subprocess.Popen([sys.executable, "-m", "medvlp", "app", name, "--server.port", str(port),
                             "--server.address", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    end = time.time() + 120
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"`medvlp app {name}` exited with {proc.returncode}: "
                                 f"{(tmp / f'{name}.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise AssertionError(f"`medvlp app {name}` did not answer on {url} within 120 s")


def _driver(tmp: Path, height: int = 1300):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp / 'chrome-profile'}", f"--window-size=1400,{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _wait_text(driver, text: str, timeout: float) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(
        lambda d: text in d.find_element(By.TAG_NAME, "body").text)
    return driver.find_element(By.TAG_NAME, "body").text


def _upload(driver, label: str, path: Path, timeout: float) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    xpath = f"//div[@data-testid='stFileUploader'][.//*[normalize-space(text())='{label}']]//input[@type='file']"
    WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.XPATH, xpath)))
    driver.find_element(By.XPATH, xpath).send_keys(str(path))


def _choose(driver, label: str, option: str, timeout: float) -> None:
    """Pick ``option`` in the Streamlit selectbox labelled ``label``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # Streamlit >= 1.50 renders selectboxes as react-aria comboboxes: an input named by the label and an
    # "Open" button; older versions used a baseweb select.
    opener = (f"//input[@role='combobox' and @aria-label='{label}']/following-sibling::button | "
              f"//div[@data-testid='stSelectbox'][.//*[normalize-space(text())='{label}']]"
              "//div[@data-baseweb='select']")
    WebDriverWait(driver, timeout).until(ec.element_to_be_clickable((By.XPATH, opener))).click()
    item = f"//*[@role='option'][normalize-space(.)='{option}']"
    WebDriverWait(driver, timeout).until(ec.element_to_be_clickable((By.XPATH, item))).click()


def _fixture_image(demo_manifest: Path, tmp: Path) -> Path:
    """A real demo-corpus tile with a secondary region, upscaled so the screenshot shows it."""
    from PIL import Image

    src = sorted((demo_manifest.parent / "images").glob("02_*.png"))[0]
    out = tmp / "mucus_tile.png"
    Image.open(src).resize((256, 256), Image.NEAREST).save(out)
    return out


def _run_page(name: str, demo_run, tmp_path: Path, upload_label: str, wait_for: list[str], shot: str,
              height: int = 1300) -> str:
    run, manifest = demo_run
    image = _fixture_image(manifest, tmp_path)
    proc, url = _start_app(name, run, tmp_path)
    driver = None
    try:
        driver = _driver(tmp_path, height)
        driver.get(url)
        _choose(driver, "Label set", "demo", timeout=180)  # the demo corpus's six classes
        _upload(driver, upload_label, image, timeout=180)
        text = ""
        for t in wait_for:
            text = _wait_text(driver, t, timeout=300)
        time.sleep(2)  # let charts and images finish drawing before the screenshot
        DOCS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(DOCS / shot))
        return text
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_diagnose_in_browser(demo_run, tmp_path):
    _requirements()
    text = _run_page("diagnose", demo_run, tmp_path, "Images (PNG, JPEG, TIFF incl. multichannel microscopy, "
                     "DICOM; up to 200 MB each)", ["top label:", "Download CSV"], "diagnose.png")
    from medvlp.domains import load_card

    labels = {lab.name for ls in load_card("pathology").label_sets.values() for lab in ls.labels}
    line = next(s for s in text.splitlines() if "top label:" in s)
    assert "upload-" in line and any(f"top label: {lab} (p = " in line for lab in labels), line
    # results, tables and exports name uploads by an opaque id; the only place the file name appears is
    # Streamlit's own uploader chip, in the uploading user's browser
    assert text.count("mucus_tile.png") == 1, text
    assert "Prediction set" in text and "calibrated: no" in text
    assert (DOCS / "diagnose.png").stat().st_size > 10_000


def test_explain_in_browser(demo_run, tmp_path):
    _requirements()
    text = _run_page("explain", demo_run, tmp_path, "Image", ["Top concepts", "Grad-CAM:"], "explain.png",
                     height=1750)
    assert "nuclear pleomorphism" in text and "top label:" in text
    assert (DOCS / "explain.png").stat().st_size > 10_000
