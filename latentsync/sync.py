"""Audio-visual sync confidence with SyncNet (the LSE-C metric of the lip-sync literature).

SyncNet embeds 5 frames of a face and the 0.2 s of audio (20 MFCC frames) that go with them; the
better the sync, the closer the two embeddings. The score compares, over the whole span, the mean
embedding distance at the best audio offset (-15..+15 frames) with the median distance over all
offsets: confidence = median - minimum. In sync, the best offset is 0 and the confidence high.

The network and the arithmetic follow syncnet_python, whose `syncnet_v2.model` weights load here.
We feed it our own aligned face crops (resized to 224x224), so no second face detector runs.
"""

from dataclasses import dataclass

import cv2
import numpy as np
import python_speech_features
import torch
from torch import nn

from .config import AUDIO_SAMPLE_RATE
from .files import require_weight_file

VSHIFT = 15  # offsets searched, in video frames, each way
FRAMES_PER_SAMPLE = 5  # video frames per lip embedding
MFCC_PER_SAMPLE = 20  # MFCC frames (10 ms each) per audio embedding
MIN_FRAMES = 10  # spans shorter than this (0.4 s) are not scored
INPUT_SIZE = 224


def _conv_block(conv: nn.Module, norm: nn.Module, pool: nn.Module | None = None) -> list[nn.Module]:
    return [conv, norm, nn.ReLU(inplace=True)] + ([pool] if pool is not None else [])


class SyncNet(nn.Module):
    """syncnet_python's network "S": module names and indices match syncnet_v2.model."""

    def __init__(self, embedding_size: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv_block(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.MaxPool2d(1, 1)),
            *_conv_block(nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192), nn.MaxPool2d(3, (1, 2))),
            *_conv_block(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_block(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_block(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.MaxPool2d(3, 2)),
            *_conv_block(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_size))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_size))
        self.netcnnlip = nn.Sequential(
            *_conv_block(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96), nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_block(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256),
                         nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1))),
            *_conv_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_block(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC windows -> (N, embedding)"""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def embed_lips(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR 0..255 -> (N, embedding)"""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


@dataclass
class SyncScore:
    confidence: float  # median - minimum of the mean distance over offsets (LSE-C)
    offset: int  # audio offset in video frames at the minimum; 0 when in sync
    min_distance: float  # the minimum mean distance (LSE-D)
    distances: np.ndarray  # mean distance per offset, -15..+15 order as syncnet_python's


def confidence_from_distances(mean_distances, vshift: int = VSHIFT) -> tuple[float, int, float]:
    """(confidence, offset, minimum) from the mean distance at each of the 2*vshift+1 offsets."""
    distances = torch.tensor(np.array(mean_distances, dtype=np.float64))
    minimum, index = torch.min(distances, 0)
    return float(torch.median(distances) - minimum), int(vshift - index), float(minimum)


def offset_distances(lip: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """(frames, 2*vshift+1) distances between each lip embedding and the audio embeddings around
    it; audio beyond either end counts as a zero embedding (as syncnet_python pads)."""
    padded = torch.nn.functional.pad(audio, (0, 0, vshift, vshift))
    windows = padded.unfold(0, 2 * vshift + 1, 1).transpose(1, 2)  # (frames, offsets, dim)
    return torch.nn.functional.pairwise_distance(lip[:, None, :].expand_as(windows), windows)


def mfcc(samples: np.ndarray) -> np.ndarray:
    """13 MFCCs per 10 ms, from float samples in [-1, 1] at 16 kHz, on the int16 scale SyncNet saw."""
    return python_speech_features.mfcc(np.round(samples * 32768.0), AUDIO_SAMPLE_RATE).T.astype(np.float32)


class SyncNetScorer:
    """Scores how well a span of generated faces matches its audio."""

    def __init__(self, model_path, device="cpu", batch_size: int = 32):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_syncnet(model_path).to(self.device).eval()

    @staticmethod
    def prepare_faces(faces_rgb: np.ndarray) -> np.ndarray:
        """Aligned RGB face crops (N, H, W, 3) -> SyncNet's input: (N, 224, 224, 3) BGR uint8."""
        return np.stack([cv2.cvtColor(cv2.resize(face, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR) for face in faces_rgb])

    @torch.no_grad()
    def score(self, faces_rgb: np.ndarray, samples: np.ndarray, fps: float = 25.0) -> SyncScore | None:
        """Sync of `faces_rgb` (N, H, W, 3) against the 16 kHz `samples` covering the same frames.

        Returns None for spans shorter than MIN_FRAMES frames.
        """
        if faces_rgb.ndim != 4 or faces_rgb.shape[-1] != 3:
            raise ValueError(f"faces must be (frames, height, width, 3) RGB, got shape {faces_rgb.shape}.")
        expected = len(faces_rgb) / fps * AUDIO_SAMPLE_RATE
        if abs(len(samples) - expected) > AUDIO_SAMPLE_RATE / fps:
            raise ValueError(f"{len(samples)} audio samples do not cover {len(faces_rgb)} frames at {fps} fps ({expected:.0f} expected).")
        frames = min(len(faces_rgb), int(len(samples) / AUDIO_SAMPLE_RATE * fps))
        if frames < MIN_FRAMES:
            return None
        faces = torch.from_numpy(self.prepare_faces(faces_rgb[:frames])).permute(3, 0, 1, 2).float()  # (3, T, 224, 224)
        coefficients = torch.from_numpy(mfcc(samples))  # (13, T_mfcc)
        count = frames - FRAMES_PER_SAMPLE  # windows starting at 0 .. frames - 6, as syncnet_python
        starts = [int(round(i * 100 / fps)) for i in range(count)]
        coefficients = torch.nn.functional.pad(coefficients, (0, max(0, starts[-1] + MFCC_PER_SAMPLE - coefficients.shape[1])))
        lip, audio = [], []
        for first in range(0, count, self.batch_size):
            batch = range(first, min(count, first + self.batch_size))
            clips = torch.stack([faces[:, i : i + FRAMES_PER_SAMPLE] for i in batch]).to(self.device)
            windows = torch.stack([coefficients[None, :, starts[i] : starts[i] + MFCC_PER_SAMPLE] for i in batch]).to(self.device)
            lip.append(self.model.embed_lips(clips).float().cpu())
            audio.append(self.model.embed_audio(windows).float().cpu())
        distances = offset_distances(torch.cat(lip), torch.cat(audio)).mean(0)
        confidence, offset, minimum = confidence_from_distances(distances)
        return SyncScore(confidence, offset, minimum, distances.numpy())


def load_syncnet(model_path) -> SyncNet:
    """syncnet_v2.model: a saved state dict without BatchNorm's num_batches_tracked counters."""
    model = SyncNet()
    state = torch.load(require_weight_file(model_path, "The SyncNet weights file"), map_location="cpu", weights_only=True)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{model_path} is not a SyncNet v2 state dict: missing {missing[:3]}, unexpected {unexpected[:3]}.")
    model.load_state_dict(state, strict=False)
    return model
