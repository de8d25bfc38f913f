"""Follow faces across frames and decide which one is the speaker.

Detections are linked into tracks by box overlap (IoU) from frame to frame, so the speaker is
chosen once for a whole shot instead of re-chosen per frame. A scene cut breaks a track; the
speaker's later shots are picked up as further tracks that never appear at the same time as it.
"""

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class Track:
    """One face followed over consecutive source frames: frame index -> detection."""

    id: int
    faces: dict = field(default_factory=dict)

    @property
    def first(self) -> int:
        return min(self.faces)

    @property
    def last(self) -> int:
        return max(self.faces)

    def total_area(self) -> float:
        return float(sum(box_area(face.box) for face in self.faces.values()))

    def median_area(self) -> float:
        return float(np.median([box_area(face.box) for face in self.faces.values()]))


def box_area(box) -> float:
    x1, y1, x2, y2 = box
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def iou(a, b) -> float:
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def build_tracks(detections: list[list], min_iou: float = 0.3, max_gap: int = 2) -> list[Track]:
    """Link per-frame detections into tracks.

    A detection continues the track whose last box overlaps it most (IoU >= `min_iou`), if that
    track was seen within the last `max_gap` + 1 frames; otherwise it starts a new track. Missed
    detections inside a track (gaps up to `max_gap` frames) are filled by linear interpolation.
    """
    tracks: list[Track] = []
    for frame, faces in enumerate(detections):
        active = [t for t in tracks if frame - t.last <= max_gap + 1]
        pairs = sorted(
            ((iou(t.faces[t.last].box, face.box), ti, fi) for ti, t in enumerate(active) for fi, face in enumerate(faces)),
            reverse=True,
        )
        used_tracks, used_faces = set(), set()
        for overlap, ti, fi in pairs:
            if overlap < min_iou or ti in used_tracks or fi in used_faces:
                continue
            active[ti].faces[frame] = faces[fi]
            used_tracks.add(ti)
            used_faces.add(fi)
        for fi, face in enumerate(faces):
            if fi not in used_faces:
                tracks.append(Track(id=len(tracks), faces={frame: face}))
    for track in tracks:
        _fill_gaps(track)
    return tracks


def _fill_gaps(track: Track) -> None:
    frames = sorted(track.faces)
    for before, after in zip(frames, frames[1:]):
        a, b = track.faces[before], track.faces[after]
        for frame in range(before + 1, after):
            w = (frame - before) / (after - before)
            track.faces[frame] = replace(
                a,
                box=tuple((1 - w) * np.asarray(a.box, float) + w * np.asarray(b.box, float)),
                landmarks3=(1 - w) * np.asarray(a.landmarks3, float) + w * np.asarray(b.landmarks3, float),
                score=min(a.score, b.score),
            )


def _overlaps_in_time(track: Track, chosen: list[Track]) -> bool:
    return any(frame in other.faces for other in chosen for frame in track.faces)


def choose_speaker(
    tracks: list[Track],
    point: tuple[float, float, int] | None = None,
    box: tuple[float, float, float, float, int] | None = None,
    min_track_frames: int = 8,
    min_relative_area: float = 0.2,
) -> list[Track]:
    """Pick the speaker's tracks.

    The first track is, by default, the one with the largest summed face area (large and
    consistently present); with `point=(x, y, frame)` the face containing that point on that
    frame (the nearest one if none contains it); with `box=(x1, y1, x2, y2, frame)` the face
    overlapping that box most on that frame. Then, for scene cuts, every other track that never
    appears at the same time as those chosen, lasts at least `min_track_frames` frames and is not
    much smaller (`min_relative_area` of the first one's median area) is added: the same person in
    another shot.
    """
    if not tracks:
        return []
    if point is not None:
        first = _track_at(tracks, point[2], lambda face: _point_score(face.box, point[0], point[1]), "point")
    elif box is not None:
        first = _track_at(tracks, box[4], lambda face: iou(face.box, box[:4]), "box")
    else:
        first = max(tracks, key=Track.total_area)
    chosen = [first]
    reference_area = first.median_area()
    for track in sorted(tracks, key=Track.total_area, reverse=True):
        if track is first or len(track.faces) < min_track_frames:
            continue
        if track.median_area() < min_relative_area * reference_area or _overlaps_in_time(track, chosen):
            continue
        chosen.append(track)
    return sorted(chosen, key=lambda t: t.first)


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
