"""The line station against the real things: a video made here from generated parts, decoded by OpenCV's FFmpeg; a
camera stream over HTTP that the test cuts off and restarts; Debian's mosquitto; pymodbus's client as the PLC,
one that acknowledges and one that does not for a while; asyncua's client reading the OPC UA server; the
Prometheus endpoint scraped. Every test counts the parts: each is decided once, signalled and recorded, or
signalled NG / not ready with its reason."""

from __future__ import annotations

import itertools
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from casting_inspection.serving import cli
from casting_inspection.serving.inference import Inspector
from casting_inspection.serving.review.station import waiting_photos
from casting_inspection.serving.station.parts import RESULT_CODES, signal_of
from casting_inspection.serving.watch.log import LOG_NAME
from helpers import PROJECT, line_video, part_image
from line_servers import Mosquitto, Plc, Subscriber, free_port, mjpeg_server, wait_for_port

CLI = [sys.executable, "-m", "casting_inspection.serving.cli", "station"]
PARTS = 6
BITS = {"OK": 4, "NG": 8, "REVIEW": 16}
pytestmark = pytest.mark.slow
logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # the client's reconnect chatter when the station stops


def photos(n: int = PARTS) -> list[np.ndarray]:
    return [cv2.cvtColor(np.array(part_image(i % 2 == 1, 100 + i, size=96)), cv2.COLOR_GRAY2BGR) for i in range(n)]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "line.avi"
    line_video(path, photos(), lead=75)  # 2.5 s of empty belt at 30 fps: time for the clients to connect
    return path


@pytest.fixture(scope="module")
def square_video(tmp_path_factory) -> Path:
    """The same line filmed by a camera framed on the part (a square region), as the PLC's trigger needs."""
    path = tmp_path_factory.mktemp("square") / "line.avi"
    line_video(path, photos(), size=(192, 192), lead=75)
    return path


def video_frames(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while (read := capture.read())[0]:
        frames.append(read[1])
    return frames


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    """MJPEG in AVI at 30 fps, as `line_video` writes a line: a scene made of another video's frames."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()


def logged(out: Path) -> list[tuple]:
    with sqlite3.connect(out / LOG_NAME) as db:
        return db.execute("SELECT name, decision, reason, destination FROM inspections ORDER BY name").fetchall()


def part_lines(stdout: str) -> dict[int, tuple[str, str]]:
    """part number -> (signal, decision), from the line the station prints per part."""
    return {int(m[1]): (m[2], m[3]) for m in re.finditer(r"^part (\d+)\s+(\S+)\s+(\S+)", stdout, re.MULTILINE)}


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else float("nan")  # nan compares False: a missing metric fails


class OpcUaWatcher:
    """A SCADA client: subscribes to LastResult.ResultId (written last of a result) and keeps each value."""

    def __init__(self, url: str):
        from asyncua.sync import Client, ThreadLoop

        self.results: list[str] = []
        self.loop = ThreadLoop()  # one event loop thread for every try, stopped at close
        self.loop.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client = Client(url, timeout=2, tloop=self.loop)
                self.client.connect()
                break
            except Exception:
                if time.monotonic() > deadline:
                    self.loop.stop()
                    raise
                time.sleep(0.1)
        index = self.client.get_namespace_index("urn:casting-inspection")
        self.result_id = self.client.get_node(f"ns={index};s=InspectionStation.LastResult.ResultId")
        self.state = self.client.get_node(f"ns={index};s=InspectionStation.State")
        self.subscription = self.client.create_subscription(20, self)
        self.subscription.subscribe_data_change(self.result_id)

    def datachange_notification(self, node, value, data) -> None:  # in the client's event loop: no reads from here
        if value:
            self.results.append(value)

    def status_change_notification(self, status) -> None:
        pass  # the station stops its server at the video's end

    def close(self) -> None:
        try:
            self.client.disconnect()
        except Exception:  # the station stopped its server first
            pass
        self.loop.stop()


def test_a_video_each_part_decided_once_and_signalled_on_modbus_opcua_and_mqtt(exported_model, video, tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    modbus, opcua, metrics = free_port(), free_port(), free_port()
    url = f"opc.tcp://127.0.0.1:{opcua}/casting-inspect"
    mes = Subscriber(broker.port, "casting-inspect/press-3/#")
    out = tmp_path / "out"
    cmd = [*CLI, str(video), "--out", str(out), "--model", str(exported_model["onnx"]), "--name", "press-3", "--realtime",
           "--modbus", f"127.0.0.1:{modbus}", "--opcua", url, "--mqtt", f"127.0.0.1:{broker.port}",
           "--metrics", f"127.0.0.1:{metrics}"]  # fmt: skip
    station = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(modbus, 30)
        plc = Plc(modbus)
        plc.start()
        scada = None
        scada = OpcUaWatcher(url)
        wait_for_port(metrics)
        while not metric(health := scrape(metrics), "casting_inspect_frames_total") > 10:
            time.sleep(0.05)
        stdout, stderr = station.communicate(timeout=120)
    finally:
        station.kill()
        plc.stop()
        if scada:
            scada.close()
        time.sleep(0.3)
        mes.close()
        broker.stop()
    assert station.returncode == 0, stderr
    parts = part_lines(stdout)
    assert sorted(parts) == list(range(1, PARTS + 1)), stdout  # each part once, none undecided, no empty frame
    assert all(signal == signal_of(decision) for signal, decision in parts.values())
    rows = logged(out)
    assert len(rows) == PARTS
    inspector = Inspector(exported_model["onnx"])
    for name, decision, _, destination in rows:
        assert Path(destination).parent.name == decision
        (again,) = inspector.inspect([(name, Path(destination).read_bytes())])
        assert again.decision == decision  # the filed photo is what was decided
    decisions = {int(name.split("-")[-1].split(".")[0]): decision for name, decision, _, _ in rows}
    assert {n: d for n, (_, d) in parts.items()} == decisions
    assert [n for n, _, _ in plc.results] == list(range(1, PARTS + 1))
    for number, code, bits in plc.results:
        assert code == RESULT_CODES[decisions[number]] and bits == BITS[signal_of(decisions[number])]
    assert any(status & 1 for status, _ in plc.statuses)  # it was ready
    assert sorted(scada.results) == [name for name, _, _, _ in rows]  # each result once, named as its photo
    assert {n: m["decision"] for n, m in mes.parts().items()} == decisions
    states = [m for topic, m in mes.messages if topic.endswith("/state")]
    assert states[-1]["ready"] is False and "stopped" in states[-1]["reason"]
    assert metric(health, "casting_inspect_station_ready") == 1
    waiting, missing = waiting_photos(out)  # the review page's queue reads the station's record as it reads watch's
    assert missing == 0 and sorted(w.name for w in waiting) == sorted(n for n, d, _, _ in rows if d in ("review", "not_a_part"))


def test_a_camera_cut_makes_the_station_not_ready_and_it_reconnects_and_a_broker_restart_loses_no_result(
    exported_model, video, tmp_path
):
    camera_port, modbus, metrics = free_port(), free_port(), free_port()
    camera = mjpeg_server(video, camera_port)
    broker = Mosquitto(tmp_path / "broker").start()
    mes = Subscriber(broker.port, "casting-inspect/station-1/parts")
    out = tmp_path / "out"
    cmd = [*CLI, f"http://127.0.0.1:{camera_port}/stream", "--out", str(out), "--model", str(exported_model["onnx"]),
           "--stall", "1", "--modbus", f"127.0.0.1:{modbus}", "--mqtt", f"127.0.0.1:{broker.port}",
           "--metrics", f"127.0.0.1:{metrics}"]  # fmt: skip
    station = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output = drain(station)  # read as it comes: a full pipe would stall whichever station thread writes to it
    plc = Plc(modbus)
    plc.start()
    try:
        wait_until(lambda: len(plc.results) >= 2, 60)
        camera.kill()  # the camera's cable is pulled
        camera.wait()
        wait_until(lambda: plc.statuses[-1][1] == 1 and not plc.statuses[-1][0] & 1, 10)  # not ready: camera stalled
        assert metric(scrape(metrics), "casting_inspect_station_ready") == 0
        camera = mjpeg_server(video, camera_port)  # plugged back in
        wait_until(lambda: plc.statuses[-1][0] & 1, 30)
        broker.stop()  # the MES's broker restarts while parts are decided
        seen = len(plc.results)
        wait_until(lambda: len(plc.results) >= seen + 2, 60)
        broker.start()
        wait_until(lambda: len(plc.results) >= seen + 3, 60)
        reached = {n for n, _, _ in plc.results}  # the MES reconnects on its own time: wait for it, not for a guess
        wait_until(lambda: reached <= set(mes.parts()), 30)
        dashboard = Subscriber(broker.port, "casting-inspect/station-1/state", name="dashboard")  # comes after the restart
        wait_until(lambda: dashboard.messages, 30)
        state = dashboard.messages[-1][1]  # retained: the station's state now, not the broker's last will
        dashboard.close()
        health = scrape(metrics)
        station.send_signal(signal.SIGTERM)
        station.wait(timeout=60)
        stdout, stderr = output()
        time.sleep(1.0)
    finally:
        station.kill()
        camera.kill()
        plc.stop()
        mes.close()
        broker.stop()
    assert station.returncode == 130, stderr
    assert state["ready"] is True, state
    assert "NOT READY: the camera stalled" in stderr and ("reconnecting" in stderr or "trying again" in stderr)
    parts = part_lines(stdout)
    rows = logged(out)
    assert len(rows) == len(parts) and sorted(parts) == list(range(1, len(parts) + 1))
    undecided = [n for n, (_, d) in parts.items() if d == "not_a_part"]
    assert all(parts[n][0] == "NG" for n in undecided)  # a part in view when the camera stalled went NG
    assert [n for n, _, _ in plc.results] == sorted(parts)  # every part reached the PLC, in order
    assert set(mes.parts()) == set(parts)  # and the MES, across the broker's restart
    names = set(re.findall(r"^(casting_inspect_\w+?)(?:_total|_bucket|_count|_sum)?[{ ]", health, re.MULTILINE))
    rules = yaml.safe_load((PROJECT / "deploy/prometheus/alerts.yml").read_text())
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        for used in set(re.findall(r"casting_inspect_\w+", rule["expr"])):
            assert re.sub(r"(_total|_bucket|_count|_sum)$", "", used) in names, (rule["alert"], used)


def drain(process: subprocess.Popen):
    """Read a process's stdout and stderr while it runs; the returned function waits for both and gives them."""
    chunks: dict[str, list[str]] = {"out": [], "err": []}
    readers = [
        threading.Thread(target=lambda s=stream, k=key: chunks[k].extend(iter(s.readline, "")), daemon=True)
        for key, stream in (("out", process.stdout), ("err", process.stderr))
    ]
    for reader in readers:
        reader.start()

    def output() -> tuple[str, str]:
        for reader in readers:
            reader.join(30)
        return "".join(chunks["out"]), "".join(chunks["err"])

    return output


def wait_until(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {seconds} s")
        time.sleep(0.02)


def run_with_plc(args: list[str], modbus: int, silent_for: float = 0.0) -> tuple[int, str, str, Plc]:
    """The station on the video to its end, with a PLC on its Modbus port: (exit status, stdout, stderr, the PLC)."""
    station = subprocess.Popen([*CLI, *args, "--modbus", f"127.0.0.1:{modbus}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    plc = Plc(modbus, silent_for=silent_for)
    plc.start()
    try:
        stdout, stderr = station.communicate(timeout=120)
    finally:
        station.kill()
        plc.stop()
    return station.returncode, stdout, stderr, plc


def test_a_plc_that_does_not_acknowledge_stops_the_line_and_no_result_is_lost(exported_model, video, tmp_path):
    args = [
        str(video),
        "--out",
        str(tmp_path / "out"),
        "--model",
        str(exported_model["onnx"]),
        "--ack-timeout",
        "0.3",
        "--realtime",
    ]
    code, stdout, stderr, plc = run_with_plc(
        args, free_port(), silent_for=1.0
    )  # the first result waits 1 s, then all are acknowledged
    assert code == 0, stderr
    assert "the PLC did not acknowledge part 1 within 0.3 s" in stderr
    assert "NOT READY: the PLC has not acknowledged the last result" in stderr  # the station's state, metrics and MQTT too
    assert any(status & 32 and not status & 1 and fault == 3 for status, fault in plc.statuses)  # fault, not ready
    assert [n for n, _, _ in plc.results] == list(range(1, PARTS + 1))  # then every result, in order
    assert len(part_lines(stdout)) == PARTS


def test_a_model_that_cannot_load_keeps_the_station_not_ready_and_every_part_ng(video, tmp_path):
    """With the lamp off for a while too, the model stays the one reason said (and the one fault code the PLC reads):
    two reasons said in turn would flood the log and make the PLC's fault code flicker."""
    dark = tmp_path / "dark.avi"
    write_video(dark, [(f * 0.05).astype(np.uint8) if 20 <= i < 50 else f for i, f in enumerate(video_frames(video))])
    args = [str(dark), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "missing.onnx")]
    _, stdout, stderr, plc = run_with_plc(args, free_port())
    said = [line for line in stderr.splitlines() if "NOT READY" in line]
    assert "NOT READY: the model cannot load" in said[0] and "missing.onnx" in said[0]
    assert len(said) == 2 and "the station stopped" in said[1], said
    assert not any(status & 1 for status, _ in plc.statuses)  # never ready
    said_once = list(itertools.dropwhile(lambda s: s == (0, 0), plc.statuses))  # (0, 0): read before the station's first word
    assert {fault for _, fault in said_once} <= {2, 4} and any(fault == 2 for _, fault in said_once), plc.statuses
    parts = part_lines(stdout)
    assert len(parts) == PARTS and all(s == "NG" for s, _ in parts.values())
    assert all(code == RESULT_CODES["not_a_part"] and bits == BITS["NG"] for _, code, bits in plc.results)
    assert all("model is not loaded" in reason for _, _, reason, _ in logged(tmp_path / "out"))


def run_with_triggers(video: Path, model: Path, out: Path, pulses: int, after_ready: float = 0.0):
    """The station on the video with `--trigger plc`; once it is ready (and `after_ready` s later), the PLC pulses its
    trigger `pulses` times, each after the last one's result. (exit status, stdout, stderr, the PLC)."""
    modbus = free_port()
    cmd = [*CLI, str(video), "--out", str(out), "--model", str(model), "--realtime", "--modbus", f"127.0.0.1:{modbus}",
           "--trigger", "plc"]  # fmt: skip
    station = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    plc = Plc(modbus)
    plc.start()
    try:
        wait_until(lambda: plc.statuses and plc.statuses[-1][0] & 1, 60)  # ready
        time.sleep(after_ready)
        for k in range(pulses):
            plc.trigger()
            wait_until(lambda k=k: len(plc.results) == k + 1, 10)
        stdout, stderr = station.communicate(timeout=120)
    finally:
        station.kill()
        plc.stop()
    return station.returncode, stdout, stderr, plc


def test_the_plcs_trigger_decides_the_next_frame_and_nothing_else(exported_model, square_video, tmp_path):
    code, stdout, stderr, plc = run_with_triggers(square_video, exported_model["onnx"], tmp_path / "out", 3)
    assert code == 0, stderr
    assert sorted(part_lines(stdout)) == [1, 2, 3]  # three pulses, three parts; the parts riding by decide nothing
    assert "froze" not in stdout  # each frame a new exposure (its noise): none taken for a frozen camera's
    assert [n for n, _, _ in plc.results] == [1, 2, 3]
    for _, _, _, destination in logged(tmp_path / "out"):
        assert cv2.imread(destination).shape == (192, 192, 3)  # the whole frame: the camera is framed on the part


def test_a_frozen_camera_gives_the_plcs_parts_no_verdict(exported_model, tmp_path):
    """Before: a camera that froze (frames still coming, one image again or a stuck buffer's few in turn) had each part
    decided on an image taken before its trigger, the part before's or an empty view's, `ok` included. Now a part whose
    frame is an image first sent before the PLC's trigger is NG, with the reason."""
    still = cv2.resize(photos(1)[0], (192, 192))  # a good part, the camera framed on it
    frozen = tmp_path / "frozen.avi"
    write_video(frozen, [still, np.flipud(still)] * 75)  # 5 s at 30 fps: two images in turn
    # after 0.5 s both images are seen: the first frames of a freeze are images the station has not seen before
    code, stdout, stderr, _ = run_with_triggers(frozen, exported_model["onnx"], tmp_path / "out", 2, after_ready=0.5)
    assert code == 3, stderr  # parts left undecided
    assert part_lines(stdout) == {1: ("NG", "not_a_part"), 2: ("NG", "not_a_part")}, stderr
    reasons = [reason for _, _, reason, _ in logged(tmp_path / "out")]
    assert all(re.search(r"first sent \d+\.\d\d s before the PLC's trigger: the camera froze$", r) for r in reasons), reasons


def test_a_trigger_no_frame_answers_after_its_delay_is_a_part_signalled_ng(exported_model, square_video, tmp_path):
    """--trigger-delay longer than the video: no frame read is late enough, so the part is never decided on an earlier
    frame; it is still a part, signalled NG when the video ends."""
    args = [str(square_video), "--out", str(tmp_path / "out"), "--model", str(exported_model["onnx"]), "--realtime",
            "--trigger", "plc", "--trigger-delay", "59"]  # fmt: skip
    modbus = free_port()
    station = subprocess.Popen([*CLI, *args, "--modbus", f"127.0.0.1:{modbus}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    plc = Plc(modbus)
    plc.start()
    try:
        wait_until(lambda: plc.statuses and plc.statuses[-1][0] & 1, 60)  # ready
        plc.trigger()
        stdout, stderr = station.communicate(timeout=120)
    finally:
        station.kill()
        plc.stop()
    assert station.returncode == 3, stderr  # a part left undecided
    assert part_lines(stdout) == {1: ("NG", "not_a_part")}
    assert [(n, code) for n, code, _ in plc.results] == [(1, RESULT_CODES["not_a_part"])]
    assert ["trigger came" in reason for _, _, reason, _ in logged(tmp_path / "out")] == [True]


def test_a_trigger_delay_without_the_plcs_trigger_is_refused(exported_model, video, tmp_path):
    args = [*CLI, str(video), "--out", str(tmp_path / "out"), "--model", str(exported_model["onnx"]), "--trigger-delay", "0.1"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "--trigger-delay applies to the PLC's trigger" in result.stderr


def test_a_video_cut_short_says_so_and_exits_3(exported_model, video, tmp_path):
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size * 2 // 3])  # a copy that stopped two thirds in
    args = [*CLI, str(cut), "--out", str(tmp_path / "out"), "--model", str(exported_model["onnx"])]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "of the 141 frames it declares (cut short?)" in result.stderr
    assert len(part_lines(result.stdout)) == len(logged(tmp_path / "out"))  # what it saw, it decided and recorded


def test_sources_it_cannot_use_are_refused_in_one_line(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a video")
    for source, expected in (
        (str(bad), "cannot be opened"),
        ("genicam:/nowhere/producer.cti", "harvesters"),
        ("ftp://camera/stream", "not a video file, stream URL"),
    ):
        result = subprocess.run([*CLI, source, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, (source, result.stderr)
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and expected in errors[0], (source, result.stderr)


def test_a_view_gone_dark_stops_the_line_until_the_light_is_back(exported_model, video, tmp_path):
    """A lamp off: no part can be seen, so none would be signalled while parts pass. The station is not ready (fault
    camera) for as long as the view is black, and ready again after; the dark belt around it (mean 0.24) is no fault."""
    dark = tmp_path / "dark.avi"
    frames = video_frames(video)  # frames 20-49: the empty belt with the lamp off
    write_video(dark, [(f * 0.05).astype(np.uint8) if 20 <= i < 50 else f for i, f in enumerate(frames)])
    args = [str(dark), "--out", str(tmp_path / "out"), "--model", str(exported_model["onnx"]), "--realtime"]
    code, stdout, stderr, plc = run_with_plc(args, free_port())
    assert code == 0 and "NOT READY: the view is dark (mean grey level 0.005)" in stderr, stderr
    assert stderr.index("NOT READY: the view is dark") < stderr.rindex("ready (")  # ready again once lit
    assert any(not status & 1 and fault == 1 for status, fault in plc.statuses)  # the PLC saw it: fault camera
    assert len(part_lines(stdout)) == PARTS


def station_here(capsys, *args: str) -> tuple[int, str]:
    """`casting-inspect station` in this process (a refusal needs no interpreter of its own): exit status and stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(["station", *args])
    return exited.value.code, capsys.readouterr().err


def test_settings_that_would_hide_a_fault_are_refused_by_their_option(exported_model, video, tmp_path, capsys):
    base = [str(video), "--out", str(tmp_path / "out"), "--model", str(exported_model["onnx"])]
    for extra, expected in (
        (["--ack-timeout", "inf"], "--ack-timeout must be a number of seconds above 0 (got inf)"),
        (["--stall", "inf"], "--stall must be a number of seconds above 0 (got inf)"),
        (["--min-area", "0"], "--min-area 0.0 is out of range: give above 0 and under 1"),
    ):
        code, stderr = station_here(capsys, *base, *extra)
        assert code == 1 and stderr.count("\n") == 1 and expected in stderr, stderr


def test_a_video_stopped_by_sigterm_is_not_called_cut_short(exported_model, video, tmp_path):
    args = [*CLI, str(video), "--out", str(tmp_path / "out"), "--model", str(exported_model["onnx"]), "--realtime"]
    station = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    station.send_signal(signal.SIGTERM)
    _, stderr = station.communicate(timeout=60)
    assert station.returncode == 130 and "cut short" not in stderr, stderr


def test_an_output_that_cannot_start_is_one_line_and_nothing_is_left_running(exported_model, video, tmp_path, capsys):
    """A mistyped OPC UA URL, or a port another program holds: one line, exit 1, at once; no thread of it is left."""
    import socket

    base = [str(video), "--out", str(tmp_path / "out"), "--model", str(exported_model["onnx"])]
    threads = set(threading.enumerate())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra, expected in (
            (["--opcua", "garbage"], "--opcua garbage: cannot serve"),
            (["--opcua", f"opc.tcp://127.0.0.1:{port}/x"], "address already in use"),
            (["--modbus", f"127.0.0.1:{port}"], f"Modbus: cannot listen on 127.0.0.1:{port}"),
        ):
            code, stderr = station_here(capsys, *base, *extra)
            assert code == 1 and stderr.count("\n") == 1 and expected in stderr, stderr
    time.sleep(0.5)
    left = [t.name for t in set(threading.enumerate()) - threads if t.is_alive() and not t.daemon]
    assert left == [], left  # a thread that is not a daemon would keep the command from ending


def test_the_plcs_trigger_on_a_frame_of_no_parts_shape_is_not_ready_with_the_reason(exported_model, video, tmp_path):
    """With the PLC's trigger the whole frame is judged: a wide frame would make every part not_a_part, one by one."""
    args = [str(video), "--out", str(tmp_path / "out"), "--model", str(exported_model["onnx"]), "--trigger", "plc"]
    _, _, stderr, plc = run_with_plc(args, free_port())
    assert "NOT READY: with --trigger plc the whole frame is judged, and a 320x192 frame is no part's photo" in stderr
    assert not any(status & 1 for status, _ in plc.statuses) and any(fault == 1 for _, fault in plc.statuses)


def test_a_part_in_view_at_start_that_the_trigger_cannot_shake_off_stops_the_line(exported_model, tmp_path):
    """A part under the camera when the station starts is learnt as belt; parts that stop where it stood then merge
    with its ghost and leave undecided, each NG. Five in a row: the station is not ready, with what to do."""
    source = tmp_path / "line.avi"
    stops = line_video(source, photos(12), gap=2)
    started, frames = tmp_path / "started.avi", video_frames(source)
    write_video(started, [frames[stops[0]]] * 10 + frames[stops[0] :])  # the first part at the centre at start, then the line
    args = [str(started), "--out", str(tmp_path / "out"), "--model", str(exported_model["onnx"])]
    code, stdout, stderr, plc = run_with_plc(args, free_port())
    undecided = [n for n, (signal_, decision) in part_lines(stdout).items() if decision == "not_a_part"]
    assert len(undecided) >= 5 and all(part_lines(stdout)[n][0] == "NG" for n in undecided)
    assert "NOT READY: 5 parts in a row or more were not judged (undecided or not a part)" in stderr, stderr
    assert any(not status & 1 and fault == 1 for status, fault in plc.statuses)
