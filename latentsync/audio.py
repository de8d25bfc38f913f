"""Audio analysis: Whisper features per video frame, and voice activity with silero-vad
(decoding is in `latentsync.media.decode`).

LatentSync conditions each video frame on Whisper-tiny encoder features: the input embedding and
every block's output (5 layers x 384) for each 20 ms Whisper frame, cut into one chunk of 10
Whisper frames around each video frame (50 x 384).

Typical use:

    encoder = AudioEncoder("checkpoints/whisper/tiny.pt")
    features = encoder.features("speech.wav")          # (T, 5, 384), encoded lazily
    chunks = frame_chunks(features, start=0, count=16)  # (16, 50, 384) for video frames 0..15
    pauses = silent_spans(load_audio("dub.wav"))        # [(start_s, end_s)] without a voice
"""

import functools
import importlib.metadata
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from whisper.audio import HOP_LENGTH, N_FFT, mel_filters
from whisper.audio import N_FRAMES as WHISPER_WINDOW_MEL_FRAMES  # 3000 mel frames: Whisper's 30 s window
from whisper.model import AudioEncoder as WhisperAudioEncoder
from whisper.model import ModelDimensions

from .config import AUDIO_SAMPLE_RATE, DEFAULT_MIN_SILENCE_S, MODEL_FPS
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

# Voice activity: silero-vad's probability that each 32 ms frame holds a voice, from its ONNX model
# (the "sequence" export, which runs a block of frames per call instead of one: the same
# probabilities, a fraction of the Python overhead). Speech starts where the probability reaches
# SPEECH_THRESHOLD and goes on while it stays above SPEECH_END_THRESHOLD; then only runs of at least
# SPEECH_ONSET_S count as speech (a drum hit or a click in a pause does not) and only runs of at
# least SPEECH_HANGOVER_S as its end (dropouts inside words are bridged). Tuned on demo1's speech
# and the demo videos' own speech tracks, alone and mixed with music and room noise (README).
VAD_PACKAGE = "silero-vad"
VAD_MODEL_FILE = "silero_vad/data/silero_vad_16k_sequence.onnx"  # inside the package's wheel
VAD_FRAME = 512  # samples per frame at 16 kHz: 32 ms
VAD_CONTEXT = 64  # each frame goes in with the last samples of the frame before it
VAD_BLOCK_FRAMES = 512  # frames per model call (16 s of audio)
VAD_FRAME_S = VAD_FRAME / AUDIO_SAMPLE_RATE
SPEECH_THRESHOLD = 0.35
SPEECH_END_THRESHOLD = 0.2
SPEECH_ONSET_S = 0.096  # 3 frames
SPEECH_HANGOVER_S = 0.16  # 5 frames
# The model decides where the pauses are; the level places their edges. The model reports an onset
# a frame late, and is up to ~0.3 s late at either edge of a voice that starts or stops abruptly (a
# hard edit into silence or noise), while the level changes at once. A pause's end moves back over
# the frames before it that stand out from the pause (EDGE_RISE_DB above its median level, within
# SPEECH_RANGE_DB of the speech's), or by one frame where none do (music as loud as the speech); its
# start moves back over the frames at the pause's own level (within PAUSE_LEVEL_DB of it) where the
# pause is EDGE_RISE_DB quieter than the speech. Either by at most EDGE_LOOKBACK_S.
EDGE_RISE_DB = 10.0
SPEECH_RANGE_DB = 30.0
PAUSE_LEVEL_DB = 6.0
EDGE_LOOKBACK_S = 0.32  # 10 frames
# Pauses are then shrunk next to speech: lips move ahead of the sound they make, and close just
# after it.
MARGIN_BEFORE_SPEECH_S = 0.06
MARGIN_AFTER_SPEECH_S = 0.03

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

    Each window is encoded on a thread of its own, and reading one starts the next, so the model
    rarely waits for Whisper; `encode_ahead` starts the first one a job needs while its video is
    still being analysed. An encoding's error is raised by the read that needs it, and the next read
    encodes that window again.
    """

    CACHED_WINDOWS = 3  # a frame needs at most two windows; one more for reads that step back

    def __init__(self, encoder: AudioEncoder, mel: torch.Tensor):
        self.encoder, self.mel = encoder, mel
        self.total = mel.shape[-1] // 2  # the official keeps floor(mel frames / 2) encoder frames
        model = encoder.encoder
        self.shape = (self.total, len(model.blocks) + 1, model.positional_embedding.shape[1])
        self.windows = _plan_windows(self.total, encoder.window_mode)  # [(start, weights)]
        self._cache: OrderedDict[int, Future] = OrderedDict()  # window -> its encoding, the least recently used first
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
        for k, local, share, used in self._windows_read(frames):
            out[used] += self._window(k)[local[used]] * share[used, None, None]
        return out.reshape(*index.shape, *self.shape[1:])

    def _windows_read(self, frames: torch.Tensor):
        """The windows `frames` are read from, in order: (k, each frame's place in window k, its
        weight there, which frames it contributes to). A window is only encoded for those."""
        for k, (start, weights) in enumerate(self.windows):
            local = (frames - start).clamp(0, len(weights) - 1)
            covered = (frames >= start) & (frames < start + len(weights))
            share = torch.where(covered, weights[local], 0.0)
            used = share > 0
            if used.any():
                yield k, local, share, used

    def encode_ahead(self, at_s: float = 0.0) -> None:
        """Start encoding the window that the features at `at_s` seconds are read from first."""
        frame = min(max(int(at_s * WHISPER_FPS), 0), self.total - 1)
        first, *_ = next(self._windows_read(torch.tensor([frame])))
        with self._lock:
            self._encoding(first)

    def _window(self, k: int) -> torch.Tensor:
        with self._lock:
            encoding = self._encoding(k)
            if k + 1 < len(self.windows):
                self._encoding(k + 1)
        try:
            return encoding.result()
        except BaseException:
            with self._lock:
                if self._cache.get(k) is encoding:  # the next read tries again (after memory was freed, say)
                    del self._cache[k]
            raise

    def _encoding(self, k: int) -> Future:
        """Window `k`'s encoding, started now unless it was (with `_lock` held)."""
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        if len(self._cache) >= self.CACHED_WINDOWS:
            self._cache.popitem(last=False)
        encoding = self._cache[k] = Future()

        def encode() -> None:
            try:
                encoding.set_result(self.encoder.encode_window(self.mel, 2 * self.windows[k][0]))
            except BaseException as error:  # raised by the read that needs it
                encoding.set_exception(error)

        threading.Thread(target=encode, daemon=True, name="whisper").start()
        return encoding


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


class Pauses(list):
    """The (start, end) seconds of each pause, and `detector`: what found them ("silero-vad 6.2.3")."""

    def __init__(self, spans=(), detector: str = ""):
        super().__init__(spans)
        self.detector = detector


def pause_detector() -> str:
    """The voice activity detector and its version, as the report names it."""
    return f"{VAD_PACKAGE} {importlib.metadata.version(VAD_PACKAGE)}"


@functools.cache
def _vad_session():
    """silero-vad's ONNX model on the CPU, one thread (it is small; the GPU and the other cores
    are busy with the job). The file is read from the installed wheel without importing the
    `silero_vad` package, whose import sets torch to one thread for the whole process."""
    import onnxruntime

    try:
        path = Path(importlib.metadata.distribution(VAD_PACKAGE).locate_file(VAD_MODEL_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"Voice activity needs the {VAD_PACKAGE} package: pip install -r requirements.txt.") from None
    if not path.is_file():
        raise RuntimeError(f"The {VAD_PACKAGE} package has no model file {VAD_MODEL_FILE}: reinstall it from requirements.txt.")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def speech_probability(samples: np.ndarray) -> np.ndarray:
    """silero-vad's probability of speech in each 32 ms frame of 16 kHz mono samples (the last,
    partial frame padded with silence): float32, ceil(len / 512) values."""
    session = _vad_session()
    hidden = np.zeros((1, 1, 128), np.float32)  # the model's LSTM state, carried across blocks
    cell = np.zeros((1, 1, 128), np.float32)
    previous = np.zeros(VAD_CONTEXT, np.float32)
    probability = np.empty(-(-len(samples) // VAD_FRAME), np.float32)
    for first, frames in _frame_blocks(samples):
        context = np.concatenate([previous[None], frames[:-1, -VAD_CONTEXT:]])
        previous = frames[-1, -VAD_CONTEXT:]
        inputs = {"input": np.concatenate([context, frames], axis=1), "h": hidden, "c": cell}
        probability[first : first + len(frames)], hidden, cell = session.run(None, inputs)
    return probability


def frame_levels_db(samples: np.ndarray) -> np.ndarray:
    """The level of each 32 ms frame in dBFS (the last one padded with silence; -100 for silence)."""
    levels = np.empty(-(-len(samples) // VAD_FRAME))
    for first, frames in _frame_blocks(samples):
        levels[first : first + len(frames)] = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
    return levels


def _frame_blocks(samples: np.ndarray):
    """(first frame index, frames) for blocks of up to VAD_BLOCK_FRAMES 32 ms frames, float32 (the
    last frame padded with silence): long audio is never held as frames all at once."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    for start in range(0, len(samples), VAD_BLOCK_FRAMES * VAD_FRAME):
        piece = samples[start : start + VAD_BLOCK_FRAMES * VAD_FRAME]
        yield start // VAD_FRAME, np.pad(piece, (0, -len(piece) % VAD_FRAME)).reshape(-1, VAD_FRAME)


def voice_activity(samples: np.ndarray) -> np.ndarray:
    """Whether each 32 ms frame of 16 kHz mono samples is speech (`speech_probability` with
    hysteresis: speech starts at SPEECH_THRESHOLD and lasts while above SPEECH_END_THRESHOLD)."""
    probability = speech_probability(samples)
    speech = np.zeros(len(probability), dtype=bool)
    talking = False
    for i, p in enumerate(probability):
        talking = p >= (SPEECH_END_THRESHOLD if talking else SPEECH_THRESHOLD)
        speech[i] = talking
    return speech


def silent_spans(samples: np.ndarray, min_silence_s: float = DEFAULT_MIN_SILENCE_S) -> Pauses:
    """The pauses in 16 kHz mono audio: stretches of at least `min_silence_s` without a voice
    (silence, music, noise), as (start, end) seconds.

    Each pause is shrunk by 0.06 s before speech and 0.03 s after it, so the mouth may move a
    little before and after the sound; a pause at the start or end of the audio runs to that end.
    """
    speech = _smooth(voice_activity(samples), onset=round(SPEECH_ONSET_S / VAD_FRAME_S), hangover=round(SPEECH_HANGOVER_S / VAD_FRAME_S))
    levels = frame_levels_db(samples)
    total_s = len(samples) / AUDIO_SAMPLE_RATE
    runs = _runs(speech)
    spans = []
    for k, (start, end, is_speech) in enumerate(runs):
        if is_speech or min(end * VAD_FRAME_S, total_s) - start * VAD_FRAME_S < min_silence_s:
            continue
        start, end = _edges_by_level(runs, k, levels)
        start_s = 0.0 if start == 0 else start * VAD_FRAME_S + MARGIN_AFTER_SPEECH_S
        end_s = total_s if end == len(speech) else end * VAD_FRAME_S - MARGIN_BEFORE_SPEECH_S
        if end_s > start_s:
            spans.append((round(start_s, 3), round(end_s, 3)))
    return Pauses(spans, detector=pause_detector())


def _edges_by_level(runs: list[tuple[int, int, bool]], k: int, levels: np.ndarray) -> tuple[int, int]:
    """The frames [start, end) of the pause `runs[k]` with its edges placed by the level (see
    EDGE_RISE_DB)."""
    start, end, _ = runs[k]
    pause_level, lookback = np.median(levels[start:end]), round(EDGE_LOOKBACK_S / VAD_FRAME_S)
    new_start, new_end = start, end
    if k > 0:  # the speech before the pause ends where the level falls to the pause's
        speech_start = runs[k - 1][0]
        if pause_level <= np.median(levels[speech_start:start]) - EDGE_RISE_DB:
            while new_start > max(speech_start + 1, start - lookback) and levels[new_start - 1] <= pause_level + PAUSE_LEVEL_DB:
                new_start -= 1
    if k + 1 < len(runs):  # the speech after it starts where the level rises out of the pause
        audible = max(pause_level + EDGE_RISE_DB, np.median(levels[end : runs[k + 1][1]]) - SPEECH_RANGE_DB)
        while new_end > max(start + 1, end - lookback) and levels[new_end - 1] > audible:
            new_end -= 1
        new_end = min(new_end, end - 1)
    return new_start, new_end


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
