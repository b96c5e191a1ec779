"""Drive the demo in headless Chromium: the browser test's steps, and `python demo/screenshot.py` for docs/demo.png.

Uses Debian's `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`) through selenium;
nothing is downloaded. Without `--model`, the page runs a random tiny SMAT (16 px, 2 experts), as the test does.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import create_app  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WINDOW = (1280, 900)
TIMEOUT = 60


def chromium(window: tuple[int, int] = WINDOW) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # The page's viewport exactly `window` (the window size includes the browser's own frame).
    metrics = {"width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return driver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(model_path: str):
    """The demo on 127.0.0.1 in a background thread: `(app, url)`; `app.close()` stops it."""
    app = create_app(model_path)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app, f"http://127.0.0.1:{port}/"


def file_names(driver, elem_id: str) -> list[str]:
    """The names of the files a gr.File component lists."""
    cells = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} td.filename")
    return [cell.get_attribute("aria-label") for cell in cells]


def wait(driver, timeout: float = TIMEOUT) -> WebDriverWait:
    return WebDriverWait(driver, timeout)


def load_example(driver, url: str) -> None:
    """Open the page, click "load an example task" and wait until the class names and queries are filled in."""
    driver.get(url)
    wait(driver).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#example"))).click()
    name = (By.CSS_SELECTOR, "#class-name-0 textarea, #class-name-0 input")
    wait(driver).until(lambda d: d.find_element(*name).get_attribute("value"))
    wait(driver).until(lambda d: file_names(d, "queries"))


def classify(driver, rows: int) -> list[str]:
    """Click "classify" and return the predictions shown, once the table has `rows` rows."""
    driver.find_element(By.CSS_SELECTOR, "#classify").click()
    cells = "#predictions tbody td.prediction"
    wait(driver).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, cells)) == rows)
    return [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, cells)]


def message(driver, containing: str) -> str:
    """The page's message once it contains `containing`."""
    wait(driver).until(lambda d: containing in d.find_element(By.CSS_SELECTOR, "#message").text)
    return driver.find_element(By.CSS_SELECTOR, "#message").text


def upload(driver, slot: int, path: str) -> None:
    """Upload a file into class slot `slot` and wait until the slot lists it."""
    driver.find_element(By.CSS_SELECTOR, f"#class-files-{slot} input[type=file]").send_keys(path)
    wait(driver).until(lambda d: Path(path).name in file_names(d, f"class-files-{slot}"))


def save_screenshot(driver, path: str | Path) -> Path:
    path = Path(path)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    return path


def tiny_smat(folder: str | Path) -> str:
    """A random tiny SMAT (the tests' 16-px ViT, 2 experts) saved to `folder`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import torch
    from helpers import tiny_vit_config

    from hf_fewshot.models import SmatModel

    torch.manual_seed(0)
    SmatModel.from_backbone(tiny_vit_config(), num_experts=2).save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="folder or Hub id (default: a random tiny SMAT)")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent.parent / "docs" / "demo.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        app, url = launch(args.model or tiny_smat(Path(folder) / "model"))
        driver = chromium()
        try:
            load_example(driver, url)
            classify(driver, rows=10)
            print(save_screenshot(driver, args.output))
        finally:
            driver.quit()
            app.close()


if __name__ == "__main__":
    main()
