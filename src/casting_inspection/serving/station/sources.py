"""Where a station's frames come from: a video file, an RTSP or HTTP (MJPEG) stream or a local camera through
OpenCV's FFmpeg decoder, or a GenICam / GigE Vision camera through `harvesters` and the vendor's GenTL producer.

Frames are read in a thread of their own, so that a stalled stream never blocks the station: it sees no frame
for a while and signals "not ready". A live source keeps only the newest frames (the ones it had no time for
are counted as dropped) and reconnects by itself; a video file is read whole, every frame decided.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from casting_inspection.core.errors import InspectionError
from casting_inspection.serving.watch.inbox import note

STREAM = re.compile(r"^(rtsp|rtsps|http|https)://", re.IGNORECASE)
END = "end"  # the video file is over
TIMEOUT_MS = 3000  # FFmpeg gives up opening or reading a silent stream after this long, then we reconnect
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own lines: the station says what happened, once
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@dataclasses.dataclass(frozen=True)
class Frame:
    index: int
    arrived: float  # time.perf_counter() when the frame was read: latency counts from here
    image: np.ndarray  # BGR (or grey) uint8


class _OpenCV:
    def __init__(self, source: str):
        if source.isdigit() or source.startswith("/dev/video"):
            target = int(source) if source.isdigit() else source
            self.capture = cv2.VideoCapture(target)
        else:
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, TIMEOUT_MS]
            self.capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG, timeouts)
        if not self.capture.isOpened():
            self.capture.release()
            raise OSError("cannot be opened (no such file, device or stream, or a format FFmpeg cannot decode)")
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or 0.0
        self.declared = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # a file's own count (0: none)

    def read(self) -> np.ndarray | None:
        ok, frame = self.capture.read()
        return frame if ok else None

    def release(self) -> None:
        self.capture.release()


class _GenICam:
    """A GenICam camera through harvesters; `genicam:PRODUCER.cti` or `genicam:PRODUCER.cti#SERIAL`."""

    fps, declared = 0.0, 0

    def __init__(self, source: str):
        try:
            from harvesters.core import Harvester
        except ImportError:
            raise InspectionError(
                "a GenICam camera needs the harvesters package (pip install 'casting-inspection[genicam]') "
                "and the camera vendor's GenTL producer (.cti file)"
            ) from None
        producer, _, serial = source.removeprefix("genicam:").partition("#")
        if not Path(producer).is_file():
            raise InspectionError(f"{producer}: no GenTL producer there; install the camera vendor's SDK and name its .cti file")
        self.harvester = Harvester()
        self.harvester.add_file(producer)
        self.harvester.update()
        if not self.harvester.device_info_list:
            self.harvester.reset()
            raise OSError(f"no camera found by the GenTL producer {producer}")
        self.camera = self.harvester.create({"serial_number": serial} if serial else 0)
        self.camera.start()

    def read(self) -> np.ndarray | None:
        try:
            with self.camera.fetch(timeout=TIMEOUT_MS / 1000) as buffer:
                part = buffer.payload.components[0]
                return _genicam_image(part.data_format, part.data, part.height, part.width)
        except InspectionError:
            raise
        except Exception:  # harvesters raises the GenTL producer's own timeout and transport errors
            return None

    def release(self) -> None:
        self.camera.destroy()
        self.harvester.reset()


GENICAM_FORMATS = ("Mono8", "Mono10", "Mono12", "Mono14", "Mono16", "RGB8", "BGR8")


def _genicam_image(pixel_format: str, data: np.ndarray, height: int, width: int) -> np.ndarray:
    """A camera's buffer as an 8-bit grey or BGR frame: Mono10 to Mono16 scaled down to 8 bits, RGB8 turned to
    BGR. Any other pixel format (Bayer, packed, YUV) is refused by name rather than decided as noise."""
    if pixel_format not in GENICAM_FORMATS:
        raise InspectionError(f"GenICam pixel format {pixel_format}: set the camera to one of {', '.join(GENICAM_FORMATS)}")
    if pixel_format.startswith("Mono"):
        bits = int(pixel_format[4:])
        return (np.asarray(data).reshape(height, width) >> (bits - 8)).astype(np.uint8)
    image = np.asarray(data, dtype=np.uint8).reshape(height, width, 3)
    return np.ascontiguousarray(image[..., ::-1] if pixel_format == "RGB8" else image)


def is_live(source: str) -> bool:
    return not Path(source).is_file()


def open_source(source: str):
    """The capture for a source string; OSError when it cannot be opened now (a stream may come back)."""
    if source.startswith("genicam:"):
        return _GenICam(source)
    if not is_live(source) or STREAM.match(source) or source.isdigit() or source.startswith("/dev/video"):
        return _OpenCV(source)
    raise InspectionError(
        f"{source}: not a video file, stream URL (rtsp://, http://), camera device (0, /dev/video0) or genicam:PRODUCER.cti"
    )


class FrameReader(threading.Thread):
    """Reads frames into a queue; a live source's (or a file played in real time) holds the newest two, the rest
    counted in `dropped`."""

    def __init__(self, source: str, realtime: bool = False, reconnect_seconds: float = 1.0):
        super().__init__(name="frame-reader", daemon=True)
        self.source, self.live, self.realtime = source, is_live(source), realtime
        self.drops = self.live or realtime  # a camera does not wait for the station: a file played in real time neither
        self.reconnect_seconds = reconnect_seconds
        self.frames: queue.Queue = queue.Queue(maxsize=2 if self.drops else 8)
        self.stopping = threading.Event()
        self.dropped = 0
        self.reconnects = 0
        self.connected = threading.Event()
        self.index = 0

    def stop(self, wait: float = 5.0) -> None:
        """Stop, and wait for the thread to leave the camera's read: a thread still inside OpenCV's or a camera SDK's
        code when the interpreter ends aborts the process."""
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(wait)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                capture = self._connect()
                if capture is None:
                    return
                try:
                    self._read_all(capture)
                except InspectionError:
                    raise  # a camera set up wrongly (its pixel format): said, not retried
                except Exception as exc:  # a decoder's or a camera SDK's own error: a live source reconnects
                    if not self.live:
                        raise InspectionError(f"{self.source}: cannot be read ({type(exc).__name__}: {exc})") from None
                    note(f"{self.source}: the camera failed ({type(exc).__name__}: {exc}); reconnecting", "station")
                    self.stopping.wait(self.reconnect_seconds)
                    continue
                if not self.live:
                    if not self.stopping.is_set():  # stopped on purpose is not cut short
                        self._check_length(capture.declared)
                    self._put(END)
                    return
                self.connected.clear()
                note(f"{self.source}: the stream stopped; reconnecting", "station")
        except InspectionError as exc:
            self._put(exc)

    def _check_length(self, declared: int) -> None:
        """A file that ends before the frames it declares was cut short: the frames past the cut are named, not lost
        without a word."""
        if declared > self.index:
            self.short = f"{self.source}: ended after {self.index} of the {declared} frames it declares (cut short?)"
            note(self.short, "station")

    short: str | None = None

    def _connect(self):
        while not self.stopping.is_set():
            try:
                capture = open_source(self.source)
                self.connected.set()
                return capture
            except InspectionError:
                raise
            except Exception as exc:  # OSError, or the camera SDK's own: a live source tries again
                if not self.live:
                    raise InspectionError(f"{self.source}: {exc}") from None
                note(f"{self.source}: {exc}; trying again in {self.reconnect_seconds:g} s", "station")
                self.reconnects += 1
                self.stopping.wait(self.reconnect_seconds)
        return None

    def _read_all(self, capture) -> None:
        start, fps = time.perf_counter(), capture.fps
        try:
            while not self.stopping.is_set():
                if self.realtime and fps > 0:
                    self.stopping.wait(max(0.0, start + self.index / fps - time.perf_counter()))
                image = capture.read()
                if image is None:
                    return
                self._put(Frame(self.index, time.perf_counter(), image))
                self.index += 1
        finally:
            capture.release()

    def _put(self, item) -> None:
        while not self.stopping.is_set():
            try:
                self.frames.put(item, timeout=0.1) if not self.drops or not isinstance(item, Frame) else self._put_newest(item)
                return
            except queue.Full:
                continue

    def _put_newest(self, frame: Frame) -> None:
        """A live camera does not wait for the station: the oldest waiting frame makes room."""
        try:
            self.frames.put_nowait(frame)
        except queue.Full:
            try:
                self.frames.get_nowait()
                self.dropped += 1
            except queue.Empty:
                pass
            self.frames.put_nowait(frame)
