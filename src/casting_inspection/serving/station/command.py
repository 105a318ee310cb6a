"""The `casting-inspect station` command: its options, checked, and the station with its outputs started."""

from __future__ import annotations

import argparse
import math
import signal
import threading
from pathlib import Path

from casting_inspection.core.errors import InspectionError

DESCRIPTION = (
    "Decide each part a camera sees, once, and signal it to the line: Modbus TCP (a PLC), OPC UA, MQTT (a MES); "
    "record its photo and decision in OUT as `watch` does (so review and import-line work on it); the line's health "
    "on a Prometheus endpoint. SOURCE: a video file, rtsp:// or http:// stream, camera device (0, /dev/video0), or "
    "genicam:PRODUCER.cti[#SERIAL]. Exit status: 0 a video file's end; 130 stopped (SIGTERM, Ctrl-C); 3 a part of a "
    "video file left the view undecided, or the file ended before the frames it declares; 1 an error. Only `ok` is signalled OK: a stall, a model that cannot load or a missing acknowledge "
    "makes the station not ready, and a part it cannot decide is NG."
)


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:1883)")
    return host.strip("[]"), int(port)


def add_station(commands, common) -> None:
    from casting_inspection.serving.station.settings import TriggerSettings

    d = TriggerSettings()
    sub = commands.add_parser(
        "station", help="a camera stream in, one decision per part, signals to the PLC and MES", description=DESCRIPTION
    )
    sub.add_argument("source", help="video file, rtsp:// or http:// URL, camera device, or genicam:PRODUCER.cti[#SERIAL]")
    sub.add_argument(
        "--out",
        type=Path,
        default=Path("station"),
        help="where ok/, defective/, review/, not_a_part/ and the log go (default: station)",
    )
    sub.add_argument("--name", default="station-1", help="this station's name in every message (default: station-1)")
    sub.add_argument("--modbus", type=address, metavar="HOST:PORT", help="serve Modbus TCP to the PLC here (e.g. 0.0.0.0:502)")
    sub.add_argument("--ack-timeout", type=float, default=1.0, help="seconds the PLC has to acknowledge a result (default: 1)")
    sub.add_argument("--opcua", metavar="URL", help="serve OPC UA here (e.g. opc.tcp://0.0.0.0:4840/casting-inspect)")
    sub.add_argument("--mqtt", type=address, metavar="HOST:PORT", help="publish each part's result to this MQTT broker (QoS 1)")
    sub.add_argument("--mqtt-topic", help="MQTT topic (default: casting-inspect/NAME/parts)")
    sub.add_argument("--metrics", type=address, metavar="HOST:PORT", help="serve Prometheus metrics here (e.g. 127.0.0.1:9108)")
    sub.add_argument("--trigger", choices=["software", "plc"], default="software",
                     help="software: find each part in the frames (default); plc: decide the frame after each Modbus trigger")  # fmt: skip
    sub.add_argument(
        "--trigger-delay", type=float, default=0.0, metavar="SECONDS",
        help="--trigger plc: answer an edge with the first frame read at least this long after it, so a camera or stream "
        "that delivers frames late never answers with one exposed before the edge (default: 0)",
    )  # fmt: skip
    sub.add_argument(
        "--stall", type=float, default=2.0, help="seconds without a frame before the station is not ready (default: 2)"
    )
    sub.add_argument(
        "--realtime", action="store_true", help="play a video file at its frame rate, as a live camera would send it"
    )
    sub.add_argument("--window", type=int, default=200, help="parts in the rolling rates and drift (default: 200)")
    sub.add_argument("--log-wait", type=float, default=60.0, help="seconds to wait for a locked log (default: 60)")
    for name, help_text in (
        ("difference", "grey levels from the empty view that make a pixel part of a part"),
        ("min_area", "the smallest part, as a share of the frame"),
        ("centre", "a part is decided within this share of the frame's width of its centre"),
        ("motion", "most movement between frames (share of the width) for a sharp frame"),
        ("margin", "the photo's side: the part's larger side times (1 + margin)"),
    ):
        kind = int if name == "difference" else float
        sub.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=getattr(d, name), help=f"{help_text} (default: {getattr(d, name)})"
        )
    common(sub)
    sub.set_defaults(run=run_station)


def _outputs(args: argparse.Namespace) -> list:
    """Every output asked for, each started now: a port that is taken stops the station before it runs."""
    outputs = []
    try:
        if args.modbus:
            from casting_inspection.serving.station.modbus import ModbusOutput

            outputs.append(ModbusOutput(*args.modbus, ack_timeout=args.ack_timeout))
        if args.opcua:
            from casting_inspection.serving.station.opcua import OpcUaOutput

            outputs.append(OpcUaOutput(args.opcua, args.name))
        if args.mqtt:
            from casting_inspection.serving.station.mqtt import MqttOutput

            outputs.append(
                MqttOutput(*args.mqtt, topic=args.mqtt_topic or f"casting-inspect/{args.name}/parts", station=args.name)
            )
    except BaseException:
        for output in outputs:
            output.close()
        raise
    return outputs


def run_station(args: argparse.Namespace) -> int:
    from casting_inspection.serving.station.settings import StationSettings, TriggerSettings
    from casting_inspection.serving.station.station import Station
    from casting_inspection.serving.station.telemetry import StationMetrics

    if args.trigger == "plc" and not args.modbus:
        raise InspectionError("--trigger plc needs --modbus: the PLC's trigger comes over Modbus")
    if not (args.ack_timeout > 0 and math.isfinite(args.ack_timeout)):  # inf: a PLC that never answers, never said
        raise InspectionError(f"--ack-timeout must be a number of seconds above 0 (got {args.ack_timeout})")
    if args.window < 1:
        raise InspectionError(f"--window must be at least 1 part (got {args.window})")
    trigger = TriggerSettings(
        difference=args.difference, min_area=args.min_area, centre=args.centre, motion=args.motion, margin=args.margin
    )
    settings = StationSettings(args.source, args.out, args.model, args.name, trigger, args.trigger == "plc", args.stall,
                               args.realtime, args.log_wait, args.window, args.threads, args.trigger_delay)  # fmt: skip
    metrics = StationMetrics(*(args.metrics or ("127.0.0.1", None)), window=args.window)
    try:
        outputs = _outputs(args)
    except BaseException:
        metrics.close()
        raise
    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(signum, frame):  # systemd and `kill` send SIGTERM; Ctrl-C: finish this frame, record, then stop
        stopped_by.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        code = Station(settings, outputs, metrics).run(stop)
    except BaseException:
        for output in outputs:
            output.close()
        metrics.close()
        raise
    return 130 if stopped_by else code
