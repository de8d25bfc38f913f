"""Audio: decoding to 16 kHz mono, Whisper features per video frame, and voice activity.

LatentSync conditions each video frame on Whisper-tiny encoder features: the input embedding and
every block's output (5 layers x 384) for each 20 ms Whisper frame, cut into one chunk of 10
Whisper frames around each video frame (50 x 384).
"""

import subprocess
import threading

import ffmpeg
import numpy as np
import torch
import torch.nn.functional as F
import webrtcvad
import whisper
from whisper.audio import HOP_LENGTH, N_FRAMES, log_mel_spectrogram
from whisper.model import AudioEncoder as WhisperAudioEncoder
from whisper.model import ModelDimensions

from .config import AUDIO_SAMPLE_RATE, MODEL_FPS

WHISPER_FPS = 50  # encoder frames per second (mel hop 10 ms, then a stride-2 convolution)
CHUNK_BEFORE, CHUNK_AFTER = 2, 2  # video frames of context on each side of a frame's audio chunk
WINDOW_FRAMES = N_FRAMES // 2  # encoder frames in one 30 s window (1500)


class AudioError(ValueError):
    """The audio input cannot be used; the message says why and what to do."""


def load_audio(path, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """Decode any audio or video file's audio track to mono float32 samples in [-1, 1]."""
    command = (
        ffmpeg.input(f"file:{path}", threads=0)
        .output("pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=sample_rate)
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .compile()
    )
    result = subprocess.run(command, capture_output=True)
    name = getattr(path, "name", str(path))
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace")
        if "No such file" in message:
            raise AudioError(f"Audio file not found: {name}.")
        if "does not contain any stream" in message or "matches no streams" in message:
            raise AudioError(f"{name} has no audio stream; pass a file with an audio track.")
        raise AudioError(f"Cannot decode the audio of {name}; pass a wav, mp3, aac, m4a, ogg, flac or opus file ({_last_line(message)}).")
    samples = np.frombuffer(result.stdout, np.int16).astype(np.float32) / 32768.0
    if len(samples) == 0:
        raise AudioError(f"{name} contains no audio samples (zero length).")
    return samples


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no details"


class AudioEncoder:
    """Whisper's audio encoder, used as a feature extractor (the text decoder is never loaded).

    Args:
        model_path: a Whisper checkpoint file (`{"dims", "model_state_dict"}`, e.g. whisper/tiny.pt).
        window_mode: how audio longer than Whisper's 30 s window is encoded. "overlap" (default)
            encodes overlapping windows and cross-fades them, so features stay continuous; "official"
            concatenates independent 30 s windows like the official code, which causes a visible
            glitch every 30 s. Both give the same features for audio up to 30 s.
    """

    def __init__(self, model_path, device="cpu", dtype=torch.float32, window_mode: str = "overlap"):
        if window_mode not in ("overlap", "official"):
            raise ValueError("window_mode must be 'overlap' or 'official'.")
        checkpoint = torch.load(model_path, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**checkpoint["dims"])
        encoder = WhisperAudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
        prefix = "encoder."
        encoder.load_state_dict({k[len(prefix) :]: v for k, v in checkpoint["model_state_dict"].items() if k.startswith(prefix)})
        self.encoder = encoder.to(device=device, dtype=dtype).eval()
        self.n_mels = dims.n_mels
        self.window_mode = window_mode
        self.device, self.dtype = torch.device(device), dtype

    def features(self, audio) -> "AudioFeatures":
        """Per Whisper frame (20 ms): the input embedding and each block's output, (T, layers + 1, dim).

        `audio` is a file path or 16 kHz mono float32 samples. The result is computed window by
        window as it is read (so hours of audio need no more memory than a minute);
        `.tensor()` gives all of it at once.
        """
        samples = load_audio(audio) if not isinstance(audio, np.ndarray) else audio
        # One log-mel over the whole audio, as the official computes it (its level normalisation
        # uses the maximum over the whole file).
        mel = log_mel_spectrogram(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), self.n_mels)
        return AudioFeatures(self, mel)

    @torch.no_grad()
    def encode_window(self, mel: torch.Tensor, start: int) -> torch.Tensor:
        """Encoder outputs for the 30 s of mel frames from `start` (zero-padded past the end)."""
        segment = mel[:, start : start + N_FRAMES]
        segment = F.pad(segment, (0, N_FRAMES - segment.shape[-1]))
        x = segment[None].to(self.device, self.dtype)
        encoder = self.encoder
        x = F.gelu(encoder.conv1(x))
        x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
        x = x + encoder.positional_embedding.to(x.dtype)
        layers = [x]
        for block in encoder.blocks:
            x = block(x)
            layers.append(x)
        return torch.stack(layers, dim=2)[0].float().cpu()  # (1500, layers + 1, dim)

    def frame_features(self, audio, fps: float = MODEL_FPS) -> torch.Tensor:
        """All per-video-frame chunks (official count), (frames, 50, dim). For long audio prefer
        `features` + `frame_chunks`, which cut chunks on demand."""
        features = self.features(audio)
        return frame_chunks(features, 0, official_chunk_count(len(features), fps), fps)


class AudioFeatures:
    """The Whisper features of one audio, encoded 30 s window by window when first read.

    In "overlap" mode, windows start every 20 s (the last one ends with the audio) and each
    overlap is cross-faded over its middle 5 s; in "official" mode, windows follow each other
    every 30 s with no overlap. Index it like a (T, layers, dim) tensor with integer indices.
    """

    HOP, FADE = 1000, 250  # encoder frames: 20 s, 5 s

    def __init__(self, encoder: AudioEncoder, mel: torch.Tensor, cached_windows: int = 3):
        self.encoder, self.mel = encoder, mel
        self.total = mel.shape[-1] // 2  # encoder frames that carry audio
        if encoder.window_mode == "official" or self.total <= WINDOW_FRAMES:
            self.starts = list(range(0, self.total, WINDOW_FRAMES))
        else:
            self.starts = list(range(0, self.total - WINDOW_FRAMES, self.HOP)) + [self.total - WINDOW_FRAMES]
        self._cache: dict[int, torch.Tensor] = {}
        self._cached_windows = cached_windows
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.total

    @property
    def shape(self) -> tuple:
        whisper = self.encoder.encoder
        return (self.total, len(whisper.blocks) + 1, whisper.positional_embedding.shape[1])

    def tensor(self) -> torch.Tensor:
        return self[torch.arange(self.total)]

    def _window(self, k: int) -> torch.Tensor:
        with self._lock:
            if k not in self._cache:
                if len(self._cache) >= self._cached_windows:
                    del self._cache[min(self._cache)]  # the pipeline reads forwards: drop the earliest
                self._cache[k] = self.encoder.encode_window(self.mel, 2 * self.starts[k])
            return self._cache[k]

    def _weight(self, k: int, frames: torch.Tensor) -> torch.Tensor:
        """Window k's share of each frame: 1 inside it, ramping across its overlaps (sum = 1)."""
        start, end = self.starts[k], min(self.starts[k] + WINDOW_FRAMES, self.total)
        weight = ((frames >= start) & (frames < end)).float()
        if k > 0 and self.starts[k - 1] + WINDOW_FRAMES > start:  # overlap with the previous window
            weight *= self._ramp(frames, start, self.starts[k - 1] + WINDOW_FRAMES)
        if k + 1 < len(self.starts) and start + WINDOW_FRAMES > self.starts[k + 1]:  # with the next
            weight *= 1 - self._ramp(frames, self.starts[k + 1], start + WINDOW_FRAMES)
        return weight

    def _ramp(self, frames: torch.Tensor, overlap_start: int, overlap_end: int) -> torch.Tensor:
        fade_start = overlap_start + (overlap_end - overlap_start - self.FADE) / 2
        return ((frames.float() - fade_start) / self.FADE).clamp(0, 1)

    def __getitem__(self, index) -> torch.Tensor:
        index = torch.as_tensor(index)
        frames = index.reshape(-1)
        out = None
        for k, start in enumerate(self.starts):
            weight = self._weight(k, frames)
            used = weight > 0
            if not used.any():
                continue
            values = self._window(k)[frames[used] - start] * weight[used, None, None]
            if out is None:
                out = torch.zeros(len(frames), *values.shape[1:])
            out[used] += values
        return out.reshape(*index.shape, *out.shape[1:])


def official_chunk_count(whisper_frames: int, fps: float = MODEL_FPS) -> int:
    """How many video frames the official derives from `whisper_frames` of features.

    Its loop emits frame i while int(i * 50 / fps) <= whisper_frames, plus one more.
    """
    i = 0
    while int(i * WHISPER_FPS / fps) <= whisper_frames:
        i += 1
    return i + 1


def frame_chunks(features: torch.Tensor, start: int, count: int, fps: float = MODEL_FPS) -> torch.Tensor:
    """Audio chunks for video frames [start, start + count): (count, 50, dim).

    Each chunk is the 10 Whisper frames around the video frame (2 video frames before, 3 after,
    two Whisper frames each), indices clamped at the ends, flattened frame-major as the official.
    """
    frames = torch.arange(start, start + count)
    centres = (frames * WHISPER_FPS / fps).long()  # int() truncation, as the official
    offsets = torch.arange(-CHUNK_BEFORE * 2, (CHUNK_AFTER + 1) * 2)
    indices = (centres[:, None] + offsets[None, :]).clamp(0, len(features) - 1)
    chunks = features[indices]  # (count, 10, layers, dim)
    return chunks.reshape(count, -1, features.shape[-1])


def voice_activity(samples: np.ndarray, frame_ms: int = 30, aggressiveness: int = 3) -> np.ndarray:
    """Per `frame_ms` frame of 16 kHz audio: True where webrtcvad hears speech."""
    vad = webrtcvad.Vad(aggressiveness)
    frame_length = AUDIO_SAMPLE_RATE * frame_ms // 1000
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    count = len(pcm) // frame_length
    return np.array(
        [vad.is_speech(pcm[i * frame_length : (i + 1) * frame_length].tobytes(), AUDIO_SAMPLE_RATE) for i in range(count)],
        dtype=bool,
    )


def silent_spans(
    samples: np.ndarray,
    min_silence_s: float = 0.3,
    frame_ms: int = 30,
    min_speech_s: float = 0.09,
    margin_s: float = 0.06,
) -> list[tuple[float, float]]:
    """Pauses of at least `min_silence_s`, as (start, end) seconds.

    Speech bursts shorter than `min_speech_s` (clicks, breaths) count as silence, and each pause is
    shrunk by `margin_s` at both ends so the mouth can start moving just before the sound.
    """
    speech = voice_activity(samples, frame_ms)
    frame_s = frame_ms / 1000
    runs = _runs(speech)
    for start, end, is_speech in runs:
        if is_speech and (end - start) * frame_s < min_speech_s:
            speech[start:end] = False
    spans = []
    total_s = len(samples) / AUDIO_SAMPLE_RATE
    for start, end, is_speech in _runs(speech):
        if is_speech:
            continue
        start_s = start * frame_s + (margin_s if start > 0 else 0.0)
        end_s = total_s if end == len(speech) else end * frame_s - margin_s
        if end_s - start_s >= min_silence_s:
            spans.append((round(start_s, 3), round(end_s, 3)))
    return spans


def _runs(flags: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs of equal values: (start, end, value)."""
    runs, start = [], 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            runs.append((start, i, bool(flags[start])))
            start = i
    return runs
