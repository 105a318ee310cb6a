"""MQTT to the MES (paho-mqtt): one JSON message per part on TOPIC with QoS 1, and the station's state, retained,
on casting-inspect/NAME/state (with a last will, so a station that dies shows as offline).

paho keeps every QoS-1 message the broker has not acknowledged, in memory, and sends it again after it reconnects
by itself: a broker restart delays results, it loses none while the station runs (a broker with `persistence true`
keeps them for a subscriber with a persistent session). Results are counted as sent when the broker acknowledges
them; at stop, the station waits a few seconds for the rest and names how many were not confirmed.
"""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt

from casting_inspection.core.errors import InspectionError
from casting_inspection.serving.station.parts import Part
from casting_inspection.serving.watch.inbox import note

CLOSE_SECONDS = 5.0  # at stop, how long unsent results may take to reach the broker
UNREACHED_SECONDS = 5.0  # a broker not reached by then is said, once, while results wait for it


class MqttOutput:
    def __init__(self, host: str, port: int, topic: str, station: str):
        for name, value in (("--mqtt-topic", topic), ("--name", station)):
            if not value or any(c in value for c in "+#\0"):
                raise InspectionError(f"{name} {value!r}: an MQTT topic to publish to has no wildcards (+, #); choose another")
        self.topic, self.station = topic, station
        self.state_topic = f"casting-inspect/{station}/state"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"casting-inspect-{station}", clean_session=False)
        self.client.max_queued_messages_set(0)  # no limit: a result waits for the broker rather than being dropped
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=2)
        offline = json.dumps({"station": station, "ready": False, "reason": "the station is offline"})
        self.client.will_set(self.state_topic, offline, qos=1, retain=True)
        self.client.on_connect = self._connected
        self.client.on_connect_fail = self._not_reached
        self.client.on_disconnect = self._disconnected
        self.client.on_publish = self._acknowledged
        self.connected = False
        self.lock = threading.Lock()
        self.state_lock = threading.Lock()  # a state is published in the order it was set, whichever thread publishes
        self.pending: set[int] = set()  # message ids the broker has not acknowledged
        self.results: set[int] = set()  # which of them are parts' results (the others: the state)
        self.early: set[int] = set()  # acknowledged before publish() returned its id
        self.closed = False
        self.address = f"{host}:{port}"
        self.since, self.said_unreached = time.monotonic(), False
        self.alive = lambda: True  # the station's loop turning (set by the station)
        self.state = {"station": station, "ready": False, "reason": "starting", "fault": ""}
        try:
            self.client.connect_async(host, port, keepalive=10)
        except (OSError, ValueError) as exc:
            raise InspectionError(f"--mqtt {host}:{port}: {exc}") from None
        self.client.loop_start()  # paho's thread calls back from here on: everything they read is set above
        self.watchdog = threading.Thread(target=self._watch, name="mqtt-watchdog", daemon=True)
        self.watchdog.start()

    def _watch(self) -> None:
        """A hung station is not ready for the MES either: paho's own thread would keep its connection, and its will, alive."""
        hung = False
        while not self.closed:
            if not self.connected and not self.said_unreached and time.monotonic() - self.since > UNREACHED_SECONDS:
                self._not_reached(self.client, None)
            alive = self.alive()
            if alive == hung:
                hung = not alive
                state = {**self.state, "ready": False, "reason": "the station's loop is not turning"} if hung else self.state
                self._publish(self.state_topic, json.dumps(state), retain=True)
            time.sleep(0.5)

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            note(f"MQTT broker {self.address} refused the connection ({reason_code}); trying again", "station")
            return
        self.connected, self.said_unreached = True, False
        note(f"MQTT: connected to {self.address}", "station")
        # the broker may hold the last will ("offline") or a state from before it restarted: the state now, retained
        with self.state_lock:
            self._publish(self.state_topic, json.dumps(self.state), retain=True)

    def _not_reached(self, client, userdata) -> None:
        """Said once while the broker cannot be reached: results wait for it in memory, none is dropped."""
        if not self.said_unreached and not self.connected:
            self.said_unreached = True
            note(f"MQTT: cannot reach the broker {self.address}; results wait and are sent once it answers", "station")

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected:
            note(f"MQTT: lost the broker {self.address} ({reason_code}); results are kept and sent on reconnect", "station")
        self.connected, self.since = False, time.monotonic()

    def _acknowledged(self, client, userdata, mid, reason_code, properties) -> None:
        with self.lock:
            if mid in self.pending:
                self.pending.remove(mid)
                self.results.discard(mid)
            else:
                self.early.add(mid)

    def _publish(self, topic: str, payload: str, retain: bool = False, result: bool = False) -> None:
        info = self.client.publish(
            topic, payload, qos=1, retain=retain
        )  # not under our lock: paho calls on_publish under its own
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued until the broker is back
            note(f"MQTT: a message to {topic} could not be queued ({mqtt.error_string(info.rc)})", "station")
            return
        with self.lock:
            if info.mid in self.early:
                self.early.remove(info.mid)
            else:
                self.pending.add(info.mid)
                if result:
                    self.results.add(info.mid)

    def ready(self, ready: bool, reason: str, fault: str = "") -> None:
        with self.state_lock:
            self.state = {"station": self.station, "ready": ready, "reason": reason, "fault": fault}
            self._publish(self.state_topic, json.dumps(self.state), retain=True)

    def post(self, part: Part) -> None:
        latency = (time.perf_counter() - part.arrived) * 1000
        self._publish(self.topic, json.dumps(part.message(self.station, latency)), result=True)

    def close(self) -> None:
        """Send what is queued (for up to CLOSE_SECONDS), then disconnect."""
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + CLOSE_SECONDS
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        unsent = len(self.results)  # the state messages are not results
        if unsent:
            note(f"MQTT: {unsent} results not confirmed by {self.address} at stop; they are in the station's log", "station")
        self.client.disconnect()
        self.client.loop_stop()
