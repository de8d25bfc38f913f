"""The U-Net compiled for a known set of shapes, so that compiling can never fail a job.

`torch.compile(fullgraph=True)` makes one graph per distinct call (batch size, frames, DeepCache's
full or shallow step) and, past `torch._dynamo.config.recompile_limit` graphs of one code object
(8, shared by every U-Net of the process), raises instead of running. A job meets many shapes:
partial batches, short last windows, guidance on or off, memory-saving passes, the other model
version. So here:

1. Only full 16-frame windows run compiled, at the two batch sizes a batch of `windows_per_batch`
   windows makes (guidance on: twice that, the unconditional and the audio branch; guidance off or
   split into two passes: that), and a smaller batch is padded up to the next of them with copies
   of its last sample, whose outputs are dropped (samples never interact in the U-Net: exact).
2. A full step always returns DeepCache's deep features (dropped unless asked for), so a step is
   one of two graphs: full or shallow. That is 2 x 2 graphs per version, all made by `warm_up`.
3. Anything else (short windows, a memory-recovery pass of a single window) runs the eager
   module, as does any call after warm-up that would still make a graph
   (`torch.compiler.set_stance("eager_on_recompile")`): logged once per shape.
"""

import logging
import threading

import torch
import torch._dynamo

from .config import FRAMES_PER_WINDOW
from .models.unet import UNet3DConditionModel, UNet3DConditionOutput

logger = logging.getLogger("latentsync")

GRAPHS_PER_VERSION = 4  # (batch of P windows, of 2P) x (full step, shallow step)
RECOMPILE_LIMIT = 16 * GRAPHS_PER_VERSION  # dynamo's default of 8 would stop at the second version
AUDIO_TOKENS, AUDIO_DIM = 50, 384  # one Whisper chunk per frame: 10 frames x 5 layers, 384 wide

_stance_lock = threading.Lock()


class CompiledUNet:
    """Calls like the U-Net it wraps; full windows in batches of `windows_per_batch` (or twice that)
    run its compiled graphs, everything else runs eagerly. `eager` is the wrapped module."""

    def __init__(self, unet: UNet3DConditionModel, windows_per_batch: int, backend: str = "inductor"):
        self.eager, self.windows_per_batch = unet, windows_per_batch
        self.batch_sizes = sorted({windows_per_batch, 2 * windows_per_batch})
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self._compiled = torch.compile(unet, fullgraph=True, dynamic=False, backend=backend)
        self._warm = False
        self._logged: set[tuple] = set()

    def __call__(self, sample, timestep, encoder_hidden_states=None, deep_features=None, return_deep_features=False) -> UNet3DConditionOutput:
        batch, frames = sample.shape[0], sample.shape[2]
        size = next((size for size in self.batch_sizes if size >= batch), None)
        if frames != FRAMES_PER_WINDOW or size is None:
            self._log_eager_once(batch, frames)
            return self.eager(sample, timestep, encoder_hidden_states, deep_features, return_deep_features)
        pad = size - batch
        if pad:
            sample, encoder_hidden_states = _pad(sample, pad), _pad(encoder_hidden_states, pad * frames)
            deep_features = None if deep_features is None else _pad(deep_features, pad)
        out = self._compiled(sample, timestep, encoder_hidden_states, deep_features, deep_features is None)
        return UNet3DConditionOutput(
            sample=out.sample[:batch],
            deep_features=out.deep_features[:batch] if return_deep_features and out.deep_features is not None else None,
        )

    def parameters(self, recurse: bool = True):
        return self.eager.parameters(recurse)

    @property
    def dtype(self) -> torch.dtype:
        return self.eager.dtype

    @property
    def device(self) -> torch.device:
        return self.eager.device

    def warm_up(self, latent_size: int) -> int:
        """Make every graph this U-Net will use, for latents of `latent_size`, before any job; then
        calls that would make another graph run eagerly. Returns the graphs made."""
        with _stance_lock:
            torch.compiler.set_stance("default")  # another version's U-Net may have set eager_on_recompile
            made = 0
            try:
                for size in self.batch_sizes:
                    sample = torch.randn(size, self.eager.config.in_channels, FRAMES_PER_WINDOW, latent_size, latent_size, device=self.device, dtype=self.dtype)
                    audio = torch.randn(size * FRAMES_PER_WINDOW, AUDIO_TOKENS, AUDIO_DIM, device=self.device, dtype=self.dtype)
                    timestep = torch.tensor(981, device=self.device)
                    with torch.no_grad():
                        full = self._compiled(sample, timestep, audio, None, True)
                        self._compiled(sample, timestep, audio, full.deep_features, False)
                    made += 2
            finally:
                torch.compiler.set_stance("eager_on_recompile")
        self._warm = True
        return made

    def _log_eager_once(self, batch: int, frames: int) -> None:
        if (batch, frames) not in self._logged:
            self._logged.add((batch, frames))
            logger.info("U-Net calls of %d samples x %d frames run uncompiled (compiled: full windows in batches of %s)",
                        batch, frames, " or ".join(map(str, self.batch_sizes)))


def _pad(tensor: torch.Tensor, count: int) -> torch.Tensor:
    """`tensor` with `count` copies of its last row appended (along the batch dimension)."""
    return torch.cat([tensor, tensor[-1:].expand(count, *tensor.shape[1:])])
