"""The real servers and clients a line station talks to, started by the tests on 127.0.0.1: Debian's mosquitto
broker, an MJPEG camera stream over HTTP (a process the test cuts off and restarts), a Modbus PLC (pymodbus's
client) that acknowledges results, or not, and an MQTT subscriber with a persistent session."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


class Mosquitto:
    """A broker that keeps sessions across a restart (persistence), as a plant's broker does."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(  # user root: started as root it would drop to the mosquitto user, who cannot reach tmp_path
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\npersistence_location {folder}/\n"
            f"autosave_interval 1\nlog_dest file {folder}/mosquitto.log\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)])
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Subscriber:
    """An MES: a persistent MQTT session (it gets what was published while it reconnected), messages by topic. It is
    subscribed when made: a broker keeps nothing for a session it has not seen yet."""

    def __init__(self, port: int, topic: str, name: str = "mes"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{port}", clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(30):
            raise TimeoutError(f"the MES could not subscribe to {topic} on 127.0.0.1:{port} within 30 s")

    def parts(self) -> dict[int, dict]:
        return {m["part"]: m for topic, m in self.messages if topic.endswith("/parts")}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Plc(threading.Thread):
    """A PLC on Modbus TCP: polls the status word, records each valid result and acknowledges it (the handshake of
    serving.station.modbus), except for `silent_for` seconds from the first result; records each status word seen."""

    def __init__(self, port: int, silent_for: float = 0.0):
        super().__init__(daemon=True)
        self.port, self.silent_for = port, silent_for
        self.first_result: float | None = None
        self.results: list[tuple[int, int, int]] = []  # (part number, result code, status bits)
        self.statuses: list[tuple[int, int]] = []  # (status word, fault code), each change
        self.stopping = threading.Event()
        self.pulses = 0  # trigger pulses asked for and not yet sent
        self.control = 0  # what this PLC last wrote to the control register

    def run(self) -> None:
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=0.5, retries=0)
        acknowledging = False
        while not self.stopping.is_set():
            try:
                registers = client.read_holding_registers(0, count=11, device_id=1)
            except Exception:  # the station is not up yet, or restarting
                time.sleep(0.05)
                continue
            if registers.isError():
                time.sleep(0.05)
                continue
            status, number, code, fault = registers.registers[:4]
            control = registers.registers[10]
            if not self.statuses or self.statuses[-1] != (status, fault):
                self.statuses.append((status, fault))
            try:
                acknowledging = self._handshake(client, status, number, code, control, acknowledging)
                self._pulse(client, acknowledging)
            except Exception:  # the station stopped between the read and the write
                continue
            time.sleep(0.003)
        client.close()

    def _handshake(self, client, status, number, code, control, acknowledging) -> bool:
        valid = status & 2
        if valid and not acknowledging:
            if not self.results or self.results[-1][0] != number:
                self.results.append((number, code, status & (4 | 8 | 16)))
            self.first_result = self.first_result or time.monotonic()
            if time.monotonic() - self.first_result >= self.silent_for:
                self._write(client, (self.control & 1) | 2)
                return True
        if acknowledging and not valid:
            self._write(client, self.control & 1)
            return False
        return acknowledging

    def _write(self, client, control: int) -> None:
        client.write_register(10, control, device_id=1)
        self.control = control

    def _pulse(self, client, acknowledging: bool) -> None:
        """A trigger pulse: the bit set for one poll, then cleared (the station acts on the rising edge)."""
        if self.control & 1:
            self._write(client, self.control & ~1)
        elif self.pulses:
            self.pulses -= 1
            self._write(client, self.control | 1)

    def trigger(self) -> None:
        self.pulses += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


def mjpeg_server(video: Path, port: int) -> subprocess.Popen:
    """A camera on HTTP: tests/mjpeg_server.py streams the video's frames, looped, at its frame rate."""
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "mjpeg_server.py"), str(video), str(port)])
    wait_for_port(port)
    return process
