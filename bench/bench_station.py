"""The line station's latency, throughput and recovery on this machine, with the committed model.

A line made of real test photos: an indexing conveyor filmed at 30 frames per second, each part in view for two
frames then one empty frame (10 parts a second, 600 a minute), read as a live camera (--realtime: frames the
station has no time for are dropped). The station runs here with all its outputs on 127.0.0.1: Modbus TCP, OPC UA
and MQTT (Debian's mosquitto); a PLC, an OPC UA client and an MES subscriber run in another process
(bench/station_clients.py) and note when each result reaches them. Latency is from the frame arriving (read from
the decoder) to the result received by the client, on the system's monotonic clock. Then recovery: a camera
stream (HTTP MJPEG) cut and restarted, and the broker restarted.

    python bench/bench_station.py [--parts 300] [--model models/model.onnx] [--photos data/raw/test]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from casting_inspection.serving.station.modbus import ModbusOutput  # noqa: E402
from casting_inspection.serving.station.mqtt import MqttOutput  # noqa: E402
from casting_inspection.serving.station.opcua import OpcUaOutput  # noqa: E402
from casting_inspection.serving.station.settings import StationSettings  # noqa: E402
from casting_inspection.serving.station.station import Station  # noqa: E402
from casting_inspection.serving.station.telemetry import StationMetrics  # noqa: E402
from helpers import line_video  # noqa: E402
from line_servers import Mosquitto, free_port, mjpeg_server, wait_for_port  # noqa: E402


class Probe:
    """An output that notes when each part's frame arrived and when the station handed its result to the outputs."""

    def __init__(self):
        self.arrived, self.handed = {}, {}

    def ready(self, *args) -> None:
        pass

    def post(self, part) -> None:
        self.arrived[part.number], self.handed[part.number] = part.arrived, time.perf_counter()

    def close(self) -> None:
        pass


def photo_files(folder: Path, n: int) -> list[Path]:
    ok, bad = sorted(folder.glob("ok_front/*.jpeg")), sorted(folder.glob("def_front/*.jpeg"))
    return [p for pair in zip(ok, bad) for p in pair][:n]


def photos(folder: Path, n: int) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in photo_files(folder, n)]


def agreement(args, work: Path) -> str:
    """How many parts the station decided as `predict` decides the original photo (the video re-encodes each)."""
    import sqlite3

    from casting_inspection.serving.inference import Inspector

    files = photo_files(args.photos, args.parts)
    originals = Inspector(args.model).inspect([(p.name, p.read_bytes()) for p in files])
    with sqlite3.connect(work / "out/inspections.sqlite") as db:
        rows = dict(db.execute("SELECT name, decision FROM inspections").fetchall())
    station = {int(name.rsplit("-", 1)[1].split(".")[0]): d for name, d in rows.items()}
    same = sum(station.get(k + 1) == r.decision for k, r in enumerate(originals))
    return f"{same} of {len(files)} parts decided as predict decides the original photo"


def latency_table(probe: Probe, received: list[str]) -> list[tuple[str, int, float, float, float]]:
    rows = [("station (decided, handed to the outputs)", [probe.handed[n] - probe.arrived[n] for n in probe.handed])]
    for protocol in ("modbus", "opcua", "mqtt"):
        seen = {}
        for line in received:
            name, number, at = line.split()
            if name == protocol and int(number) in probe.arrived:
                seen.setdefault(int(number), float(at))  # QoS 1 may deliver twice: the first counts
        rows.append((protocol, [at - probe.arrived[n] for n, at in seen.items()]))
    return [(name, len(v), *np.percentile(np.array(v) * 1000, [50, 99]), max(v) * 1000) for name, v in rows if v]


def run_line(args, work: Path) -> None:
    video = work / "line.avi"
    line_video(video, photos(args.photos, args.parts), size=(640, 400), fps=30, step=0, pause=2, gap=1, belt=40, lead=60)
    broker = Mosquitto(work / "broker").start()
    modbus, url = free_port(), f"opc.tcp://127.0.0.1:{free_port()}/casting-inspect"
    probe = Probe()
    outputs = [ModbusOutput("127.0.0.1", modbus, ack_timeout=1.0), OpcUaOutput(url, "bench"),
               MqttOutput("127.0.0.1", broker.port, "casting-inspect/bench/parts", "bench"), probe]  # fmt: skip
    received_file = work / "received.txt"
    clients = subprocess.Popen([sys.executable, str(ROOT / "bench/station_clients.py"), str(modbus), url, str(broker.port),
                                str(received_file)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    clients.stdout.readline()  # "ready": every client connected
    settings = StationSettings(str(video), work / "out", args.model, "bench", realtime=True)
    station = Station(settings, outputs, StationMetrics("127.0.0.1", None, 200))
    with contextlib.redirect_stdout(io.StringIO()):
        station.run(threading.Event())
    time.sleep(1.0)
    clients.terminate()
    clients.wait(30)
    broker.stop()
    span = max(probe.arrived.values()) - min(probe.arrived.values())
    print(f"\n{len(probe.arrived)} parts decided of {args.parts}, {station.undecided} undecided; "
          f"{station.reader.index} frames, {station.reader.dropped} dropped; "
          f"{len(probe.arrived) / span * 60:.0f} parts a minute sustained over {span:.1f} s; decisions {station.counts}")  # fmt: skip
    print(agreement(args, work))
    print("\n| to | results | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
    for name, n, p50, p99, worst in latency_table(probe, received_file.read_text().split("\n")[:-1]):
        print(f"| {name} | {n} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")


def wait_for(condition, seconds: float = 60) -> float:
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > seconds:
            return float("nan")
        time.sleep(0.005)
    return time.perf_counter() - start


def run_recovery(args, work: Path) -> None:
    video = work / "camera.avi"
    line_video(video, photos(args.photos, 10), size=(640, 400), fps=30, step=0, pause=2, gap=3, belt=40, lead=15)
    port = free_port()
    camera = mjpeg_server(video, port)
    broker = Mosquitto(work / "broker2").start()
    mqtt_out = MqttOutput("127.0.0.1", broker.port, "casting-inspect/bench/parts", "bench")
    settings = StationSettings(f"http://127.0.0.1:{port}/stream", work / "out2", args.model, "bench", stall_seconds=1.0)
    station = Station(settings, [mqtt_out], StationMetrics("127.0.0.1", None, 200))
    stop = threading.Event()
    runner = threading.Thread(target=lambda: station.run(stop))
    with contextlib.redirect_stdout(io.StringIO()):
        runner.start()
        wait_for(lambda: station.ready_reason is None)
        camera.kill()
        camera.wait()
        not_ready = wait_for(lambda: station.ready_reason is not None)
        time.sleep(1.0)
        camera = mjpeg_server(video, port)
        wait_for_port(port)
        back = wait_for(lambda: station.ready_reason is None)
        broker.stop()
        wait_for(lambda: not mqtt_out.connected, 10)
        broker.start()
        reconnected = wait_for(lambda: mqtt_out.connected)
        stop.set()
        runner.join(60)
    camera.kill()
    broker.stop()
    print("\n| fault | seconds |\n|---|---|")
    print(f"| camera cut: station not ready after (stall limit 1 s) | {not_ready:.2f} |")
    print(f"| camera back: station ready again after | {back:.2f} |")
    print(f"| broker back: results flowing again after | {reconnected:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=300)
    parser.add_argument("--model", type=Path, default=ROOT / "models/model.onnx")
    parser.add_argument("--photos", type=Path, default=ROOT / "data/raw/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        run_line(args, Path(work))
        run_recovery(args, Path(work))


if __name__ == "__main__":
    main()
