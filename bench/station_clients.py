"""The line's side of bench_station.py, in a process of its own (as a PLC, a SCADA and a MES are other machines):
a PLC polling Modbus every 2 ms and acknowledging each result, an OPC UA client subscribed to each result, an MQTT
subscriber. Each writes `protocol part seconds` per result received to OUT (seconds: time.perf_counter(), the
system's monotonic clock, which the station's process shares), until SIGTERM.

    python bench/station_clients.py MODBUS_PORT OPCUA_URL MQTT_PORT OUT
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt
from asyncua.sync import Client
from pymodbus.client import ModbusTcpClient

for noisy in ("asyncua", "pymodbus"):  # their reconnect chatter when the station stops first
    logging.getLogger(noisy).setLevel(logging.CRITICAL)
stop = threading.Event()
received: list[str] = []


def plc(port: int) -> None:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=0.5, retries=0)
    acknowledging = False
    while not stop.is_set():
        try:
            status, number = client.read_holding_registers(0, count=2, device_id=1).registers
        except Exception:  # not up yet
            time.sleep(0.05)
            continue
        if status & 2 and not acknowledging:
            received.append(f"modbus {number} {time.perf_counter()}")
            client.write_register(10, 2, device_id=1)
            acknowledging = True
        elif acknowledging and not status & 2:
            client.write_register(10, 0, device_id=1)
            acknowledging = False
        time.sleep(0.002)


class OpcUa:
    def __init__(self, url: str):
        for _ in range(200):
            try:
                self.client = Client(url, timeout=2)
                self.client.connect()
                break
            except Exception:
                self.client.tloop.stop()
                time.sleep(0.1)
        index = self.client.get_namespace_index("urn:casting-inspection")
        self.number = self.client.get_node(f"ns={index};s=InspectionStation.LastResult.ResultId")
        self.client.create_subscription(5, self).subscribe_data_change(self.number)

    def datachange_notification(self, node, value, data) -> None:
        if value:  # the photo's name ends in the part number
            received.append(f"opcua {int(value.rsplit('-', 1)[1].split('.')[0])} {time.perf_counter()}")

    def status_change_notification(self, status) -> None:
        pass  # the station stops its server at the video's end


def mes(port: int) -> mqtt.Client:
    import json

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-mes", clean_session=False)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("casting-inspect/+/parts", qos=1)
    client.on_message = lambda c, u, m: received.append(f"mqtt {json.loads(m.payload)['part']} {time.perf_counter()}")
    client.connect_async("127.0.0.1", port)
    client.loop_start()
    return client


if __name__ == "__main__":
    modbus_port, url, mqtt_port, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=plc, args=(modbus_port,), daemon=True).start()
    subscriber = mes(mqtt_port)
    scada = OpcUa(url)
    print("ready", flush=True)
    stop.wait()
    with open(out, "w") as f:
        f.write("\n".join(received) + "\n")
    subscriber.loop_stop()
    scada.client.disconnect()
