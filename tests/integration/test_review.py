"""The review station, end to end with real parts: generated photos decided by the real `casting-inspect watch
--once`, then the real `casting-inspect review` server, driven in headless Chromium by keyboard only. Each
verdict lands in the line data set (photo under its content hash, one row with inspector, model version and
probability); the watch folders stay as they were; off loopback the service's token is required."""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from browser import chromium_path
from casting_inspection.data import line
from casting_inspection.serving.inference import Inspector
from casting_inspection.serving.review.station import Station
from casting_inspection.serving.service import TOKEN_ENV, ClientError
from casting_inspection.serving.watch.log import LOG_NAME
from helpers import PROJECT, jpeg_bytes, part_image

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "casting_inspection.serving.cli"]
TOKEN = "review-Token_7-for-the-station"
REVIEW_SET = 3  # photos the test's review band sends to a person


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def line_photos() -> dict[str, bytes]:
    """Clear parts, parts with a notch only half as dark (the classifier is unsure of those; the model of good parts
    calls them defective), and a flat grey frame (not a part)."""
    photos = {f"clear_def_{i}.jpeg": jpeg_bytes(part_image(True, 100 + i)) for i in range(2)}
    photos |= {f"clear_ok_{i}.jpeg": jpeg_bytes(part_image(False, 200 + i)) for i in range(5)}
    for i, alpha in enumerate((0.3, 0.45, 0.55, 0.7)):
        blend = Image.blend(part_image(False, 300 + i), part_image(True, 300 + i), alpha)
        photos[f"faint_{i}.jpeg"] = jpeg_bytes(blend)
    flat = np.full((64, 64), 150, np.uint8)
    photos["lamp_test.jpeg"] = jpeg_bytes(Image.fromarray(flat, "L"))
    return photos


def with_review_band(source: Path, target: Path, photos: dict[str, bytes]) -> None:
    """The exported model with its review band widened over the REVIEW_SET part photos nearest its threshold."""
    inspector = Inspector(source)
    judged = [r for r in inspector.inspect(list(photos.items())) if r.decision != "not_a_part"]
    results = [r for r in judged if r.anomaly < inspector.rule.anomaly_threshold]  # the rest are defective, band or not
    nearest = sorted(results, key=lambda r: abs(r.defect_probability - inspector.threshold))[:REVIEW_SET]
    low = min(inspector.threshold, *(r.defect_probability for r in nearest))
    high = max(inspector.threshold, *(r.defect_probability for r in nearest))
    band = [max(0.0, low - 1e-6), min(1.0, high + 1e-6)]
    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "review_band":
            prop.value = json.dumps(band)
    onnx.save(model, str(target))


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under the folders (the watch log too), by path: to show nothing there was touched."""
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def watched(exported_model, tmp_path_factory) -> dict:
    """An inbox decided by the real watcher, with a review band that leaves REVIEW_SET photos for a person."""
    root = tmp_path_factory.mktemp("line")
    inbox, out = root / "inbox", root / "sorted"
    inbox.mkdir()
    photos = line_photos()
    model = root / "model.onnx"
    with_review_band(exported_model["onnx"], model, photos)
    old = time.time() - 10
    for name, data in photos.items():
        (inbox / name).write_bytes(data)
        os.utime(inbox / name, (old, old))
    result = subprocess.run(
        [*CLI, "watch", str(inbox), "--out", str(out), "--once", "--settle", "0", "--model", str(model)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(out / LOG_NAME) as db:
        log = db.execute("SELECT name, sha256, decision, defect_probability, threshold, model_version, reason FROM inspections")
        rows = [dict(zip(("name", "sha256", "decision", "p", "threshold", "version", "reason"), r)) for r in log]
    db.close()
    decisions = [r["decision"] for r in rows]
    assert decisions.count("review") == REVIEW_SET and decisions.count("not_a_part") == 1, rows
    assert {"ok", "defective"} & set(decisions), rows
    return {"root": root, "inbox": inbox, "out": out, "model": model, "log": rows, "before": snapshot(inbox, out)}


def expected_queue(log: list[dict]) -> list[dict]:
    """Review first, nearest the threshold first; then not-a-part."""
    waiting = [r for r in log if r["decision"] in ("review", "not_a_part")]
    return sorted(waiting, key=lambda r: (r["decision"] != "review", abs(r["p"] - r["threshold"])))


def review_command(watched: dict, line_dir: Path, port: int, *args: str) -> list[str]:
    model = str(watched["model"])
    return [
        *CLI,
        "review",
        "--watch-out",
        str(watched["out"]),
        "--line",
        str(line_dir),
        "--model",
        model,
        "--port",
        str(port),
        *args,
    ]


@contextlib.contextmanager
def review_server(command: list[str], log: Path, env: dict[str, str] | None = None):
    """The real review server; yields its loopback URL once /health answers."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=PROJECT)
    url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            assert process.poll() is None, "review did not start: " + log.read_text()
            time.sleep(0.1)
        else:
            raise AssertionError("review did not start: " + log.read_text())
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def server_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != TOKEN_ENV}, **extra}


def labels(line_dir: Path) -> list[dict]:
    if not (line_dir / line.LABELS_NAME).exists():
        return []
    with open(line_dir / line.LABELS_NAME, newline="") as f:
        return list(csv.DictReader(f))


class Page:
    """The review page in headless Chromium, used as an inspector does: one key per verdict."""

    def __init__(self, page):
        self.page = page

    def until(self, condition: str, timeout: float = 20.0) -> None:
        """Poll a JavaScript condition from here (the page's CSP forbids Playwright's in-page eval)."""
        deadline = time.monotonic() + timeout
        while not self.page.evaluate(condition):
            assert time.monotonic() < deadline, f"never true: {condition}; status: {self.text('#status')}"
            time.sleep(0.05)

    def settle(self) -> None:
        """The last key's request answered and its photo drawn."""
        self.until("document.body.dataset.busy === 'false'")
        self.until("(i => !!i.closest('[hidden]') || (i.complete && i.naturalWidth > 0))(document.getElementById('photo'))")

    def press(self, key: str) -> None:
        self.page.keyboard.press(key)
        self.settle()

    @property
    def left(self) -> int:
        return int(self.page.text_content("#left"))

    @property
    def current(self) -> str:
        return self.page.evaluate("document.body.dataset.current")

    def text(self, selector: str) -> str:
        return self.page.text_content(selector)


@contextlib.contextmanager
def browser_page(url: str):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url, wait_until="load")
            yield Page(page)
            assert not errors, errors
        finally:
            browser.close()


def test_label_undo_and_relabel_by_keyboard(watched, tmp_path):
    line_dir = tmp_path / "line"
    queue = expected_queue(watched["log"])
    first, second = queue[0], queue[1]
    command = review_command(watched, line_dir, free_port(), "--inspector", "anna")
    with review_server(command, tmp_path / "review.log", server_env()) as url, browser_page(url) as page:
        page.settle()
        assert page.left == len(queue) == REVIEW_SET + 1 and page.current == first["sha256"]
        assert page.text("#inspector") == "anna" and page.text("#decision") == "review"
        assert f"{first['p']:.4f}" in page.text("#probability") and page.text("#name") == first["name"]
        assert page.page.evaluate("document.getElementById('photo').getBoundingClientRect().width") >= 400  # shown large
        page.until("(m => !m.hidden && m.complete && m.naturalWidth > 0)(document.getElementById('map'))")  # the watcher kept it

        page.press("d")
        assert [r["verdict"] for r in labels(line_dir)] == ["defective"]
        assert page.left == len(queue) - 1 and page.current == second["sha256"]
        assert "defective" in page.text("#status")

        page.press("u")  # appended, never deleted: a row that takes the verdict back
        assert [r["verdict"] for r in labels(line_dir)] == ["defective", "retracted"]
        assert page.left == len(queue) and page.current == first["sha256"]  # the undone photo comes back first

        page.press("o")
        assert page.left == len(queue) - 1 and page.current == second["sha256"]

        page.press("s")  # skipped: not written, asked again at the end of this session's queue
        assert page.left == len(queue) - 1 and page.current == queue[2]["sha256"] and len(labels(line_dir)) == 3

        while page.current != queue[-1]["sha256"]:
            page.press("s")
        assert page.text("#decision") == "not a part" and page.text("#reason") == queue[-1]["reason"] != ""
        page.until("document.getElementById('map').hidden")  # not a part: never decided, so no map was kept

        page.page.reload(wait_until="load")  # the queue comes from the log and labels.csv: anna's verdict holds
        page.settle()
        assert page.left == len(queue) - 1 and page.current == second["sha256"]

    *_, row = labels(line_dir)
    assert [r["verdict"] for r in labels(line_dir)] == ["defective", "retracted", "ok"]
    assert (row["sha256"], row["verdict"], row["inspector"], row["source"]) == (first["sha256"], "ok", "anna", "review")
    assert row["model_version"] == first["version"] == Inspector(watched["model"]).version
    assert float(row["defect_probability"]) == pytest.approx(first["p"], abs=1e-9)
    assert datetime.fromisoformat(row["labelled_at"]).utcoffset().total_seconds() == 0
    stored = line_dir / row["image"]
    assert row["image"] == f"images/{first['sha256']}.jpg" and hashlib.sha256(stored.read_bytes()).hexdigest() == first["sha256"]
    assert sorted(p.name for p in line_dir.iterdir()) == ["images", "labels.csv"]  # no temporary left behind
    assert snapshot(watched["inbox"], watched["out"]) == watched["before"]  # nothing written, moved or deleted there


def test_token_required_off_loopback(watched, tmp_path):
    line_dir = tmp_path / "line"
    refused = subprocess.run(
        review_command(watched, line_dir, free_port(), "--host", "0.0.0.0"), capture_output=True, text=True, env=server_env()
    )
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "refusing to serve 0.0.0.0 without a token" in refused.stderr and TOKEN_ENV in refused.stderr

    command = review_command(watched, line_dir, free_port(), "--host", "0.0.0.0", "--inspector", "ben")
    with review_server(command, tmp_path / "review.log", server_env(**{TOKEN_ENV: TOKEN})) as url:
        good = {"Authorization": f"Bearer {TOKEN}"}
        sha256 = expected_queue(watched["log"])[0]["sha256"]
        for path in ("/api/queue", f"/api/photo/{sha256}"):
            assert httpx.get(url + path).status_code == 401
            assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert httpx.get(url + path, headers=good).status_code == 200
        assert httpx.post(url + "/api/verdict", json={"sha256": sha256, "verdict": "ok"}).status_code == 401
        assert httpx.post(url + "/api/undo", json={"page": "page-0001"}).status_code == 401
        assert httpx.get(url + "/").status_code == 200  # the page shell only: it asks for the token
        assert labels(line_dir) == []

        with browser_page(url) as page:
            page.page.wait_for_selector("#login:not([hidden])")
            page.page.fill("#token", TOKEN)
            page.page.keyboard.press("Enter")
            page.page.wait_for_selector("#work:not([hidden])")
            page.settle()
            page.press("n")
        assert [(r["verdict"], r["inspector"]) for r in labels(line_dir)] == [("not_a_part", "ben")]
    assert snapshot(watched["inbox"], watched["out"]) == watched["before"]


def test_loopback_station_refuses_other_hosts_and_cross_site_writes(watched, tmp_path):
    """Without a token: a page elsewhere cannot reach it through DNS rebinding, nor post a form to it."""
    line_dir = tmp_path / "line"
    with review_server(review_command(watched, line_dir, free_port()), tmp_path / "review.log", server_env()) as url:
        assert httpx.get(url + "/api/queue", headers={"Host": "attacker.example"}).status_code == 400
        sha256 = expected_queue(watched["log"])[0]["sha256"]
        form = httpx.post(url + "/api/verdict", data={"sha256": sha256, "verdict": "ok", "page": "page-0001"})
        assert form.status_code == 415 and "application/json" in form.json()["error"]
        assert httpx.post(url + "/api/undo", content=b"", headers={"Content-Type": "text/plain"}).status_code == 415
        page = httpx.get(url + "/")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"] and '<script src="/review.js">' in page.text
        assert "http" not in page.text.split("<body>")[1]  # no external assets
        assert labels(line_dir) == []


def test_the_review_station_needs_no_torch_and_no_params():
    """It runs on the serving path (serving/), like serve and watch."""
    from helpers import PACKAGE, local_imports, third_party

    path = PACKAGE / "serving/review/station.py"
    assert not {"torch", "torchvision", "ruamel", "dvclive"} & third_party(path)
    assert PACKAGE / "core/params.py" not in local_imports(path)
    assert PACKAGE / "data/line.py" in local_imports(path)


def test_an_undo_takes_back_only_its_own_pages_last_verdict_and_a_conflict_is_a_dispute(watched, tmp_path):
    line_dir = tmp_path / "line"
    queue = expected_queue(watched["log"])
    with review_server(
        review_command(watched, line_dir, free_port(), "--inspector", "anna"), tmp_path / "r.log", server_env()
    ) as url:
        post = lambda path, **body: httpx.post(url + path, json=body, timeout=30)  # noqa: E731
        for item in queue[:3]:
            assert post("/api/verdict", sha256=item["sha256"], verdict="defective", page="page-a-0001").status_code == 200
        other = post("/api/undo", page="page-b-0002")  # another browser: nothing of its own to take back
        assert other.status_code == 409 and "nothing of this page to undo" in other.json()["error"]
        assert post("/api/undo", page="page-a-0001").json()["undone"]["sha256"] == queue[2]["sha256"]
        for _ in range(8):  # one slip, one undo: never every verdict of an inspector
            assert post("/api/undo", page="page-a-0001").status_code == 409
        for bad in ({"sha256": queue[3]["sha256"], "verdict": "maybe", "page": "page-a-0001"}, {"page": "x"}):
            path = "/api/verdict" if "verdict" in bad else "/api/undo"
            answer = post(path, **bad)
            assert answer.status_code == 422 and answer.json()["error"].startswith("invalid request: check")
        standing = line.latest_verdicts(line_dir)
        assert sorted(standing["sha256"]) == sorted(item["sha256"] for item in queue[:2])
        assert [r["verdict"] for r in labels(line_dir)] == ["defective"] * 3 + ["retracted"]  # only ever appended

        # the plant's own verdict on the next photo says ok; anna's defective is recorded as a dispute, not an overwrite
        photo = next(p.read_bytes() for p in watched["out"].rglob(queue[3]["name"]))
        digest, image = line.add_photo(line_dir, photo, Inspector(watched["model"]).spec)
        line.append_verdict(line_dir, line.Verdict(digest, image, "ok", "plant-qa", "import:plant"))
        answer = post("/api/verdict", sha256=queue[3]["sha256"], verdict="defective", page="page-a-0001").json()
        assert answer["disputed"] == ["plant-qa=ok"]
        assert queue[3]["sha256"] in set(line.disagreements(line_dir)["sha256"])
        assert queue[3]["sha256"] not in set(line.training_labels(line_dir)["sha256"])


def label_at_once(stations: list[Station], sha256: str, verdicts: tuple[str, ...]) -> list[str]:
    """Each station labels the photo at the same moment, one verdict each: what each answered (a verdict, or a status)."""
    start = threading.Barrier(len(stations))

    def give(station: Station, verdict: str, page: str) -> str:
        start.wait()
        try:
            return station.label(sha256, verdict, page)["recorded"]["verdict"]
        except ClientError as exc:
            return str(exc.status)

    with concurrent.futures.ThreadPoolExecutor(len(stations)) as pool:
        pages = [f"page-{k}-0001" for k in range(len(stations))]
        return list(pool.map(give, stations, verdicts, pages))


def test_two_stations_under_one_name_never_both_label_a_photo(watched, tmp_path):
    """Before: two review stations of one inspector (two workstations on one login) each checked "not labelled by her
    yet" under its own lock, and on most photos both verdicts were recorded; her undo could then take back the other
    station's. Now the check is made with the append, under the folder's lock: one stands, the other is told to reload."""
    line_dir, spec = tmp_path / "line", Inspector(watched["model"]).spec
    stations = [Station(watched["out"], line_dir, spec, "anna") for _ in range(2)]
    queue = expected_queue(watched["log"])
    for item in queue:
        answers = label_at_once(stations, item["sha256"], ("ok", "defective"))
        assert sorted(answers) in (["409", "ok"], ["409", "defective"]), answers
    standing = line.latest_verdicts(line_dir)
    assert len(standing) == len(queue) and standing["sha256"].is_unique
    sha256 = standing["sha256"].iloc[-1]  # an undo takes back only the verdict it gave, recorded when it was
    assert line.retract(line_dir, sha256, "anna", "review", recorded_at="2000-01-01T00:00:00+00:00") is None


def test_a_damaged_labels_file_names_its_bad_lines_and_the_rest_still_count(watched, tmp_path):
    line_dir = tmp_path / "line"
    queue = expected_queue(watched["log"])
    spec = Inspector(watched["model"]).spec
    photo = next(p.read_bytes() for p in watched["out"].rglob(queue[0]["name"]))
    digest, image = line.add_photo(line_dir, photo, spec)
    good = f"{digest},{image},ok,anna,2026-01-01T00:00:00+00:00,review,,"
    text = "\ufeff" + ",".join(line.COLUMNS) + "\n" + good + "\n"
    text += good.replace(",ok,", ",Defective,") + "\n"  # a verdict typed by hand
    text += good + ",extra\n"  # a hand-edited row with a comma too many
    text += good.rsplit(",", 3)[0] + "\n"  # a row cut short
    (line_dir / line.LABELS_NAME).write_text(text, encoding="utf-8")
    rows, problems = line.read_rows(line_dir)
    assert len(rows) == 1 and [n for n, _ in problems] == [1, 3, 4, 5], problems
    assert "byte-order mark" in problems[0][1] and "'Defective'" in problems[1][1]
    assert list(line.training_labels(line_dir)["label"]) == ["ok_front"]
    with review_server(
        review_command(watched, line_dir, free_port(), "--inspector", "ben"), tmp_path / "r.log", server_env()
    ) as url:
        answer = httpx.get(url + "/api/queue", timeout=30)
        assert answer.status_code == 200 and [p.split(":")[0] for p in answer.json()["problems"]] == [
            f"{line_dir / line.LABELS_NAME} line {n}" for n in (1, 3, 4, 5)
        ]
        assert (
            httpx.post(
                url + "/api/verdict", json={"sha256": queue[1]["sha256"], "verdict": "ok", "page": "page-c-0003"}, timeout=30
            ).status_code
            == 200
        )
    assert (line_dir / line.LABELS_NAME).read_text(encoding="utf-8").startswith(text)  # nothing of it rewritten


def test_a_locked_or_read_only_line_folder_is_said_within_seconds(watched, tmp_path):
    import fcntl
    import os
    import time

    line_dir = tmp_path / "line"
    line_dir.mkdir()
    queue = expected_queue(watched["log"])
    with review_server(
        review_command(watched, line_dir, free_port(), "--inspector", "anna"), tmp_path / "r.log", server_env()
    ) as url:
        fd = os.open(line_dir, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process holds the line folder
        try:
            started = time.monotonic()
            answer = httpx.post(
                url + "/api/verdict", json={"sha256": queue[0]["sha256"], "verdict": "ok", "page": "page-d-0004"}, timeout=30
            )
            assert answer.status_code == 503 and "locked by another process" in answer.json()["error"]
            assert time.monotonic() - started < 8
        finally:
            os.close(fd)
        assert line.read_rows(line_dir) == ([], [])  # nothing landed after the answer


def test_a_held_key_or_enter_after_a_click_labels_no_photo_unseen(watched, tmp_path):
    """A key held down repeats, and focus left on a clicked button would take Enter or Space as the same verdict:
    only deliberate presses and clicks label a photo."""
    line_dir = tmp_path / "line"
    queue = expected_queue(watched["log"])
    command = review_command(watched, line_dir, free_port(), "--inspector", "anna")
    with review_server(command, tmp_path / "review.log", server_env()) as url, browser_page(url) as page:
        page.settle()
        page.page.keyboard.down("d")
        page.settle()
        for _ in range(4):  # held: the browser's auto-repeat
            page.page.keyboard.down("d")
            page.settle()
        page.page.keyboard.up("d")
        assert [r["verdict"] for r in labels(line_dir)] == ["defective"] and page.current == queue[1]["sha256"]
        page.page.click("button[data-key='o']")
        page.settle()
        for key in ("Enter", " "):
            page.press(key)
        assert [r["verdict"] for r in labels(line_dir)] == ["defective", "ok"] and page.current == queue[2]["sha256"]


def test_a_labels_file_damaged_while_serving_is_said_on_the_page_and_at_start(watched, tmp_path):
    line_dir = tmp_path / "line"
    line_dir.mkdir()
    command = review_command(watched, line_dir, free_port(), "--inspector", "anna")
    with review_server(command, tmp_path / "r.log", server_env()) as url:
        assert httpx.get(url + "/api/queue", timeout=30).status_code == 200
        (line_dir / line.LABELS_NAME).write_text("sha256 ,image\n")  # a header edited by hand
        answer = httpx.get(url + "/api/queue", timeout=30)
        assert answer.status_code == 503 and "not a line labels file" in answer.json()["error"], answer.text
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, env=server_env(), cwd=PROJECT)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "not a line labels file" in refused.stderr
    (tmp_path / "file").write_text("")
    command = review_command(watched, tmp_path / "file", free_port(), "--inspector", "anna")
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, env=server_env(), cwd=PROJECT)
    assert refused.returncode == 1 and "a file, not a folder" in refused.stderr, refused.stderr
