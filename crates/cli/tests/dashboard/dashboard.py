"""The dashboard in a real browser: Debian's chromium, driven over
WebDriver by selenium (both installed by scripts/setup; selenium is told
where chromedriver is, so it downloads nothing). Run by
crates/cli/tests/dashboard.rs, which starts vws and passes, in the
environment: UI (base URL), ADMIN_LINK and BOB_LINK (one-time sign-in
links), GOOD and BAD (description texts), SHOTS (where screenshots go)."""

import os
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

UI = os.environ["UI"]
SHOTS = os.environ["SHOTS"]
os.makedirs(SHOTS, exist_ok=True)

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"]:
    opts.add_argument(a)
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


T0 = time.monotonic()


def step(name):
    print(f"step [{time.monotonic() - T0:5.1f} s]: {name}", flush=True)


def wait(cond, what, timeout=30):
    try:
        WebDriverWait(d, timeout, poll_frequency=0.1).until(lambda _: cond())
    except Exception:
        d.save_screenshot(os.path.join(SHOTS, "failed.png"))
        raise AssertionError(f"timed out waiting for {what}; page: {d.current_url}\n{d.page_source[:3000]}")


def shot(name):
    d.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def h1():
    return d.find_element(By.TAG_NAME, "h1").text


def state():
    return d.find_element(By.CSS_SELECTOR, "h1 .state").text


def fill_description(text):
    d.execute_script("document.getElementById('description').value = arguments[0]", text)
    d.find_element(By.CSS_SELECTOR, "form[action='/ui/new'] button[type=submit]").click()


def click_verb(verb):
    d.find_element(By.CSS_SELECTOR, f"button[data-verb='{verb}']").click()


try:
    step("sign in with the one-time link")
    d.get(os.environ["ADMIN_LINK"])
    wait(lambda: h1() == "Workspaces", "the workspace list")
    shot("1-workspaces")

    step("a description with an error is refused at its element")
    d.get(UI + "/ui/new")
    fill_description(os.environ["BAD"])
    wait(lambda: d.find_elements(By.CSS_SELECTOR, ".error li"), "the errors")
    errors = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".error li")]
    assert any(e.startswith("hardware.ram") for e in errors), errors
    shot("2-refused")

    step("create a workspace from a description")
    fill_description(os.environ["GOOD"])
    wait(lambda: "/ui/w/" in d.current_url, "the new workspace's page")
    ws = d.current_url.rsplit("/", 1)[1]
    assert state() == "shutdown", state()

    step("deploy and start it: it turns running without a reload")
    d.execute_script("window.vwsMarker = 'same page'")
    click_verb("deploy")
    wait(lambda: d.find_element(By.CSS_SELECTOR, "dd.placement").text == "host", "the deploy")
    click_verb("start")
    wait(lambda: state() == "running", "running")
    assert d.execute_script("return window.vwsMarker") == "same page", "the page was reloaded"

    step("its CPU and memory are drawn")
    wait(lambda: d.find_element(By.CSS_SELECTOR, "[data-now='memory']").text.endswith("B"),
         "the memory figure")
    wait(lambda: d.find_elements(By.CSS_SELECTOR, "svg[data-chart='memory'] polyline"), "the memory chart")

    step("read its console")
    wait(lambda: "started as uid" in d.find_element(By.CSS_SELECTOR, "pre[data-console]").text,
         "the console's start line")
    shot("3-running")

    step("pause it from the page")
    click_verb("pause")
    wait(lambda: state() == "paused", "paused")
    assert d.execute_script("return window.vwsMarker") == "same page"
    shot("4-paused")
    d.get(UI + "/ui")
    row = d.find_element(By.CSS_SELECTOR, f"tr[data-ws='{ws}'] .state")
    assert row.text == "paused", row.text

    step("the images, nodes and networks")
    d.get(UI + "/ui/images")
    wait(lambda: "tiny:1" in d.find_element(By.TAG_NAME, "table").text, "the image tiny:1")
    assert "packages" in d.find_element(By.TAG_NAME, "table").text, "what the image holds"
    d.get(UI + "/ui/nodes")
    wait(lambda: "local" in d.find_element(By.TAG_NAME, "table").text, "the local node")
    d.get(UI + "/ui/networks")
    wait(lambda: h1() == "Networks", "the networks")

    step("on a narrow screen nothing runs off the page")
    d.set_window_size(390, 844)
    d.get(UI + "/ui/w/" + ws)
    wait(lambda: state() == "paused", "the page")
    overflow = d.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, f"the page is {overflow}px wider than the screen"
    shot("5-narrow")
    d.set_window_size(1280, 900)

    step("another user sees none of it, and its page is 404")
    d.delete_all_cookies()
    d.get(os.environ["BOB_LINK"])
    wait(lambda: h1() == "Workspaces", "bob's list")
    assert ws not in d.page_source, "bob sees the admin's workspace"
    d.get(UI + "/ui/w/" + ws)
    wait(lambda: h1() == "Not Found", "a 404 page")
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in d.get_cookies())
    req = urllib.request.Request(UI + "/ui/w/" + ws, headers={"Cookie": cookie})
    try:
        urllib.request.urlopen(req)
        raise AssertionError("bob got the admin's workspace page")
    except urllib.error.HTTPError as e:
        assert e.code == 404, e.code
    shot("6-other-user")
    print("dashboard: all steps passed")
except Exception:
    shot("failed")
    raise
finally:
    d.quit()
sys.exit(0)
