"""The software trigger: find each part in a camera's frames and pick the one frame it is decided on.

A frame is compared with the empty view (learnt from the first frame and from every frame with no part,
so a lamp that slowly ages is followed). What differs is a part; parts are tracked from frame to frame by
their centres. A part is decided once, on the first frame in which it is wholly in view, centred and still
enough to be sharp; a part that only passes through the centre (a conveyor that never stops) is decided on its
best-centred frame once it moves away from the centre. A part never wholly in view and centred is reported
undecided, never dropped.
Frames with no part are never decided: empty belt between parts is not `not_a_part` noise. When most of the
view changes at once (the hall's lights, the exposure, a bumped camera), or something stays in view longer than
`dwell` frames (a part left there at start, learnt as belt), the empty view is learnt again from that frame,
and the parts in view are reported undecided.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from casting_inspection.serving.station.settings import TriggerSettings


@dataclasses.dataclass
class Track:
    """One part while it is in view."""

    number: int
    centre: tuple[float, float]  # in analysed pixels
    box: tuple[int, int, int, int]  # x, y, w, h in the frame's own pixels
    first_frame: int
    decided: bool = False
    wholly_seen: bool = False
    velocity: tuple[float, float] = (0.0, 0.0)  # its last move between two frames, in analysed pixels
    best: tuple[float, np.ndarray] | None = None  # its best-centred whole frame so far: (distance from the centre, crop)
    last_crop: np.ndarray | None = None  # the part as last seen wholly in view, for the record of an undecided part


@dataclasses.dataclass
class Event:
    """What the trigger asks the station to do: decide a part on `crop`, or report it undecided."""

    kind: str  # "decide" or "undecided"
    track: Track
    crop: np.ndarray | None
    reason: str = ""


CHANGED = 0.85  # more of the frame than this differs from the empty view: not parts, the view itself changed


def _grey(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    if frame.shape[2] == 1:
        return frame[..., 0]
    return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY)


class PartTrigger:
    notice: str | None = None  # a change of the empty view this frame brought, for the station to say

    def __init__(self, settings: TriggerSettings):
        self.settings = settings
        self.background: np.ndarray | None = None  # the empty view at the analysed width
        self.full: np.ndarray | None = None  # and at the frame's own size, where each part's edges are found
        self.tracks: list[Track] = []
        self.parts = 0  # parts seen so far

    def _analysed(self, gray: np.ndarray) -> tuple[np.ndarray, float]:
        scale = self.settings.width / gray.shape[1]
        small = cv2.resize(gray, (self.settings.width, max(1, round(gray.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        return small.astype(np.float32), scale

    def _edges(self, gray: np.ndarray, box: tuple[int, int, int, int], pad: int) -> tuple[int, int, int, int]:
        """The part's box at the frame's own size: the analysed box, grown by `pad`, shrunk to where the frame
        differs from the empty view (a photo cut a few pixels too wide would show the belt as a seam)."""
        x, y, w, h = box
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(gray.shape[1], x + w + pad), min(gray.shape[0], y + h + pad)
        differs = cv2.absdiff(gray[y0:y1, x0:x1].astype(np.float32), self.full[y0:y1, x0:x1]) > self.settings.difference
        cols = np.flatnonzero(differs.sum(axis=0) >= 2)
        rows = np.flatnonzero(differs.sum(axis=1) >= 2)
        if not len(cols) or not len(rows):
            return box
        return x0 + int(cols[0]), y0 + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)

    def _blobs(self, small: np.ndarray) -> list[tuple[tuple[float, float], tuple[int, int, int, int]]]:
        """(centre, box) of each region that differs from the empty view, in analysed pixels. Outer outlines only:
        a part's dark hub that matches the belt is a hole in it, and what shows inside that hole is the same part."""
        mask = (cv2.absdiff(small, self.background) > self.settings.difference).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # sensor noise out
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))  # a part's dark patches back in
        self.covered = float(mask.mean())
        outlines, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        least, blobs = self.settings.min_area * mask.size, []
        for outline in outlines:
            moments = cv2.moments(outline)
            if moments["m00"] >= max(least, 1):
                blobs.append(((moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]), cv2.boundingRect(outline)))
        return blobs

    def reset(self, reason: str) -> list[Event]:
        """Forget the parts in view (the camera stalled, the station stops): those not decided are reported. A decided
        part still there when frames come back is decided again: a second result, never a part lost."""
        ended = [Event("undecided", t, t.last_crop, reason) for t in self.tracks if not t.decided]
        self.tracks = []
        return ended

    def _relearn(self, small: np.ndarray, gray: np.ndarray, why: str, keep: bool = False) -> list[Event]:
        """This frame becomes the empty view, and `notice` says why. With `keep`, the parts in view stay tracked and
        the belt under each is filled in from the belt around them (so none of them turns into belt, and none leaves
        a phantom part behind when it moves on); else they are reported undecided (NG)."""
        self.notice = f"{why}: the empty view is learnt again from this frame" if why else None
        if keep and self.tracks:
            scale = small.shape[1] / gray.shape[1]
            self.background = _belt_under(small.astype(np.float32), [_scaled(t.box, scale) for t in self.tracks])
            self.full = _belt_under(gray.astype(np.float32), [t.box for t in self.tracks])
            return []
        self.background, self.full = small.copy(), gray.astype(np.float32)
        return self.reset(f"{why} while the part was in view") if self.tracks else []

    def frame(self, frame: np.ndarray, index: int) -> list[Event]:
        """The events this frame brings: parts to decide on it, and parts that left the view undecided."""
        self.notice = None
        gray = _grey(frame)
        small, scale = self._analysed(gray)
        if self.background is None or self.background.shape != small.shape or self.full.shape != gray.shape:
            return self._relearn(small, gray, "the camera's view changed size" if self.background is not None else "")
        blobs = self._blobs(small)
        if self.covered > CHANGED:
            why = "most of the view changed at once (the light, the exposure, or the camera moved)"
            self._relearn(small, gray, why, keep=True)
            blobs = self._blobs(small)
        elif any(
            index - t.first_frame > self.settings.dwell and t.velocity == (0.0, 0.0) for t in self.tracks if t.first_frame >= 0
        ):
            return self._relearn(small, gray, f"something that never moved stayed in view over {self.settings.dwell} frames")
        if not blobs and self.settings.learn:
            cv2.accumulateWeighted(small, self.background, self.settings.learn)
            cv2.accumulateWeighted(gray.astype(np.float32), self.full, self.settings.learn)
        self.gray = gray
        matched = self._match(blobs)
        events = [
            self._on_best(t)
            if t.best is not None
            else Event("undecided", t, t.last_crop, "left the view before a whole, centred frame")
            for t in self.tracks
            if t not in matched.values() and not t.decided
        ]
        self.tracks = []
        for (centre, box), track in matched.items():
            events += self._follow(frame, small.shape, scale, centre, box, track, index)
        return events

    def _match(self, blobs) -> dict:
        """Each blob with a track, or a new track. A small blob beside or inside a larger one this frame is a piece
        of it (a dark patch cut it off at the frame's edge). Pairs are taken nearest first, a track's distance being
        to where it is or to where its last move would take it: parts that move on together (an indexing conveyor)
        keep their own tracks."""
        whole = []
        for centre, box in sorted(blobs, key=lambda b: -b[1][2] * b[1][3]):
            if not any(_near(centre, other) for _, other in whole):
                whole.append((centre, box))
        pairs = sorted(
            (_distance(track, centre), i, j) for i, (centre, _) in enumerate(whole) for j, track in enumerate(self.tracks)
        )
        limit, matched, taken = self.settings.jump * self.settings.width, {}, set()
        for distance, i, j in pairs:
            if distance <= limit and whole[i] not in matched and j not in taken:
                matched[whole[i]] = self.tracks[j]
                taken.add(j)
        for blob in whole:
            if blob not in matched:
                self.parts += 1
                matched[blob] = Track(self.parts, blob[0], blob[1], first_frame=-1)
        return matched

    def _follow(self, frame, shape, scale, centre, box, track: Track, index: int) -> list[Event]:
        height, width = shape
        x, y, w, h = box
        whole = x > 0 and y > 0 and x + w < width and y + h < height
        moved = np.hypot(track.centre[0] - centre[0], track.centre[1] - centre[1]) / width
        fresh = track.first_frame < 0
        off = np.hypot(centre[0] - width / 2, centre[1] - height / 2) / width
        step = (centre[0] - track.centre[0], centre[1] - track.centre[1])
        if not fresh and np.hypot(*step) > 1:  # a move (a stop keeps the last one: the conveyor's way)
            track.velocity = step
        track.centre = centre
        track.box = self._edges(self.gray, tuple(round(v / scale) for v in box), pad=int(np.ceil(2 / scale)))
        if fresh:
            track.first_frame = index
        self.tracks.append(track)
        if not whole:
            if not track.wholly_seen:  # the best record of a part that may leave undecided
                track.last_crop = crop(frame, track.box, self.settings.margin)
            return []
        track.wholly_seen = True
        track.last_crop = crop(frame, track.box, self.settings.margin)
        if track.decided:
            return []
        if off <= self.settings.centre and not fresh and moved <= self.settings.motion:
            track.decided = True
            return [Event("decide", track, track.last_crop)]
        if track.best is not None and off > track.best[0]:  # it passed the centre without standing still
            return [self._on_best(track)]
        if off <= self.settings.centre:  # centred but moving, or seen for the first time: the best so far
            track.best = (off, track.last_crop)
        return []

    @staticmethod
    def _on_best(track: Track) -> Event:
        """A part on a conveyor that never stops is decided on its best-centred frame (a blurred one is the guard's)."""
        track.decided = True
        return Event("decide", track, track.best[1], "moving: decided on its best-centred frame")


def _scaled(box: tuple[int, int, int, int], scale: float) -> tuple[int, int, int, int]:
    return tuple(int(round(v * scale)) for v in box)


def _belt_under(view: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """`view` with each box (grown by a few pixels) filled with the median of the view outside every box."""
    covered = np.zeros(view.shape, bool)
    for x, y, w, h in boxes:
        grow = max(2, w // 20)
        covered[max(0, y - grow) : y + h + grow, max(0, x - grow) : x + w + grow] = True
    if covered.all():
        return view
    view[covered] = float(np.median(view[~covered]))
    return view


def _distance(track: Track, centre: tuple[float, float]) -> float:
    here = np.hypot(track.centre[0] - centre[0], track.centre[1] - centre[1])
    moved = np.hypot(track.centre[0] + track.velocity[0] - centre[0], track.centre[1] + track.velocity[1] - centre[1])
    return float(min(here, moved))


def _near(centre: tuple[float, float], box: tuple[int, int, int, int], reach: int = 4) -> bool:
    x, y, w, h = box
    return x - reach <= centre[0] <= x + w + reach and y - reach <= centre[1] <= y + h + reach


def crop(frame: np.ndarray, box: tuple[int, int, int, int], margin: float) -> np.ndarray:
    """The square around the part (as the data set's photos frame it), cut at the frame's edges: a view of the
    frame, not a copy (it is taken on every frame a part is seen, and encoded only once)."""
    x, y, w, h = box
    side = round(max(w, h) * (1 + margin))
    cx, cy = x + w / 2, y + h / 2
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    return frame[top : top + side, left : left + side]
