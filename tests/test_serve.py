"""`agf serve`: every route over a real uvicorn server, then a real headless Chromium clicking through.

HTTP tests check status codes, the JSON API against the CLI's own output, Range requests,
traversal attempts and refused writes. The browser tests (Debian's chromium and chromedriver,
driven by selenium) search an artist, open its page, press play and watch the audio advance,
follow a neighbour, and click a point of the map; they save screenshots in AGF_SCREENSHOTS
when it is set.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from agf.app.catalog import audio_type
from agf.app.web import create_app
from agf.ingest.audio import AUDIO_EXTENSIONS, AUDIO_TYPES
from agf.store import Store

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _served(store: Path):
    """A real uvicorn server over ``store``, on a free port of 127.0.0.1: its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def site(searchable_trained):
    """A real uvicorn server over the trained store: its base URL."""
    with _served(searchable_trained / "store") as url:
        yield url


@pytest.fixture(scope="module")
def http(site):
    with httpx.Client(base_url=site, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def facts(searchable_trained):
    with Store.open(searchable_trained / "store") as store:
        artist = store.query("SELECT artist_id, name FROM artists ORDER BY artist_id LIMIT 1").to_pylist()[0]
        track = store.query("SELECT track_id, path FROM tracks WHERE artist_id = ? ORDER BY track_id LIMIT 1",
                            [artist["artist_id"]]).to_pylist()[0]
    return {**artist, **track}


# -- every route ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/?q=artist", "/?genre=Rock", "/artists/{artist_id}", "/tracks/{track_id}",
                                  "/map", "/sql", "/sql?q=select+count(*)+as+n+from+tracks"])
def test_every_page_answers(http, facts, path):
    response = http.get(path.format(**facts))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "Traceback" not in response.text


def test_the_artist_page_plays_its_tracks_and_says_why_its_neighbours_are_near(http, facts):
    page = http.get(f"/artists/{facts['artist_id']}").text
    assert f"<h1>{facts['name']}</h1>" in page
    assert f'src="/tracks/{facts["track_id"]}/audio"' in page
    assert page.count('class="neighbour"') >= 3 and "factor" in page.split('class="why"')[1]


@pytest.mark.parametrize("k, space", [(3, None), (5, "combined"), (2, "agf:mfcc")])
def test_api_similar_gives_the_rows_of_agf_similar_json(http, facts, cli, searchable_trained, k, space):
    query = {"artist": facts["name"], "k": k, **({"space": space} if space else {})}
    answer = http.get("/api/similar", params=query)
    out = cli("similar", facts["name"], "-k", k, *(["--space", space] if space else []), "--json",
              "--store", searchable_trained / "store")
    assert answer.status_code == 200 and answer.json() == json.loads(out.stdout)


def test_api_artists_finds_by_part_of_a_name_and_by_genre(http, facts):
    part = facts["name"].split()[-1].upper()
    found = http.get("/api/artists", params={"q": part}).json()
    assert facts["artist_id"] in [a["artist_id"] for a in found]
    genre = http.get("/api/artists", params={"genre": "rock"}).json()
    assert genre and all(a["top_genre"] == "Rock" for a in genre)


def test_api_track_gives_every_genre_s_probability(http, facts):
    track = http.get(f"/api/tracks/{facts['track_id']}").json()
    probabilities = [g["probability"] for g in track["genres"]["genres"]]
    assert len(probabilities) == 3 and abs(sum(probabilities) - 1) < 1e-3
    assert track["artist_id"] == facts["artist_id"] and track["similar"]
    assert all(s["artist"] != facts["name"] for s in track["similar"])  # other artists by default


@pytest.mark.parametrize("extension", sorted(AUDIO_EXTENSIONS))
def test_every_format_agf_reads_is_served_as_audio_whatever_the_system_s_table_says(extension):
    assert audio_type(Path("song" + extension.upper())) == AUDIO_TYPES[extension] and AUDIO_TYPES[extension].startswith("audio/")
    assert audio_type(Path("notes.unknown")) == "application/octet-stream"


def test_audio_is_the_recorded_file_whole_or_by_range(http, facts):
    data = Path(facts["path"]).read_bytes()
    whole = http.get(f"/tracks/{facts['track_id']}/audio")
    assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "audio/flac"
    part = http.get(f"/tracks/{facts['track_id']}/audio", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    tail = http.get(f"/tracks/{facts['track_id']}/audio", headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == data[-500:]
    past = http.get(f"/tracks/{facts['track_id']}/audio", headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize("path", [
    "/tracks/999999/audio", "/tracks/..%2F..%2F..%2Fetc%2Fpasswd/audio", "/tracks/%2e%2e/audio",
    "/static/..%2F..%2Fcatalog.py", "/static/%2e%2e/%2e%2e/store/store.py", "/static/../web.py",
    "/artists/999999", "/tracks/999999", "/api/tracks/999999", "/nothing-here",
])
def test_nothing_outside_the_recorded_audio_can_be_reached(http, path):
    response = http.get(path)
    assert response.status_code == 404
    assert "import" not in response.text and "root:" not in response.text


@pytest.mark.parametrize("query", ["copy tracks to '/tmp/agf-serve-copy.csv'", "delete from tracks",
                                   "attach '/tmp/agf-serve.db' as x", "install httpfs", "select * from read_csv('/etc/passwd')"])
def test_the_sql_api_refuses_writes_and_file_access(http, query):
    response = http.get("/api/sql", params={"q": query})
    assert response.status_code == 400 and response.json()["error"]
    assert not Path("/tmp/agf-serve-copy.csv").exists() and not Path("/tmp/agf-serve.db").exists()


def test_the_sql_page_answers_a_refused_statement_with_400(http):
    response = http.get("/sql", params={"q": "drop table tracks"})
    assert response.status_code == 400 and "read-only" in response.text


def test_values_json_cannot_hold_come_back_as_null(http):
    answer = http.get("/api/sql", params={"q": "select 'nan'::double as x, 'inf'::double as y, 1.5::double as z"})
    assert answer.status_code == 200 and answer.json()["rows"] == [{"x": None, "y": None, "z": 1.5}]


def test_the_sql_api_bounds_the_rows_it_sends(http):
    answer = http.get("/api/sql", params={"q": "select * from range(5000)"}).json()
    assert answer["total_rows"] == 5000 and len(answer["rows"]) == 1000 and answer["truncated"]


@pytest.mark.parametrize("path, status", [("/artists/abc", 404), ("/api/artists?limit=many", 400), ("/api/artists?limit=0", 400),
                                          ("/api/similar?artist=Nobody+At+All", 404),
                                          ("/api/similar?artist_id=1&k=0", 400), ("/api/similar?artist_id=1&space=nope", 404)])
def test_errors_are_pages_or_json_with_their_status_never_a_traceback(http, path, status):
    response = http.get(path)
    assert response.status_code == status and "Traceback" not in response.text
    if path.startswith("/api/"):
        assert response.json()["error"]


def test_the_server_is_read_only(http, facts):
    assert http.post("/").status_code == 405
    assert http.delete(f"/tracks/{facts['track_id']}/audio").status_code == 405


def test_agf_serve_listens_on_this_machine_only_by_default(searchable_trained):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "agf.cli", "serve", "--store", str(searchable_trained / "store"),
                                "--port", str(port), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
                time.sleep(0.2)
        listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if line.split()[3] == "0A"]  # state LISTEN
        assert f"0100007F:{port:04X}" in listening and f"00000000:{port:04X}" not in listening
    finally:
        process.terminate()
        process.wait(10)


# -- in a real browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("the browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(condition, seconds: float = 30, message: str = ""):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def _screenshot(driver, name: str) -> None:
    folder = os.environ.get("AGF_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_search_an_artist_listen_and_follow_a_neighbour(browser, site, facts, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(site + "/")
    box = browser.find_element(By.ID, "search")
    box.send_keys(facts["name"].split()[0] + "\n")
    _wait(lambda: "q=" in browser.current_url, message="the search was not submitted")
    links = {a.text: a for a in browser.find_elements(By.CSS_SELECTOR, "a.artist-link")}
    links[facts["name"]].click()
    _wait(lambda: browser.find_element(By.TAG_NAME, "h1").text == facts["name"], message="the artist page did not open")

    browser.find_element(By.CSS_SELECTOR, "ol.tracks button.play").click()
    audio = f"document.getElementById('audio-{facts['track_id']}')"
    _wait(lambda: browser.execute_script(f"return {audio}.currentTime") > 0.5, 30, "the audio did not play")
    assert browser.execute_script(f"return {audio}.paused") is False
    browser.save_screenshot(str(tmp_path / "artist.png"))
    _screenshot(browser, "serve-artist")

    neighbour = browser.find_element(By.CSS_SELECTOR, "li.neighbour a.neighbour-link")
    name = neighbour.text
    assert "factor" in browser.find_element(By.CSS_SELECTOR, "li.neighbour .why").text
    neighbour.click()
    _wait(lambda: browser.find_element(By.TAG_NAME, "h1").text == name, message="the neighbour's page did not open")


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="a WMA file is encoded and decoded by ffmpeg")
def test_a_track_the_browser_cannot_play_says_so_on_its_button(browser, searchable_trained, tmp_path):
    from selenium.webdriver.common.by import By

    shutil.copytree(searchable_trained / "store", tmp_path / "store")
    (tmp_path / "wma").mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=4", "-metadata",
                    "artist=Windows Artist", "-c:a", "wmav2", str(tmp_path / "wma" / "old.wma")], check=True)
    ingested = subprocess.run([sys.executable, "-m", "agf.cli", "ingest", str(tmp_path / "wma"), "--quiet", "--json",
                               "--store", str(tmp_path / "store")], capture_output=True, text=True, timeout=300)
    assert json.loads(ingested.stdout)["ingested"] == 1, ingested.stderr
    with Store.open(tmp_path / "store") as store:
        artist = store.query("SELECT artist_id FROM artists WHERE name = 'Windows Artist'")["artist_id"][0].as_py()
    with _served(tmp_path / "store") as url:
        browser.get(f"{url}/artists/{artist}")
        button = browser.find_element(By.CSS_SELECTOR, "ol.tracks button.play")
        button.click()
        _wait(lambda: button.get_attribute("disabled"), 30, "the button of a WMA track did not say it cannot play")
        assert button.text == "✕" and button.get_attribute("title") == "This browser cannot play this file's format"


def test_the_map_draws_every_artist_and_a_click_opens_one(browser, site, searchable_trained, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(site + "/map")
    artists = Store.open(searchable_trained / "store").count("artists")
    dots = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#map-svg circle"), message="no point was drawn")
    assert len(dots) == artists
    assert "artists in combined" in browser.find_element(By.ID, "map-status").text
    browser.save_screenshot(str(tmp_path / "map.png"))
    _screenshot(browser, "serve-map")
    target = dots[0].get_attribute("data-artist-id")
    dots[0].click()
    _wait(lambda: browser.current_url.endswith(f"/artists/{target}"), message="a click on a point opened nothing")


def test_the_sql_page_shows_rows_and_a_refusal(browser, site):
    from selenium.webdriver.common.by import By

    browser.get(site + "/sql?q=select+count(*)+as+n+from+tracks")
    assert browser.find_element(By.CSS_SELECTOR, "#result td").text.isdigit()
    browser.get(site + "/sql?q=drop+table+tracks")
    assert "read-only" in browser.find_element(By.CSS_SELECTOR, "p.error").text


def test_a_port_in_use_is_one_line_of_error(site, searchable_trained, cli):
    port = site.rsplit(":", 1)[1]
    out = cli("serve", "--port", port, "--store", searchable_trained / "store")
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [f"Error: cannot listen on 127.0.0.1:{port}: Address already in use "
                                               f"(another agf serve? choose --port)"]


@pytest.mark.parametrize("args, message", [
    (["--port", "99999"], "Error: --port must be between 1 and 65535, not 99999"),
    (["--host", "no-such-host.invalid"], "Error: cannot listen on no-such-host.invalid:8080: "),  # the resolver says why
])
def test_a_port_or_host_it_cannot_listen_on_is_one_line_of_error(searchable_trained, cli, args, message):
    out = cli("serve", *args, "--store", searchable_trained / "store")
    *before, last = out.output.strip().splitlines()
    assert out.exit_code == 1 and last.startswith(message) and "while attempting" not in last
    assert all(line.startswith("warning: listening on") for line in before)  # another host than this machine's
