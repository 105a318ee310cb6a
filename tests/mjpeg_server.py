"""A network camera for the tests: `python mjpeg_server.py VIDEO PORT` serves VIDEO's frames, looped, at its frame
rate as an MJPEG stream (multipart/x-mixed-replace) on http://127.0.0.1:PORT/stream, until killed."""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2


def frames(video: str) -> tuple[list[bytes], float]:
    capture = cv2.VideoCapture(video)
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    out = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return out, fps
        out.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())


class Stream(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        start, n = time.monotonic(), 0
        while True:
            jpeg = FRAMES[n % len(FRAMES)]
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n")
            n += 1
            time.sleep(max(0.0, start + n / FPS - time.monotonic()))

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    FRAMES, FPS = frames(sys.argv[1])
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Stream).serve_forever()
