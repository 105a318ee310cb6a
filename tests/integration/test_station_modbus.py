"""The station's Modbus link on its own, against pymodbus's client as the PLC: what the PLC reads when the station's
loop hangs, when a part has no probability, and when the PLC never releases its acknowledge."""

from __future__ import annotations

import time

import pytest

from casting_inspection.serving.station.modbus import ModbusOutput
from casting_inspection.serving.station.parts import Part
from line_servers import free_port

pytestmark = pytest.mark.slow


def part(number: int, decision: str, probability: float | None) -> Part:
    return Part(number, f"p{number}.jpg", decision, "", probability, None, 0.5, "v", "t", 0, time.perf_counter(), b"", "0")


@pytest.fixture
def link():
    from pymodbus.client import ModbusTcpClient

    output = ModbusOutput("127.0.0.1", free_port(), ack_timeout=0.3)
    output.ready(True, "")
    client = ModbusTcpClient("127.0.0.1", port=output.port, timeout=0.5, retries=0)
    yield output, client
    client.close()
    output.close()


def read(client) -> list[int]:
    return client.read_holding_registers(0, count=11, device_id=1).registers


def settle(client, condition, seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while not condition(registers := read(client)):
        if time.monotonic() > deadline:
            raise AssertionError(f"registers {registers}")
        time.sleep(0.01)
    return registers


def test_a_hung_station_is_not_ready_and_its_heartbeat_stops(link):
    output, client = link
    settle(client, lambda r: r[0] & 1)  # ready
    output.alive = lambda: False  # the loop that decides parts stopped turning
    registers = settle(client, lambda r: not r[0] & 1)
    assert registers[3] == 5 and registers[0] & 32  # fault: station hung
    beat = read(client)[0] & 64
    time.sleep(1.3)
    assert read(client)[0] & 64 == beat  # no heartbeat


def test_a_part_without_a_probability_is_signalled_and_the_link_goes_on(link):
    output, client = link
    output.post(part(1, "not_a_part", float("nan")))
    registers = settle(client, lambda r: r[0] & 2)
    assert registers[1:5] == [1, 4, 0, 0xFFFF] and registers[0] & 8  # NG, no probability
    client.write_register(10, 2, device_id=1)
    settle(client, lambda r: not r[0] & 2)
    client.write_register(10, 0, device_id=1)
    output.post(part(2, "ok", 0.01))
    registers = settle(client, lambda r: r[0] & 2 and r[1] == 2)
    assert registers[0] & 4 and registers[4] == 100  # OK, probability 0.01


def test_once_acknowledged_no_result_is_left_to_be_read_as_ok(link):
    output, client = link
    output.post(part(1, "ok", 0.01))
    registers = settle(client, lambda r: r[0] & 2)
    assert registers[0] & 4 and registers[2] == 1 and registers[4] == 100  # OK, shown
    client.write_register(10, 2, device_id=1)
    registers = settle(client, lambda r: not r[0] & 2 and r[4] == 0xFFFF)
    assert registers[2] == 0 and not registers[0] & 4  # no result code, no OK bit: a PLC reading late sees nothing
    assert registers[1] == 1  # the last part's number stays, to match the log


def test_an_acknowledge_never_released_stops_the_line(link):
    output, client = link
    output.post(part(1, "defective", 0.99))
    settle(client, lambda r: r[0] & 2)
    client.write_register(10, 2, device_id=1)  # acknowledged, and the bit left set
    output.post(part(2, "ok", 0.01))
    registers = settle(client, lambda r: r[3] == 3)
    assert not registers[0] & 1 and not registers[0] & 2  # not ready; part 2 waits, not shown as valid
    client.write_register(10, 0, device_id=1)
    registers = settle(client, lambda r: r[0] & 2 and r[1] == 2)
    assert registers[0] & 4 and registers[3] == 0


def test_an_acknowledge_already_set_does_not_take_a_result_the_plc_never_saw(link):
    output, client = link
    client.write_register(10, 2, device_id=1)  # left set (a PLC restarted mid-handshake)
    time.sleep(0.05)
    output.post(part(1, "defective", 0.99))
    registers = settle(client, lambda r: r[0] & 2)  # shown, and stays shown: the stale bit acknowledges nothing
    time.sleep(0.1)
    assert read(client)[0] & 2 and registers[1] == 1 and output.acknowledged == 0
    client.write_register(10, 0, device_id=1)
    time.sleep(0.05)  # a PLC's scan: the station polls every 2 ms
    client.write_register(10, 2, device_id=1)  # a real acknowledge: low, then high
    settle(client, lambda r: not r[0] & 2)
    assert output.acknowledged == 1


def test_only_the_control_register_takes_writes_and_no_result_is_shown_before_the_first(link):
    """A client that writes the status registers (a misconfigured HMI) would make a station that cannot decide look
    ready, or a part look ok: refused, and the registers stay the station's."""
    output, client = link
    output.ready(False, "the model cannot load", "model")
    before = settle(client, lambda r: r[3] == 2)  # fault: model not loaded
    assert before[4] == 0xFFFF  # no probability before the first result
    for address, values in ((0, [5, 77, 1, 0, 0, 0]), (4, [9999]), (11, [1])):
        assert client.write_registers(address, values, device_id=1).isError()
    assert client.write_coil(0, True, device_id=1).isError()
    time.sleep(0.1)
    assert read(client)[:6] == before[:6] and not read(client)[0] & 1  # still not ready, fault 2


def test_a_trigger_pulse_shorter_than_a_poll_is_one_part(link):
    """A PLC sets and clears its trigger bit back to back: every edge is one trigger, none lost between two polls."""
    output, client = link
    for _ in range(20):
        client.write_register(10, 1, device_id=1)
        client.write_register(10, 0, device_id=1)
    time.sleep(0.05)
    taken = 0
    while output.take_trigger(float("inf")) is not None:
        taken += 1
    assert taken == 20
