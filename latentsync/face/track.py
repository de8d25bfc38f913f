"""Follow faces across frames and decide which one is the speaker, frame by frame as the video is
decoded.

Detections are linked into tracks by box overlap (IoU) from frame to frame, so the speaker is
chosen once for a whole shot instead of re-chosen per frame. A scene cut breaks a track; the
speaker's later shots are picked up as further tracks that never appear at the same time as it.

Every rule here is decided from the frames seen so far plus a few after (the first seconds with
faces, for the speaker's first track), so a job can start denoising its first frames while the
rest of the video is still being analysed (`SpeakerChooser.settled`).
"""

from dataclasses import dataclass, field, replace

import numpy as np

MIN_IOU = 0.3  # a detection continues the track whose last box it overlaps at least this much
MAX_GAP = 2  # missed detections inside a track, up to this many frames, are filled by interpolation
SPEAKER_CHOICE_S = 2.0  # the automatic speaker is the largest face of the first seconds with faces
MIN_TRACK_FRAMES = 8  # a face in another shot must last this long to be the speaker again
MIN_RELATIVE_AREA = 0.2  # ... and be at least this share of the speaker's median face area


@dataclass(eq=False)  # a track is itself: compared by identity
class Track:
    """One face followed over consecutive source frames: frame index -> detection, added in frame
    order (missed frames filled in when the track resumes), so the frames form one run."""

    id: int
    faces: dict = field(default_factory=dict)

    @property
    def first(self) -> int:
        return next(iter(self.faces))

    @property
    def last(self) -> int:
        return next(reversed(self.faces))

    def total_area(self) -> float:
        return float(sum(box_area(face.box) for face in self.faces.values()))

    def median_area(self) -> float:
        return float(np.median([box_area(face.box) for face in self.faces.values()]))

    def overlaps(self, other: "Track") -> bool:
        """Whether the two appear on a common frame (each one's frames form one run)."""
        return self.first <= other.last and other.first <= self.last


def box_area(box) -> float:
    x1, y1, x2, y2 = box
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def iou(a, b) -> float:
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Links each frame's detections into tracks as the frames arrive (`add`).

    A detection continues the track whose last box overlaps it most (IoU >= `min_iou`), if that
    track was seen within the last `max_gap` + 1 frames; otherwise it starts a new track. When a
    track resumes after up to `max_gap` missed frames, those are filled by linear interpolation.
    """

    def __init__(self, min_iou: float = MIN_IOU, max_gap: int = MAX_GAP):
        self.min_iou, self.max_gap = min_iou, max_gap
        self.tracks: list[Track] = []
        self.frames = 0  # frames added so far

    def add(self, faces: list) -> list[tuple[Track, int]]:
        """The next frame's detections; returns the (track, frame) faces added, filled gaps included,
        each track's in frame order."""
        frame = self.frames
        active = [t for t in self.tracks if self.alive(t)]
        pairs = sorted(
            ((iou(t.faces[t.last].box, face.box), ti, fi) for ti, t in enumerate(active) for fi, face in enumerate(faces)),
            reverse=True,
        )
        added, used_tracks, used_faces = [], set(), set()
        for overlap, ti, fi in pairs:
            if overlap < self.min_iou or ti in used_tracks or fi in used_faces:
                continue
            added += _continue(active[ti], frame, faces[fi])
            used_tracks.add(ti)
            used_faces.add(fi)
        for fi, face in enumerate(faces):
            if fi not in used_faces:
                self.tracks.append(Track(id=len(self.tracks), faces={frame: face}))
                added.append((self.tracks[-1], frame))
        self.frames += 1
        return added

    def alive(self, track: Track) -> bool:
        """Whether `track` may continue on the next frame."""
        return self.frames - track.last <= self.max_gap + 1


def _continue(track: Track, frame: int, face) -> list[tuple[Track, int]]:
    """Add `face` at `frame` to `track`, the frames it missed since its last face interpolated."""
    before, a = track.last, track.faces[track.last]
    for missed in range(before + 1, frame):
        w = (missed - before) / (frame - before)
        track.faces[missed] = replace(
            a,
            box=tuple((1 - w) * np.asarray(a.box, float) + w * np.asarray(face.box, float)),
            landmarks3=(1 - w) * np.asarray(a.landmarks3, float) + w * np.asarray(face.landmarks3, float),
            score=min(a.score, face.score),
        )
    track.faces[frame] = face
    return [(track, missed) for missed in range(before + 1, frame + 1)]


def build_tracks(detections: list[list], min_iou: float = MIN_IOU, max_gap: int = MAX_GAP) -> list[Track]:
    """Link per-frame detections into tracks (see `Tracker`)."""
    tracker = Tracker(min_iou, max_gap)
    for faces in detections:
        tracker.add(faces)
    return tracker.tracks


class SpeakerChooser:
    """Picks the speaker's tracks as frames arrive (`add`, then `finish` at the video's end).

    1. The first track: with `point=(x, y, frame)` the face containing that point on that frame
       (the nearest one if none contains it); with `box=(x1, y1, x2, y2, frame)` the face
       overlapping that box most on that frame; otherwise the track with the largest summed face
       area over the first `choice_frames` frames from the first frame with a face (large and
       consistently present).
    2. Then, for scene cuts, every other track is added that lasts at least `MIN_TRACK_FRAMES`
       frames without ever appearing at the same time as a chosen one, and whose median face area
       over those frames is at least `MIN_RELATIVE_AREA` of the first track's (at its choice): the
       same person in another shot. Tracks that reach that length on the same frame are taken
       largest first; a track that appears at the same time as a chosen one never is.

    A frame is settled (`settled`) once no rule can change who speaks on it: the first track is
    chosen, no track on it is still undecided, and no missed detection before it can be filled.
    """

    def __init__(self, choice_frames: int, point: tuple | None = None, box: tuple | None = None):
        self.choice_frames, self.point, self.box = choice_frames, point, box
        self.tracker = Tracker()
        self.chosen: list[Track] = []
        self.undecided: list[Track] = []
        self.rejected: list[int] = []  # ids of tracks decided against since the caller last looked
        self._first_face: int | None = None
        self._reference_area = 0.0
        self._finished = False

    def add(self, faces: list) -> list[tuple[Track, int]]:
        """The next frame's detections; returns the faces added to tracks not rejected (see `Tracker.add`)."""
        added = self.tracker.add(faces)
        if self._first_face is None and faces:
            self._first_face = self.tracker.frames - 1
        self.undecided += [track for track, frame in added if track.first == frame and len(track.faces) == 1]
        if not self.chosen and self._time_to_choose():
            self._choose_first()
        if self.chosen:
            self._decide_others()
        return [(track, frame) for track, frame in added if track in self.chosen or track in self.undecided]

    def finish(self) -> list[Track]:
        """The video has ended: the last decisions; returns the chosen tracks in order of appearance.
        Raises ValueError when the point's or box's frame has no face."""
        self._finished = True
        if not self.chosen and self.tracker.tracks:
            self._choose_first()
        if self.chosen:
            self._decide_others()
        return sorted(self.chosen, key=lambda t: t.first)

    @property
    def settled(self) -> int:
        """Frames before this one have their speaker (or none) decided for good."""
        if self._finished:
            return self.tracker.frames
        if not self.chosen:
            return 0
        return min([self.tracker.frames - self.tracker.max_gap] + [track.first for track in self.undecided])

    def speaker_at(self, frame: int):
        """(track, face) of the speaker on a settled `frame`, or None."""
        for track in self.chosen:
            if frame in track.faces:
                return track, track.faces[frame]
        return None

    def _time_to_choose(self) -> bool:
        frame = self.point[2] if self.point is not None else self.box[4] if self.box is not None else None
        if frame is not None:  # once no missed detection on that frame can still be filled
            return self.tracker.frames > frame + self.tracker.max_gap
        return self._first_face is not None and self.tracker.frames >= self._first_face + self.choice_frames

    def _choose_first(self) -> None:
        tracks = self.tracker.tracks
        if self.point is not None:
            x, y, frame = self.point
            first = _track_at(tracks, frame, lambda face: _point_score(face.box, x, y), "point")
        elif self.box is not None:
            first = _track_at(tracks, self.box[4], lambda face: iou(face.box, self.box[:4]), "box")
        else:
            first = max(tracks, key=Track.total_area)
        self.chosen.append(first)
        self.undecided.remove(first)
        self._reference_area = first.median_area()

    def _decide_others(self) -> None:
        """Reject the undecided tracks that met a chosen one or ended too short; add those that
        lasted long enough, largest first."""
        for track in sorted(self.undecided, key=lambda t: (-t.total_area(), t.id)):
            ended = self._finished or not self.tracker.alive(track)
            if any(track.overlaps(chosen) for chosen in self.chosen) or (ended and len(track.faces) < MIN_TRACK_FRAMES):
                self._reject(track)
            elif len(track.faces) >= MIN_TRACK_FRAMES:
                if track.median_area() >= MIN_RELATIVE_AREA * self._reference_area:
                    self.chosen.append(track)
                    self.undecided.remove(track)
                else:
                    self._reject(track)

    def _reject(self, track: Track) -> None:
        self.undecided.remove(track)
        self.rejected.append(track.id)


def choose_speaker(detections: list[list], choice_frames: int, point: tuple | None = None, box: tuple | None = None) -> list[Track]:
    """The speaker's tracks in a whole video's detections (see `SpeakerChooser`)."""
    chooser = SpeakerChooser(choice_frames, point, box)
    for faces in detections:
        chooser.add(faces)
    return chooser.finish()


def _point_score(face_box, x: float, y: float) -> float:
    x1, y1, x2, y2 = face_box
    inside = x1 <= x <= x2 and y1 <= y <= y2
    distance = np.hypot((x1 + x2) / 2 - x, (y1 + y2) / 2 - y)
    return (1.0 if inside else 0.0) - distance * 1e-6  # any containing face beats any other; then the nearest


def _track_at(tracks: list[Track], frame: int, score, what: str) -> Track:
    candidates = [t for t in tracks if frame in t.faces]
    if not candidates:
        raise ValueError(f"No face was found on frame {frame} to select the speaker by {what}; pick a frame where the face is visible.")
    return max(candidates, key=lambda t: score(t.faces[frame]))
