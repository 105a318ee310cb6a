"""Modbus TCP to the PLC (pymodbus): a handshake a PLC programmer expects.

Holding registers, 0-based, unit id 1:

| register | meaning |
|---|---|
| 0 | status bits: 0 ready, 1 result valid, 2 OK, 3 NG, 4 REVIEW, 5 fault, 6 heartbeat (toggles each second) |
| 1 | part number (low 16 bits) |
| 2 | result code: 1 ok, 2 defective, 3 review, 4 not a part or undecided |
| 3 | fault code: 0 none, 1 camera stalled, 2 model not loaded, 3 no acknowledge, 4 station stopped, 5 station hung, 6 this link's own fault, 7 the record cannot keep up |
| 4 | defect probability x 10000 (65535: none) |
| 5 | latency from the frame to this signal, ms |
| 10 | control, written by the PLC: bit 0 trigger (hardware trigger), bit 1 acknowledge |

Only register 10 takes writes: a write anywhere else is refused (illegal data address), so no client can make the
station look ready or a part look ok. A trigger edge is counted when the PLC writes it, however short the pulse.

One result at a time: the station sets the result and `result valid`; the PLC reads it and sets `acknowledge`;
the station clears `result valid`; the PLC clears `acknowledge`; then the next result. A result not acknowledged
within the timeout drops `ready` and raises fault 3 until the PLC acknowledges: the line stops rather than passing
parts unsignalled. Later parts wait in order, none is lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import queue
import threading
import time

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from casting_inspection.core.errors import InspectionError
from casting_inspection.serving.station.parts import RESULT_CODES, Part
from casting_inspection.serving.watch.inbox import note

UNIT = 1
HOLDING = 3
STATUS, PART, RESULT, FAULT, PROBABILITY, LATENCY, CONTROL = 0, 1, 2, 3, 4, 5, 10
READY, VALID, OK, NG, REVIEW, FAULT_BIT, HEARTBEAT = (1 << bit for bit in range(7))
TRIGGER, ACKNOWLEDGE = 1, 2
FAULTS = {"camera": 1, "model": 2, "acknowledge": 3, "stopped": 4, "hung": 5, "internal": 6, "recorder": 7}
POLL_SECONDS = 0.002
CLIENT_WRITES = {5, 6, 15, 16, 22, 23}  # the function codes by which a client writes (coils, registers, masks)
SIGNAL_BITS = {"OK": OK, "NG": NG, "REVIEW": REVIEW}


class ModbusOutput:
    def __init__(self, host: str, port: int, ack_timeout: float):
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # its own connection chatter; faults are ours to tell
        self.host, self.port, self.ack_timeout = host, port, ack_timeout
        self.results: queue.Queue = queue.Queue()
        self.state = {"ready": False, "fault": 0, "valid": False, "bits": 0, "heartbeat": False, "part": 0, "code": 0}
        self.station_fault = FAULTS["model"]
        self.edges: collections.deque = collections.deque()  # perf_counter of each trigger edge not yet served
        self.stopping = threading.Event()
        self.alive = lambda: True  # the station's loop turning (set by the station): no heartbeat, no READY without it
        self.loop: asyncio.AbstractEventLoop | None = None
        started = threading.Event()
        self.server_thread = threading.Thread(target=lambda: asyncio.run(self._serve(started)), name="modbus", daemon=True)
        self.server_thread.start()
        if not started.wait(10) or self.loop is None:
            raise InspectionError(
                f"Modbus: cannot listen on {host}:{port} ({self.failure}); is the port taken, and is {host} an address of this machine?"
            )
        self.worker = threading.Thread(target=self._handshake, name="modbus-handshake", daemon=True)
        self.worker.start()

    failure = "no answer"
    pending: Part | None = None  # the result set and not yet acknowledged
    unshown: Part | None = None  # the result taken from the queue whose registers could not be written yet
    acknowledged = 0
    written: list[int] = []

    async def _serve(self, started: threading.Event) -> None:
        values = [0] * 16
        values[PROBABILITY] = 0xFFFF  # no result yet: no probability
        registers = [SimData(0, values=values, datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        simdata = (bits, bits, registers, [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)])
        device = SimDevice(id=UNIT, simdata=simdata, action=self._on_access)
        try:
            self.server = ModbusTcpServer(device, address=(self.host, self.port))
            await self.server.serve_forever(background=True)
        except Exception as exc:  # a taken port or an unknown host: pymodbus says so in its own types
            self.failure = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            started.set()
            return
        self.port = self.server.transport.sockets[0].getsockname()[1]
        self.loop = asyncio.get_running_loop()
        started.set()
        await self.server.serving

    async def _on_access(self, function, start, address, count, registers, values):
        """Every client request, before it is served: a write goes to the control register only, and its trigger's
        rising edge is counted now (a pulse shorter than the handshake's poll is still one part). The station's own
        writes come as function 3 and pass."""
        if values is None or function not in CLIENT_WRITES:
            return None
        if function in (5, 15) or address != CONTROL or count != 1:
            return ExcCodes.ILLEGAL_ADDRESS
        if values[0] & TRIGGER and not registers[CONTROL - start] & TRIGGER:
            self.edges.append(time.perf_counter())
        return None

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(2)

    def _write(self, address: int, values: list[int]) -> None:
        self._call(self.server.async_setValues(UNIT, HOLDING, address, values))

    def _control(self) -> int:
        return self._call(self.server.async_getValues(UNIT, HOLDING, CONTROL, 1))[0]

    def _status(self) -> None:
        s, alive = self.state, self.alive()
        fault = s["fault"] or (0 if s["ready"] else self.station_fault) or (0 if alive else FAULTS["hung"])
        word = (READY if s["ready"] and alive and not fault else 0) | (VALID if s["valid"] else 0) | s["bits"]
        word |= (FAULT_BIT if fault else 0) | (HEARTBEAT if s["heartbeat"] else 0)
        registers = [word, s["part"], s["code"], fault]  # one write: a PLC never reads a status half-updated
        if registers != self.written:  # each write is a round trip to the server's loop: only changes
            self._write(STATUS, registers)
            self.written = registers

    def problem(self) -> tuple[str, str] | None:
        """This link's own reason the line must stop (the PLC has not acknowledged), for the station to say everywhere."""
        if self.state["fault"] == FAULTS["acknowledge"]:
            return "the PLC has not acknowledged the last result within --ack-timeout", "acknowledge"
        return None

    def ready(self, ready: bool, reason: str, fault: str = "") -> None:
        """The station's readiness: not ready while the camera stalls or the model cannot load."""
        self.state["ready"] = ready
        self.station_fault = FAULTS.get(fault, 0) if not ready else 0

    def post(self, part: Part) -> None:
        self.results.put(part)

    def _post(self, part: Part) -> None:
        p = part.defect_probability
        probability = round(min(max(p, 0.0), 1.0) * 10000) if p is not None and math.isfinite(p) else 0xFFFF
        latency = round((time.perf_counter() - part.arrived) * 1000)
        self._write(PROBABILITY, [probability, min(latency, 0xFFFF)])
        self.state.update(
            valid=True, bits=SIGNAL_BITS[part.signal], part=part.number & 0xFFFF, code=RESULT_CODES.get(part.decision, 4)
        )
        self._status()

    def _handshake(self) -> None:
        """The PLC's handshake, polled every 2 ms. A fault of its own drops READY (fault 6) and is said once; it goes on."""
        self.clock = {"posted": 0.0, "released": 0.0, "beat": time.monotonic(), "last": 0, "release": False, "low": False}
        failing = None
        while not self.stopping.is_set():
            try:
                self._turn()
                failing = None
            except Exception as exc:
                if failing is None:
                    note(f"Modbus: the handshake failed ({type(exc).__name__}: {exc}); not ready until it works", "station")
                failing = exc
                self.state["fault"] = FAULTS["internal"]
                with contextlib.suppress(Exception):
                    self._status()
            time.sleep(POLL_SECONDS)

    def _turn(self) -> None:
        c, control, now = self.clock, self._control(), time.monotonic()  # trigger edges are counted as written
        if self.state["fault"] == FAULTS["internal"]:
            self.state["fault"] = 0
        c["low"] = c["low"] or not control & ACKNOWLEDGE  # an acknowledge counts once seen low since the result was set
        if self.pending is not None and control & ACKNOWLEDGE and c["low"] and not c["release"]:
            self.pending, c["release"], c["released"] = None, True, now
            self.acknowledged += 1
            self.state.update(valid=False, bits=0, fault=0, code=0)  # 0: no result, so none is left to be read as ok
            self._write(PROBABILITY, [0xFFFF, 0])
        waited = now - (c["released"] if c["release"] else c["posted"])
        if (self.pending is not None or c["release"]) and waited > self.ack_timeout and not self.state["fault"]:
            self.state["fault"] = FAULTS["acknowledge"]
            what = "did not release its acknowledge" if c["release"] else f"did not acknowledge part {self.pending.number}"
            note(f"Modbus: the PLC {what} within {self.ack_timeout:g} s; not ready until it does", "station")
        if c["release"] and not control & ACKNOWLEDGE:
            c["release"] = False
            if self.state["fault"] == FAULTS["acknowledge"]:
                self.state["fault"] = 0
        if self.pending is None and not c["release"] and (self.unshown is not None or not self.results.empty()):
            part, self.unshown = self.unshown or self.results.get(), None
            self.unshown = part  # until the PLC can see it: a write that fails shows it again next turn
            self._post(part)
            self.pending, self.unshown, c["posted"], c["low"] = part, None, now, not control & ACKNOWLEDGE
        if now - c["beat"] >= 1.0 and self.alive():
            self.state["heartbeat"], c["beat"] = not self.state["heartbeat"], now
        self._status()

    def take_trigger(self, arrived: float) -> float | None:
        """The time (perf_counter) of the PLC trigger bit's next rising edge (bit 0 of the control register), once per
        edge, for the first frame read after it (`arrived`): a frame taken before the trigger never answers it."""
        if not self.edges or self.edges[0] >= arrived:
            return None
        return self.edges.popleft()

    def _drain(self) -> None:
        """At stop, give the PLC its results: wait while it keeps acknowledging, at most `ack_timeout` for each."""
        done, since = self.acknowledged, time.monotonic()
        while (
            self.pending is not None or self.unshown is not None or not self.results.empty()
        ) and time.monotonic() - since < self.ack_timeout:
            if self.acknowledged != done:
                done, since = self.acknowledged, time.monotonic()
            time.sleep(POLL_SECONDS)
        left = self.results.qsize() + (self.pending is not None) + (self.unshown is not None)
        if left:
            note(f"Modbus: {left} results not acknowledged by the PLC at stop; each is in the station's log", "station")

    def close(self) -> None:
        if self.stopping.is_set():
            return
        self.state["ready"], self.station_fault = False, FAULTS["stopped"]
        self._drain()
        self.stopping.set()
        self.worker.join(2)
        self._status()
        self._call(self.server.shutdown())
        self.server_thread.join(5)
