"""Long videos through the client: the segments the servers send back are opened only as the
containers the service accepts (a server's "output" that is an HLS playlist naming a file of the
client machine must not bring that file into the result)."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from latentsync.client.longform import run_long
from latentsync.media.probe import MediaError, probe
from tests.media import ffmpeg, small_clip, speech


@dataclass
class _Result:
    path: Path


class HostileServer:
    """A stand-in for the client whose servers answer the first segment with an HLS playlist that
    names a file of this machine (a compromised or hostile server)."""

    def __init__(self, playlist: Path):
        self.playlist, self.calls = playlist, 0

    def run(self, video, audio, **params):
        self.calls += 1
        return _Result(self.playlist if self.calls == 1 else Path(video))


def test_a_segment_that_is_a_playlist_is_refused(tmp_path):
    video, audio = small_clip(tmp_path / "long.mp4", seconds=4.0), speech(tmp_path / "long.wav", 4.0)
    secret = tmp_path / "private" / "secret.ts"
    secret.parent.mkdir()
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=540x960:r=25:d=2", "-c:v", "libx264", "-f", "mpegts", secret)
    playlist = tmp_path / "output.mp4"  # named like an output; an HLS playlist inside
    playlist.write_text(f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n")
    server = HostileServer(playlist)
    with pytest.raises(MediaError, match="output.mp4"):
        run_long(server, video, audio, tmp_path / "joined.mp4", max_segment_s=2.0, concurrency=1)
    assert not (tmp_path / "joined.mp4").exists()
