"""Media in and out through the ffmpeg binary: probe, decode (frames, audio samples), encode."""

from .ffmpeg import MediaError

__all__ = ["MediaError"]
