"""Audio analysis: Whisper features per video frame, and voice activity (decoding is in
`latentsync.media.decode`).

LatentSync conditions each video frame on Whisper-tiny encoder features: the input embedding and
every block's output (5 layers x 384) for each 20 ms Whisper frame, cut into one chunk of 10
Whisper frames around each video frame (50 x 384).

Typical use:

    encoder = AudioEncoder("checkpoints/whisper/tiny.pt")
    features = encoder.features("speech.wav")          # (T, 5, 384), encoded lazily
    chunks = frame_chunks(features, start=0, count=16)  # (16, 50, 384) for video frames 0..15
"""

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webrtcvad
from whisper.audio import HOP_LENGTH, N_FFT, mel_filters
from whisper.audio import N_FRAMES as WHISPER_WINDOW_MEL_FRAMES  # 3000 mel frames: Whisper's 30 s window
from whisper.model import AudioEncoder as WhisperAudioEncoder
from whisper.model import ModelDimensions

from .config import AUDIO_SAMPLE_RATE, MODEL_FPS
from .files import require_weight_file
from .media.decode import AudioError, load_audio

WHISPER_FPS = 50  # encoder frames per second (mel hop 10 ms, then a stride-2 convolution)
WHISPER_WINDOW_FRAMES = WHISPER_WINDOW_MEL_FRAMES // 2  # encoder frames in one 30 s window (1500)
CHUNK_BEFORE, CHUNK_AFTER = 2, 2  # video frames of context on each side of a frame's audio chunk
MIN_SAMPLES = 2 * HOP_LENGTH  # 20 ms: the shortest audio that yields one encoder frame

# "overlap" window mode: a 30 s window every 20 s; neighbours cross-fade over the middle 5 s of
# their overlap, so every frame comes from well inside some window, never from a window's edge.
OVERLAP_HOP = 1000  # encoder frames (20 s)
OVERLAP_FADE = 250  # encoder frames (5 s)

# Voice activity: webrtcvad decisions per 30 ms frame, smoothed so that speech starts only after
# SPEECH_ONSET_S of speech in a row (clicks and breaths inside pauses are ignored) and ends only
# after SPEECH_HANGOVER_S of non-speech in a row (short dropouts inside words are bridged).
VAD_FRAME_MS = 30
VAD_AGGRESSIVENESS = 3  # webrtcvad's 0..3; 3 is the strictest about what counts as speech
QUIET_BELOW_LOUD_DB = 35  # frames this far below the loud frames are never speech
SPEECH_ONSET_S = 0.09
SPEECH_HANGOVER_S = 0.15
SILENCE_MARGIN_S = 0.06  # pauses are shrunk by this at each end next to speech

# ---- Whisper features ---------------------------------------------------------------------------


class AudioEncoder:
    """Whisper's audio encoder used as a feature extractor (the text decoder is never loaded).

    Args:
        model_path: a Whisper checkpoint file `{"dims", "model_state_dict"}`, e.g. the released
            whisper/tiny.pt; fp16 weights are loaded into float32.
        device: where the encoder runs; features come back on the CPU.
        window_mode: how audio longer than Whisper's 30 s window is encoded. "overlap" (default)
            encodes overlapping windows and keeps each one's middle, so the features stay continuous;
            "official" concatenates independent 30 s windows like the official code, which jumps
            every 30 s (visible as a mouth glitch). Both give the same features up to 30 s.
    """

    def __init__(self, model_path, device="cpu", window_mode: str = "overlap"):
        if window_mode not in ("overlap", "official"):
            raise ValueError(f"window_mode must be 'overlap' or 'official', got {window_mode!r}.")
        checkpoint = torch.load(require_weight_file(model_path, "The Whisper checkpoint"), map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
            raise ValueError(
                f"{Path(model_path).name} is not a Whisper checkpoint (expected the keys 'dims' and "
                "'model_state_dict', as in the released whisper/tiny.pt)."
            )
        dims = ModelDimensions(**checkpoint["dims"])
        encoder = WhisperAudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
        weights = {
            name.removeprefix("encoder."): tensor
            for name, tensor in checkpoint["model_state_dict"].items()
            if name.startswith("encoder.")
        }
        encoder.load_state_dict(weights)  # copies into the float32 parameters
        del checkpoint, weights  # drop the decoder's tensors now
        self.encoder = encoder.to(device).eval()
        self.device = torch.device(device)
        self.n_mels = dims.n_mels
        self.window_mode = window_mode

    def features(self, audio) -> "AudioFeatures":
        """The features of `audio` (a file path, or 16 kHz mono float32 samples): per Whisper frame
        (20 ms) the input embedding and each block's output, shaped (T, layers + 1, dim).

        Encoding happens window by window as frames are read, so long audio needs little memory;
        `.tensor()` gives everything at once.
        """
        samples = _as_samples(audio)
        return AudioFeatures(self, log_mel(samples, self.n_mels))

    def frame_features(self, audio, fps: float = MODEL_FPS) -> torch.Tensor:
        """Every video frame's chunk, (num_frames(...), 50, dim), as the official computes them.

        For long audio prefer `features` with `frame_chunks`, which cut chunks on demand.
        """
        features = self.features(audio)
        return frame_chunks(features, 0, num_frames(features, fps), fps)

    @torch.no_grad()
    def encode_window(self, mel: torch.Tensor, start: int) -> torch.Tensor:
        """Encoder outputs for the 30 s of mel frames from `start` (zero-padded past the end):
        the embedding and every block's output, (1500, layers + 1, dim) on the CPU."""
        segment = mel[:, start : start + WHISPER_WINDOW_MEL_FRAMES]
        segment = F.pad(segment, (0, WHISPER_WINDOW_MEL_FRAMES - segment.shape[-1]))
        encoder = self.encoder
        x = F.gelu(encoder.conv1(segment[None].to(self.device)))
        x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
        x = x + encoder.positional_embedding
        layers = [x]
        for block in encoder.blocks:
            x = block(x)
            layers.append(x)
        return torch.stack(layers, dim=2)[0].cpu()


def log_mel(samples: np.ndarray, n_mels: int, chunk_frames: int = WHISPER_WINDOW_MEL_FRAMES) -> torch.Tensor:
    """Whisper's log-mel spectrogram of the whole audio (`whisper.audio.log_mel_spectrogram`, as
    the official computes it: its level floor follows the loudest point of the whole file), built
    30 s at a time so that long audio never holds its whole short-time Fourier transform."""
    audio, n = torch.from_numpy(samples), len(samples)
    total = n // HOP_LENGTH  # torch.stft(center=True) gives one frame more; whisper drops it
    window, filters = torch.hann_window(N_FFT), mel_filters("cpu", n_mels)
    log_spec = torch.empty(n_mels, total)
    for start in range(0, total, chunk_frames):
        stop = min(total, start + chunk_frames)
        # Frame j is centred on sample j * HOP_LENGTH; past either end the audio is mirrored
        # (stft's reflect padding of N_FFT / 2).
        first, last = start * HOP_LENGTH - N_FFT // 2, (stop - 1) * HOP_LENGTH + N_FFT // 2
        piece = audio[max(first, 0) : min(last, n)]
        if first < 0:
            piece = torch.cat([audio[1 : 1 - first].flip(0), piece])
        if last > n:
            piece = torch.cat([piece, audio[2 * n - 1 - last : n - 1].flip(0)])
        stft = torch.stft(piece, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
        log_spec[:, start:stop] = torch.clamp(filters @ stft.abs() ** 2, min=1e-10).log10()
    return log_spec.clamp_(min=log_spec.max().item() - 8.0).add_(4.0).div_(4.0)


def _as_samples(audio) -> np.ndarray:
    """A file path, or an array of samples, as contiguous float32 mono samples long enough to encode."""
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1:
            raise AudioError(f"Audio samples must be mono (a 1-D array), got shape {audio.shape}; mix the channels down first.")
        samples = np.ascontiguousarray(audio, dtype=np.float32)
    else:
        samples = load_audio(audio)
    if len(samples) < MIN_SAMPLES:
        raise AudioError(f"The audio is too short ({len(samples)} samples); at least 20 ms ({MIN_SAMPLES} samples at 16 kHz) are needed.")
    return samples


class AudioFeatures:
    """The Whisper features of one audio, indexable like a (T, layers, dim) tensor with integer
    indices (`features[idx]`), encoded one 30 s window at a time when first read.

    "official" mode: windows every 30 s, side by side. "overlap" mode: a window every 20 s, the
    last one ending with the audio; each frame is a blend of the windows covering it, weighted 1
    in a window's middle and ramping across the middle 5 s of each overlap (weights sum to 1).
    Audio up to 30 s is one window either way.
    """

    CACHED_WINDOWS = 3  # a frame needs at most two windows; one more for reads that step back

    def __init__(self, encoder: AudioEncoder, mel: torch.Tensor):
        self.encoder, self.mel = encoder, mel
        self.total = mel.shape[-1] // 2  # the official keeps floor(mel frames / 2) encoder frames
        model = encoder.encoder
        self.shape = (self.total, len(model.blocks) + 1, model.positional_embedding.shape[1])
        self.windows = _plan_windows(self.total, encoder.window_mode)  # [(start, weights)]
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # the pipeline reads from a worker thread

    def __len__(self) -> int:
        return self.total

    def tensor(self) -> torch.Tensor:
        """All features at once, (T, layers, dim)."""
        return self[torch.arange(self.total)]

    def __getitem__(self, index) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        frames = index.reshape(-1)
        if len(frames) and (frames.min() < 0 or frames.max() >= self.total):
            raise IndexError(f"Whisper frame indices must lie in [0, {self.total}).")
        out = torch.zeros(len(frames), *self.shape[1:])
        for k, (start, weights) in enumerate(self.windows):
            local = (frames - start).clamp(0, len(weights) - 1)
            covered = (frames >= start) & (frames < start + len(weights))
            share = torch.where(covered, weights[local], 0.0)
            used = share > 0  # only encode a window for frames it contributes to
            if used.any():
                out[used] += self._window(k)[local[used]] * share[used, None, None]
        return out.reshape(*index.shape, *self.shape[1:])

    def _window(self, k: int) -> torch.Tensor:
        with self._lock:
            if k in self._cache:
                self._cache.move_to_end(k)
            else:
                if len(self._cache) >= self.CACHED_WINDOWS:
                    self._cache.popitem(last=False)  # the least recently used
                self._cache[k] = self.encoder.encode_window(self.mel, 2 * self.windows[k][0])
            return self._cache[k]


def _plan_windows(total: int, window_mode: str) -> list[tuple[int, torch.Tensor]]:
    """Where each 30 s window starts (in encoder frames) and its weight for each frame it covers."""
    if window_mode == "official" or total <= WHISPER_WINDOW_FRAMES:
        return [(start, torch.ones(min(WHISPER_WINDOW_FRAMES, total - start))) for start in range(0, total, WHISPER_WINDOW_FRAMES)]
    starts = list(range(0, total - WHISPER_WINDOW_FRAMES, OVERLAP_HOP)) + [total - WHISPER_WINDOW_FRAMES]
    windows = []
    for k, start in enumerate(starts):
        frames = torch.arange(start, start + WHISPER_WINDOW_FRAMES, dtype=torch.float64)
        weights = torch.ones_like(frames)
        if k > 0:  # fade in across the overlap with the previous window
            weights *= _fade_in(frames, overlap=(start, starts[k - 1] + WHISPER_WINDOW_FRAMES))
        if k + 1 < len(starts):  # fade out across the overlap with the next one
            weights *= 1 - _fade_in(frames, overlap=(starts[k + 1], start + WHISPER_WINDOW_FRAMES))
        windows.append((start, weights.float()))
    return windows


def _fade_in(frames: torch.Tensor, overlap: tuple[int, int]) -> torch.Tensor:
    """0 before the middle OVERLAP_FADE frames of `overlap`, rising linearly to 1 after them."""
    first, end = overlap
    fade_start = first + (end - first - OVERLAP_FADE) / 2
    return ((frames - fade_start) / OVERLAP_FADE).clamp(0, 1)


def num_frames(features, fps: float = MODEL_FPS) -> int:
    """How many video frames (audio chunks) the official derives from these features.

    Its loop emits frame i, then stops once int(i * 50 / fps) has passed the last Whisper frame;
    so the count runs about two frames past the audio's end.
    """
    step = WHISPER_FPS / fps  # the official multiplies by this precomputed ratio here
    i = 0
    while int(i * step) <= len(features):
        i += 1
    return i + 1


def frame_chunks(features, start: int, count: int, fps: float = MODEL_FPS) -> torch.Tensor:
    """The audio chunks of video frames [start, start + count): (count, 50, dim).

    Video frame i is centred on Whisper frame int(i * 50 / fps); its chunk is the 10 Whisper frames
    from 2 video frames before to 3 after (two Whisper frames per video frame at 25 fps), clamped
    to the features' ends and flattened frame-major like the official. `features` is a tensor
    (T, layers, dim) or an `AudioFeatures`.
    """
    if start < 0 or count < 0:
        raise ValueError(f"start and count must be >= 0, got start={start}, count={count}.")
    frames = torch.arange(start, start + count, dtype=torch.float64)
    centres = (frames * WHISPER_FPS / fps).long()  # float64 and truncation, as Python's int(i * 50 / fps)
    offsets = torch.arange(-2 * CHUNK_BEFORE, 2 * (CHUNK_AFTER + 1))
    indices = (centres[:, None] + offsets).clamp(0, len(features) - 1)
    return features[indices].flatten(1, 2)  # (count, 10, layers, dim) -> (count, 10 * layers, dim)


# ---- voice activity -----------------------------------------------------------------------------


def voice_activity(samples: np.ndarray, frame_ms: int = VAD_FRAME_MS, aggressiveness: int = VAD_AGGRESSIVENESS) -> np.ndarray:
    """Whether each whole `frame_ms` frame of 16 kHz mono samples is speech: webrtcvad's decision,
    except that frames more than 35 dB below the audio's loud frames never count as speech."""
    if frame_ms not in (10, 20, 30):
        raise ValueError(f"frame_ms must be 10, 20 or 30 (the frame lengths webrtcvad accepts), got {frame_ms}.")
    if aggressiveness not in (0, 1, 2, 3):
        raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness}.")
    vad = webrtcvad.Vad(aggressiveness)
    frame_length = AUDIO_SAMPLE_RATE * frame_ms // 1000
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float32) * 32768), -32768, 32767).astype(np.int16)
    frames = pcm[: len(pcm) // frame_length * frame_length].reshape(-1, frame_length)
    speech = np.array([vad.is_speech(frame.tobytes(), AUDIO_SAMPLE_RATE) for frame in frames], dtype=bool)
    # After a few seconds of speech webrtcvad can take steady low noise (room tone) for speech, for
    # seconds on end. "Loud" is the 99th percentile of frame levels: speech even when it is sparse,
    # yet not a single click.
    energy = np.empty(len(frames))
    for start in range(0, len(frames), 4096):  # in blocks: a float64 copy of long audio is large
        energy[start : start + 4096] = np.mean(frames[start : start + 4096].astype(np.float64) ** 2, axis=1)
    level_db = 10 * np.log10(energy + 1e-3)
    if len(level_db):
        speech &= level_db > np.percentile(level_db, 99) - QUIET_BELOW_LOUD_DB
    return speech


def silent_spans(samples: np.ndarray, min_silence_s: float = 0.3) -> list[tuple[float, float]]:
    """The pauses in 16 kHz mono speech that last at least `min_silence_s`, as (start, end) seconds.

    Pauses are shrunk by 60 ms where they meet speech, so the mouth may move a little before and
    after the sound; a pause at the start or end of the audio runs to that end.
    """
    frame_s = VAD_FRAME_MS / 1000
    speech = _smooth(voice_activity(samples), onset=round(SPEECH_ONSET_S / frame_s), hangover=round(SPEECH_HANGOVER_S / frame_s))
    total_s = len(samples) / AUDIO_SAMPLE_RATE
    spans = []
    for start, end, is_speech in _runs(speech):
        if is_speech:
            continue
        start_s = 0.0 if start == 0 else start * frame_s + SILENCE_MARGIN_S
        end_s = total_s if end == len(speech) else end * frame_s - SILENCE_MARGIN_S
        if end_s - start_s >= min_silence_s:
            spans.append((round(start_s, 3), round(end_s, 3)))
    return spans


def _smooth(speech: np.ndarray, onset: int, hangover: int) -> np.ndarray:
    """Hangover smoothing: switch to speech only on a run of at least `onset` speech frames, and
    back to silence only on a run of at least `hangover` non-speech frames."""
    smoothed = np.zeros_like(speech)
    talking = False
    for start, end, is_speech in _runs(speech):
        if is_speech != talking and end - start >= (onset if is_speech else hangover):
            talking = is_speech
        smoothed[start:end] = talking
    return smoothed


def _runs(flags: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs of equal values, as (start, end, value)."""
    if len(flags) == 0:
        return []
    bounds = [0, *(np.flatnonzero(np.diff(flags.astype(np.int8))) + 1).tolist(), len(flags)]
    return [(a, b, bool(flags[a])) for a, b in zip(bounds[:-1], bounds[1:])]
