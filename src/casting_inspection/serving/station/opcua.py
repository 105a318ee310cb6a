"""OPC UA (asyncua): the station's state, a heartbeat and the result of each part, for a PLC, SCADA or MES client.

Modelled on the OPC UA Machine Vision companion specification (OPC 40100-1) where it fits: the state takes the
vision state machine's names (Preoperational while starting, Operational when ready, Error with the reason,
Halted when stopped), and LastResult carries ResultId, CreationTime, ResultState (1 completed, 4 failed) and the
evaluation of OPC 40001-101 (1 OK, 2 NotOK, 3 NotDecidable), with our decision, signal and scores beside them.
The heartbeat counts seconds while the station's loop turns: a hung station stops it.
Everything sits under Objects/InspectionStation in the namespace urn:casting-inspection, with string node ids
(ns=N;s=InspectionStation.LastResult.ResultId). Anonymous, unencrypted: put it on the machine network only.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from datetime import UTC, datetime

from asyncua import ua
from asyncua.sync import Server

from casting_inspection.core.errors import InspectionError
from casting_inspection.serving.station.parts import RESULT_CODES, Part
from casting_inspection.serving.watch.inbox import note

NAMESPACE = "urn:casting-inspection"
EVALUATION = {"OK": 1, "NG": 2, "REVIEW": 3}  # OPC 40001-101 ResultEvaluationEnum: OK, NotOK, NotDecidable
S, D, U, N, T, B = (ua.VariantType.String, ua.VariantType.Double, ua.VariantType.UInt32, ua.VariantType.Int32,
                    ua.VariantType.DateTime, ua.VariantType.Boolean)  # fmt: skip
FAILED = ("undecided", "could not be decided", "the model is not loaded")
RESULT = {
    "ResultId": S, "PartNumber": U, "CreationTime": T, "ResultState": N, "ResultEvaluation": N, "ResultCode": U,
    "Decision": S, "Signal": S, "Reason": S, "DefectProbability": D, "AnomalyScore": D, "ProcessingDuration": D,
}  # fmt: skip


class OpcUaOutput:
    def __init__(self, url: str, station: str):
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # its address space and session chatter
        self.url, self.results = url, queue.Queue()
        try:
            self.server = Server()
            self.server.set_endpoint(url)
            self.server.set_server_name(f"casting-inspect {station}")
            self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            self.server.set_identity_tokens([ua.AnonymousIdentityToken])
            self.server.disable_clock()  # else stop waits for its one-second clock
            self.nodes = self._address_space(station)
            self.server.start()
        except Exception as exc:  # a bad URL or a taken port, raised by asyncua or its socket in its own types
            self._abandon()
            raise InspectionError(
                f"--opcua {url}: cannot serve ({type(exc).__name__}: {exc}); check the URL (opc.tcp://HOST:PORT/PATH) "
                "and that the port is free"
            ) from None
        self.stopping = threading.Event()
        self.closed = False
        self.alive = lambda: True  # the station's loop turning (set by the station): the heartbeat stops without it
        self.failing: set[str] = set()  # nodes whose last write failed: each said once
        self.state = {"State": "Preoperational", "Ready": False, "Reason": "starting"}
        self.worker = threading.Thread(target=self._work, name="opcua", daemon=True)
        self.worker.start()

    def _abandon(self) -> None:
        """A server that could not start still runs asyncua's event loop thread, which would keep the process alive."""
        server = getattr(self, "server", None)
        if server is not None:
            try:
                server.stop()
            except Exception:  # it never started: stopping its own loop thread is what is left
                server._stop_own_tloop()

    def _address_space(self, station: str) -> dict:
        index = self.server.register_namespace(NAMESPACE)
        root = self.server.nodes.objects.add_object(
            ua.NodeId("InspectionStation", index), ua.QualifiedName("InspectionStation", index)
        )
        nodes = {}

        def variable(parent, path: str, name: str, value, kind):
            node_id = ua.NodeId(f"{path}.{name}", index)
            nodes[name] = parent.add_variable(node_id, ua.QualifiedName(name, index), ua.Variant(value, kind))

        for name, value, kind in (("Name", station, S), ("State", "Preoperational", S), ("Ready", False, B),
                                  ("Reason", "starting", S), ("Heartbeat", 0, U), ("PartsDecided", 0, U)):  # fmt: skip
            variable(root, "InspectionStation", name, value, kind)
        result = root.add_object(ua.NodeId("InspectionStation.LastResult", index), ua.QualifiedName("LastResult", index))
        blank = {S: "", D: 0.0, U: 0, N: 0, T: datetime.now(UTC)}
        for name, kind in RESULT.items():
            variable(result, "InspectionStation.LastResult", name, blank[kind], kind)
        return nodes

    def _write(self, values: dict) -> None:
        """Write every value; a value that cannot be written is said once, and the rest still are."""
        for name, value in values.items():
            kind = RESULT.get(name) or {"State": S, "Ready": B, "Reason": S, "Heartbeat": U, "PartsDecided": U}[name]
            try:
                self.nodes[name].write_value(ua.Variant(value, kind))
                self.failing.discard(name)
            except Exception as exc:
                if name not in self.failing:
                    note(f"OPC UA: {name} could not be written ({type(exc).__name__}: {exc})", "station")
                self.failing.add(name)

    def ready(self, ready: bool, reason: str, fault: str = "") -> None:
        state = "Operational" if ready else ("Halted" if fault == "stopped" else "Error")
        self.state = {"State": state, "Ready": ready, "Reason": reason}
        self.results.put(dict(self.state))

    def post(self, part: Part) -> None:
        latency = (time.perf_counter() - part.arrived) * 1000
        failed = part.reason.startswith(FAILED)  # no decision was made: undecided, not decidable, no model
        self.results.put({
            "PartNumber": part.number, "CreationTime": datetime.now(UTC), "ResultState": 4 if failed else 1,
            "ResultEvaluation": EVALUATION[part.signal], "ResultCode": RESULT_CODES.get(part.decision, 4),
            "Decision": part.decision, "Signal": part.signal, "Reason": part.reason,
            "DefectProbability": part.defect_probability if part.defect_probability is not None else float("nan"),
            "AnomalyScore": part.anomaly if part.anomaly is not None else float("nan"),
            "ProcessingDuration": latency, "PartsDecided": part.number, "ResultId": part.name,
        })  # fmt: skip  # ResultId last: a client watching it reads a whole result

    def _work(self) -> None:
        beat, last, hung = 0, time.monotonic(), False
        while not self.stopping.is_set() or not self.results.empty():
            try:
                self._write(self.results.get(timeout=0.2))
            except queue.Empty:
                pass
            alive = self.alive()
            if alive == hung:  # the station's loop stopped turning, or turns again: a hung station is not ready
                hung = not alive
                self._write(
                    {"State": "Error", "Ready": False, "Reason": "the station's loop is not turning"} if hung else self.state
                )
            if time.monotonic() - last >= 1.0 and alive:
                beat, last = beat + 1, time.monotonic()
                self._write({"Heartbeat": beat})

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stopping.set()
        self.worker.join(5)

        async def cancel_sessions():  # a connected client's session tasks, else "Task was destroyed but it is pending"
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.server.tloop.post(self.server.aio_obj.stop())
            self.server.tloop.post(cancel_sessions())
        finally:
            self.server.tloop.stop()
