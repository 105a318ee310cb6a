"""`casting-inspect station`: a camera's frames in, one decision per part, signals out, every part recorded.

The loop: a frame arrives (sources.FrameReader); the trigger finds the parts in it (trigger.PartTrigger), or the
PLC's trigger bit asks for this frame; each part to decide is cut out, encoded as the JPEG that is filed, and
decided by the same Inspector as predict, serve and watch; its signal goes to every output at once (Modbus,
OPC UA, MQTT); then its photo and row are recorded as `watch` records them, and the line's health is updated.

Fail safe: a camera with no frame for `stall_seconds`, or a model that cannot load, makes the station not ready
on every output, with the reason in one line; parts in view then are reported undecided (NG). A frame that
cannot be decided is NG with its reason. The model is loaded again every few seconds until it loads, and the
camera reconnects by itself; nothing already decided is lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import queue
import threading
import time
from datetime import UTC, datetime

import cv2
import numpy as np

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.text import printable
from casting_inspection.serving.inference import Inspector
from casting_inspection.serving.station.parts import Part
from casting_inspection.serving.station.recorder import Recorder, stamp
from casting_inspection.serving.station.settings import StationSettings
from casting_inspection.serving.station.sources import END, Frame, FrameReader
from casting_inspection.serving.station.telemetry import StationMetrics
from casting_inspection.serving.station.trigger import Event, PartTrigger, Track
from casting_inspection.serving.watch.inbox import note

MODEL_RETRY_SECONDS = 5.0
FORGET_SECONDS = 10.0  # the PLC trigger's freeze check forgets an image it has not seen for this long
JPEG_QUALITY = 95
UNJUDGED_RUN = 5  # parts in a row not judged (undecided, or not a part): the trigger or the view is at fault, not parts
VIEW_DARK, VIEW_FLAT = 0.03, 0.3 / 255  # a whole view's mean grey level (0-1) and spread under which nothing can be seen in
# it: a lamp off, a lens capped, a camera sending black or one constant level. A black rubber belt under a lamp set for
# metal has a mean near 0.09 and its sensor noise a spread near 0.004: both are well above. A backlit view may be white.


class Station:
    def __init__(self, settings: StationSettings, outputs: list, metrics: StationMetrics):
        problem = settings.trigger.problem()
        if problem:
            raise InspectionError(f"{problem}; see casting-inspect station --help")
        if not (settings.stall_seconds > 0 and math.isfinite(settings.stall_seconds)):  # inf: a stall never said
            raise InspectionError(f"--stall must be a number of seconds above 0 (got {settings.stall_seconds})")
        if not 0 <= settings.trigger_delay < 60:
            raise InspectionError(f"--trigger-delay must be at least 0 and under 60 seconds (got {settings.trigger_delay})")
        if settings.trigger_delay and not settings.hardware_trigger:
            raise InspectionError("--trigger-delay applies to the PLC's trigger: add --trigger plc, or leave it out")
        self.settings, self.outputs, self.metrics = settings, outputs, metrics
        self.trigger = PartTrigger(settings.trigger)
        self.recorder = Recorder(settings.out, settings.log_wait, None)
        self.reader = FrameReader(settings.source, realtime=settings.realtime)
        self.inspector: Inspector | None = None
        self.model_problem = "not loaded yet"
        self.next_load = 0.0
        self.counts: dict[str, int] = {}
        self.undecided = 0
        self.unjudged_run = 0  # parts in a row signalled not_a_part (undecided included), none judged between them
        self.first_seen: dict[bytes, list[float]] = {}  # with the PLC's trigger: each recent image's first and last arrival
        self.forgotten_at = 0.0
        self.ready_reason: str | None = "starting"
        self.beat = time.monotonic()  # the loop's last turn: outputs stop their heartbeat when it is older than the stall limit
        for output in outputs:
            output.alive = self.alive

    def alive(self) -> bool:
        """Whether the loop that decides parts is turning: a hung station must not look ready to the PLC."""
        return time.monotonic() - self.beat < self.settings.stall_seconds + 1.0

    def _ready(self, ready: bool, reason: str = "", fault: str = "") -> None:
        """Tell every output; a change is one line for the person at the line."""
        if (None if ready else reason) == self.ready_reason:
            return
        self.ready_reason = None if ready else reason
        note(f"ready ({self.settings.source})" if ready else f"NOT READY: {reason}", "station")
        self.metrics.ready.set(1 if ready else 0)
        for output in self.outputs:
            self._safely(output, "ready", lambda o=output: o.ready(ready, reason, fault))

    @staticmethod
    def _safely(output, what: str, call) -> None:
        """One output's fault is said in one line and never stops the others or the station."""
        try:
            call()
        except Exception as exc:
            note(f"{type(output).__name__}: {what} failed ({type(exc).__name__}: {exc})", "station")

    def _load_model(self) -> None:
        if self.inspector is not None or time.monotonic() < self.next_load:
            return
        try:
            inspector = Inspector(self.settings.model, threads=self.settings.threads)
            self.metrics.model_loaded(inspector)
        except Exception as exc:  # whatever is wrong with the file: not ready, said in one line, tried again
            self.next_load = time.monotonic() + MODEL_RETRY_SECONDS
            self.model_problem = str(exc) if isinstance(exc, InspectionError | OSError) else f"{type(exc).__name__}: {exc}"
            self._ready(False, *self._standing_problem())
            return
        self.recorder.anomaly_threshold = inspector.rule.anomaly_threshold
        self.inspector = inspector

    def run(self, stop: threading.Event) -> int:
        """Until the video ends or `stop` is set; 0, or 3 when a part left the view undecided or the file ended before
        the frames it declares (a video file)."""
        self.recorder.start()
        self._load_model()  # before the first frame: a camera's frames do not wait for it
        self.reader.start()
        ended = False
        try:
            ended = self._loop(stop)
        finally:
            try:
                if not ended:  # stopped, or a fault: a part in view is reported, never dropped
                    self._decide_all(self.trigger.reset("the station stopped while the part was in view"), None)
                self._decide_all(self._unserved_triggers("the station stopped"), None)
                self._ready(False, "the station stopped", "stopped")
            finally:
                self.reader.stop()
                for output in self.outputs:
                    self._safely(output, "close", output.close)
                self.recorder.finish()
                self.metrics.close()
        summary = ", ".join(f"{n} {decision}" for decision, n in sorted(self.counts.items())) or "no parts"
        note(
            f"{summary}; {self.undecided} undecided; {self.reader.index} frames, {self.reader.dropped} dropped",
            "station",
        )
        return 3 if ended and (self.undecided or self.reader.short) else 0

    def _loop(self, stop: threading.Event) -> bool:
        while not stop.is_set():
            self.beat = time.monotonic()
            self._load_model()
            try:
                item = self.reader.frames.get(timeout=min(self.settings.stall_seconds, 0.5))
            except queue.Empty:
                self._maybe_stalled()
                continue
            if item == END:
                self._decide_all(self.trigger.reset("the video ended while the part was in view"), None)
                return True
            if isinstance(item, InspectionError):
                raise item
            self.last_frame = time.monotonic()
            problem = self._line_problem(item)
            if problem:
                self._ready(False, *problem)
            else:
                self._ready(True)
            self.metrics.frames.inc()
            self.metrics.dropped.set(self.reader.dropped)
            self._decide_all(self._frame_events(item), item)
        return False

    def _standing_problem(self) -> tuple[str, str] | None:
        """What stops the line whatever the frames show: the record behind, an output's own fault (a PLC that does not
        acknowledge), or a model that cannot load. It comes before any reason a frame gives, so that one reason is
        said while both last, not two in turn (and the PLC reads one fault code)."""
        behind = self.recorder.behind()
        if behind:
            return behind, "recorder"
        for output in self.outputs:
            problem = output.problem() if hasattr(output, "problem") else None
            if problem:
                return problem
        if self.inspector is None:
            return f"the model cannot load: {self.model_problem}", "model"
        return None

    def _line_problem(self, frame: Frame) -> tuple[str, str] | None:
        """Why the line must stop though frames come: a standing problem, or a view in which no part can be seen.
        Said once, to every output and the metrics."""
        standing = self._standing_problem()
        if standing:
            return standing
        if self.unjudged_run >= UNJUDGED_RUN:
            return (
                f"{UNJUDGED_RUN} parts in a row or more were not judged (undecided or not a part): the trigger cannot follow "
                "the parts or the view is not as trained (a part learnt into the empty view at start, parts too close, the "
                "camera moved); look at the last photos in not_a_part/, empty the view and restart",
                "camera",
            )
        return unusable_view(frame.image) or self._whole_frame_problem(frame)

    def _whole_frame_problem(self, frame: Frame) -> tuple[str, str] | None:
        """With the PLC's trigger the whole frame is the part's photo: one of another shape than a part's would make
        every part not_a_part. Said as the reason the station is not ready, not found part by part."""
        if not self.settings.hardware_trigger or self.inspector is None:
            return None
        height, width = frame.image.shape[:2]
        limit = self.inspector.guard.get("max_aspect")
        if limit is not None and max(width, height) / max(min(width, height), 1) > limit:
            return (
                f"with --trigger plc the whole frame is judged, and a {width}x{height} frame is no part's photo (sides "
                f"over {limit:g} to 1): set the camera's region of interest to a square around the part", "camera"
            )  # fmt: skip
        return None

    def _frame_events(self, frame: Frame) -> list[Event]:
        """A frame that breaks the trigger (an odd format, a resolution change) costs the parts in view, signalled NG
        with the reason, never the station."""
        try:
            return self._events(frame)
        except Exception as exc:
            note(f"frame {frame.index} could not be looked at ({type(exc).__name__}: {exc}); the view is learnt again", "station")
            self.trigger.background = None
            return self.trigger.reset(f"frame {frame.index} could not be looked at")

    last_frame = 0.0

    def _maybe_stalled(self) -> None:
        waited = time.monotonic() - (self.last_frame or self.metrics.started)
        if waited >= self.settings.stall_seconds:
            limit = self.settings.stall_seconds
            stalled = f"the camera stalled: no frame from {self.settings.source} for over {limit:g} s", "camera"
            self._ready(False, *(self._standing_problem() or stalled))
            self._decide_all(self.trigger.reset("the camera stalled while the part was in view"), None)
            self._decide_all(self._unserved_triggers("the camera stalled"), None)

    def _plc(self):
        return next((o for o in self.outputs if hasattr(o, "take_trigger")), None) if self.settings.hardware_trigger else None

    def _unserved_triggers(self, why: str) -> list[Event]:
        """The PLC's triggers no frame answered (a stall, the end): each is a part, signalled NG."""
        events, plc = [], self._plc()
        while plc is not None and plc.take_trigger(float("inf")) is not None:
            self.trigger.parts += 1
            track = Track(self.trigger.parts, (0, 0), (0, 0, 0, 0), -1)
            events.append(Event("undecided", track, None, f"the PLC's trigger came and {why}"))
        return events

    def _events(self, frame: Frame) -> list[Event]:
        if not self.settings.hardware_trigger:
            events = self.trigger.frame(frame.image, frame.index)
            if self.trigger.notice:
                note(f"frame {frame.index}: {self.trigger.notice}", "station")
            return events
        plc = self._plc()
        # a frame read at least trigger_delay after the PLC's edge: set to the camera's latency, no frame exposed before it
        first = self._first_seen(frame)
        edge = plc.take_trigger(frame.arrived - self.settings.trigger_delay) if plc is not None else None
        if edge is None:
            return []
        self.trigger.parts += 1
        track = Track(self.trigger.parts, (0, 0), (0, 0, 0, 0), frame.index)
        if first < edge:  # a sensor's noise alone tells two exposures apart: this image was taken before the trigger
            why = f"its frame is an image the camera first sent {edge - first:.2f} s before the PLC's trigger: the camera froze"
            return [Event("undecided", track, frame.image, why)]
        return [Event("decide", track, frame.image)]

    def _first_seen(self, frame: Frame) -> float:
        """When this frame's image first arrived: a frozen camera or stream (one image again, or a few in turn) sends
        images older than the PLC's trigger. Every 16th pixel is enough: a new exposure changes them all."""
        seen = self.first_seen.setdefault(digest(frame.image[::4, ::4]), [frame.arrived, frame.arrived])
        seen[1] = frame.arrived
        if frame.arrived - self.forgotten_at > FORGET_SECONDS:
            self.first_seen = {k: v for k, v in self.first_seen.items() if frame.arrived - v[1] < FORGET_SECONDS}
            self.forgotten_at = frame.arrived
        return seen[0]

    def _decide_all(self, events: list[Event], frame: Frame | None) -> None:
        for event in events:
            part = self._decide(event, frame)
            for output in self.outputs:
                self._safely(output, f"signalling part {part.number}", lambda o=output, p=part: o.post(p))
            self.recorder.record(part)
            self.counts[part.decision] = self.counts.get(part.decision, 0) + 1
            self.undecided += event.kind == "undecided"
            judged = self.inspector is not None  # parts met by no model say nothing of the trigger or the view
            self.unjudged_run = self.unjudged_run + 1 if part.decision == "not_a_part" and judged else 0
            self.metrics.decided(part, time.perf_counter() - part.arrived)
            flag = f"  ({part.reason})" if part.reason else ""
            with contextlib.suppress(OSError):  # a closed terminal or pipe costs the line of text, not the part
                print(printable(f"part {part.number:<6} {part.signal:<6} {part.decision:<10} {part.name}{flag}"), flush=True)

    def _decide(self, event: Event, frame: Frame | None) -> Part:
        image = event.crop if event.crop is not None and event.crop.size else np.zeros((8, 8, 3), np.uint8)
        photo = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
        name = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{event.track.number:06d}.jpg"
        arrived = frame.arrived if frame is not None else time.perf_counter()
        index = frame.index if frame is not None else self.reader.index
        part = Part(event.track.number, name, "not_a_part", event.reason, None, None, 0.0, "", stamp(), index, arrived,
                    photo, hashlib.sha256(photo).hexdigest())  # fmt: skip
        if event.kind == "undecided":
            part.reason = f"undecided: {event.reason}"
        elif self.inspector is None:
            part.reason = f"the model is not loaded ({self.model_problem})"
        else:
            self._inspect(part)
        return part

    def _inspect(self, part: Part) -> None:
        arrays, maps = [], []
        try:
            (result,) = self.inspector.inspect([(part.name, part.photo)], batch_size=1, decoded=arrays, maps=maps)
        except Exception as exc:  # any fault of a frame is this part's NG, never the line's stop
            part.reason = f"could not be decided ({type(exc).__name__}: {exc})"
            return
        part.decision = result.decision or "not_a_part"
        part.reason = f"could not be decided: {result.error}" if result.error else result.why
        part.defect_probability, part.anomaly = result.defect_probability, result.anomaly
        part.threshold, part.model_version = result.threshold, result.model_version
        part.image = arrays[0] if arrays else None
        part.anomaly_map = maps[0] if maps else None


def digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


def unusable_view(image: np.ndarray) -> tuple[str, str] | None:
    """Why no part can be seen in this view (black, or one flat level), or None. Parts passing such a view
    would pass unseen by the software trigger and unjudged by the PLC's: the station is not ready instead."""
    sample = np.asarray(image[::8, ::8], np.float32) / 255  # every 8th pixel: the view's level, cheaply
    mean, spread = float(sample.mean()), float(sample.std())
    if mean < VIEW_DARK:
        return f"the view is dark (mean grey level {mean:.3f}): check the lamp and the lens", "camera"
    if spread < VIEW_FLAT:
        return f"the view is one flat level ({mean:.2f}): check the camera and what covers its lens", "camera"
    return None
