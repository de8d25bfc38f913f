"""The LatentSync diffusion model: loading its parts, and one 16-frame window through it.

The algorithm, as the official pipeline runs it:

1. The aligned faces are normalised to [-1, 1]; the training mask blanks their lower half.
2. The VAE encodes the masked faces and the full faces (the "reference") into latents.
3. Starting from noise, DDIM denoises for `num_inference_steps`. Each step feeds the U-Net
   13 channels (noisy latents 4 + mask 1 + masked-face latents 4 + reference latents 4) and the
   per-frame Whisper audio features; classifier-free guidance contrasts it with silent audio.
4. The VAE decodes the result, and only the masked (mouth) region is kept: the rest of each face
   is pasted back from the input.
"""

from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler

from .config import SCHEDULER_CONFIG_DIR, VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR, load_yaml
from .files import require_weight_file
from .models.unet import UNet3DConditionModel


def model_dtype(device) -> torch.dtype:
    """float16 on CUDA GPUs of compute capability 8 or newer, float32 elsewhere (as the official)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.float16
    return torch.float32


def default_device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """CUDA when available, else the CPU, with `model_dtype`."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, model_dtype(device)


def load_unet(files, device="cpu", dtype=torch.float32) -> UNet3DConditionModel:
    """The U-Net of `files` (a `weights.ModelFiles`: config + checkpoint), loaded without a second copy in memory."""
    return UNet3DConditionModel.from_checkpoint(load_yaml(files.unet_config)["model"], files.unet_checkpoint, device, dtype)


def load_scheduler() -> DDIMScheduler:
    """The DDIM scheduler the model was released with (configs/scheduler_config.json)."""
    return DDIMScheduler.from_pretrained(SCHEDULER_CONFIG_DIR)


def load_vae(vae_dir, device="cpu", dtype=torch.float32) -> AutoencoderKL:
    """The SD VAE (stabilityai/sd-vae-ft-mse) from a diffusers folder with config.json + safetensors."""
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype)
    return vae.to(device).eval().requires_grad_(False)


def load_training_mask(path, resolution: int) -> torch.Tensor:
    """The mouth mask the U-Net was trained with, as (3, resolution, resolution) floats in [0, 1].

    White (1) keeps the input face, black (0) is regenerated. Resized with Lanczos like the official.
    """
    image = cv2.imread(str(require_weight_file(path, "The training mask")), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"The training mask {path} is not an image; run `python -m scripts.download_weights` to fetch it again.")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def encode_faces(vae: AutoencoderKL, pixels: torch.Tensor, generator=None, sample_posterior=True) -> torch.Tensor:
    """VAE-encode (f, 3, H, W) pixels in [-1, 1] into scaled latents (1, 4, f, H/8, W/8)."""
    posterior = vae.encode(pixels).latent_dist
    latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
    latents = (latents - VAE_SHIFT_FACTOR) * VAE_SCALING_FACTOR
    return latents.permute(1, 0, 2, 3).unsqueeze(0)


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, frames_per_batch: int | None = None) -> torch.Tensor:
    """VAE-decode latents (1, 4, f, h, w) into (f, 3, H, W) pixels in [-1, 1] (unclamped).

    `frames_per_batch` bounds how many frames go through the decoder at once (memory), without
    changing the result.
    """
    latents = latents[0].permute(1, 0, 2, 3) / VAE_SCALING_FACTOR + VAE_SHIFT_FACTOR
    step = frames_per_batch or len(latents)
    return torch.cat([vae.decode(part).sample for part in latents.split(step)])


def initial_noise(generator, latent_size: int, num_frames: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """The starting latents: ONE noise frame, repeated over the frames (1, 4, f, h, w), as the official draws it."""
    noise = torch.randn((1, 4, 1, latent_size, latent_size), generator=generator, device=generator_device(generator, device), dtype=dtype)
    return noise.to(device).repeat(1, 1, num_frames, 1, 1)


def generator_device(generator, fallback):
    return generator.device if generator is not None else fallback


@contextmanager
def deepcache(unet, scheduler, cache_interval: int = 3, cache_branch_id: int = 0):
    """Reuse the U-Net's deep features between steps (DeepCache), as the official `--enable_deepcache` does.

    Every `cache_interval`-th step runs the full U-Net; the steps between recompute only the
    shallowest branch and reuse the cached deeper outputs. Wraps the module forwards for the
    duration of the `with` block only.
    """
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=SimpleNamespace(unet=unet, scheduler=scheduler))
    helper.set_params(cache_interval=cache_interval, cache_branch_id=cache_branch_id)
    helper.enable()
    try:
        yield helper
    finally:
        helper.disable()


@torch.no_grad()
def denoise_window(
    unet,
    vae: AutoencoderKL,
    scheduler: DDIMScheduler,
    faces: torch.Tensor,
    audio_embeds: torch.Tensor,
    mask: torch.Tensor,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.5,
    initial_latents: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sample_posterior: bool = True,
    enable_deepcache: bool = False,
    split_guidance_batch: bool = False,
    decode_frames_per_batch: int | None = None,
) -> torch.Tensor:
    """Regenerate the mouth region of one window of aligned faces to match its audio.

    Args:
        unet: the LatentSync U-Net.
        vae, scheduler: the SD VAE and the DDIM scheduler.
        faces: (f, 3, H, W) uint8 aligned face crops at the model resolution (f <= 16 usually).
        audio_embeds: (f, 50, 384) Whisper features, one chunk per frame.
        mask: (3, H, W) training mask from `load_training_mask` (1 = keep, 0 = regenerate).
        initial_latents: (1, 4, f, H/8, W/8) starting noise; drawn from `generator` when None.
        generator: random source for the noise and the VAE posterior samples. Draw order as the
            official: initial noise (if not given), masked-face latents, reference latents.
        sample_posterior: sample the VAE posterior (official) or take its mean (deterministic).
        enable_deepcache: reuse deep U-Net features between steps (interval 3, branch 0).
        split_guidance_batch: run the unconditional and audio branches as two U-Net passes instead
            of one batch of two (same result, less peak memory).
        decode_frames_per_batch: decode this many frames at a time (same result, less memory).

    Returns:
        (f, 3, H, W) faces in [-1, 1]: decoded mouth region, input pixels elsewhere.
    """
    device, dtype = unet_device_dtype(unet)
    if initial_latents is None:
        initial_latents = initial_noise(generator, faces.shape[-1] // 8, len(faces), device, dtype)
    pixels, conditioning = encode_window(vae, faces, mask, generator, sample_posterior, device, dtype)
    latents = denoising_loop(
        unet, scheduler, initial_latents.to(device, dtype) * scheduler.init_noise_sigma, conditioning, audio_embeds.to(device, dtype),
        num_inference_steps, guidance_scale, generator, enable_deepcache, split_guidance_batch,
    )
    decoded = decode_latents(vae, latents.to(vae.dtype), decode_frames_per_batch).float()
    mask_full = mask[0:1].to(device, torch.float32)
    return decoded * (1 - mask_full) + pixels * mask_full  # only the mouth region is new


def encode_window(vae, faces: torch.Tensor, mask: torch.Tensor, generator, sample_posterior: bool, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2: the faces as pixels in [-1, 1], and the U-Net's 9 conditioning channels
    (1, 9, f, h, w): the mask, the masked faces' latents and the reference (full faces') latents,
    encoded in that order (the order of the generator's draws when the posterior is sampled)."""
    num_frames, _, height, width = faces.shape
    pixels = (faces.to(device, torch.float32) / 255.0 - 0.5) / 0.5
    mask = mask.to(device, torch.float32)
    mask_1ch = mask[0:1].expand(num_frames, 1, height, width)
    mask_latents = F.interpolate(mask_1ch, size=(height // 8, width // 8)).permute(1, 0, 2, 3).unsqueeze(0)
    masked_latents = encode_faces(vae, (pixels * mask).to(vae.dtype), generator, sample_posterior)
    reference_latents = encode_faces(vae, pixels.to(vae.dtype), generator, sample_posterior)
    return pixels, torch.cat([mask_latents.to(dtype), masked_latents.to(dtype), reference_latents.to(dtype)], dim=1)


def denoising_loop(unet, scheduler, latents, conditioning, audio_embeds, num_inference_steps, guidance_scale, generator,
                   enable_deepcache=False, split_guidance_batch=False) -> torch.Tensor:
    """Step 3: DDIM from `latents` (already scaled by the scheduler's initial sigma), with
    classifier-free guidance against silent audio when `guidance_scale` > 1."""
    do_guidance = guidance_scale > 1.0
    if do_guidance:
        audio_embeds = torch.cat([torch.zeros_like(audio_embeds), audio_embeds])  # unconditional first
        conditioning = torch.cat([conditioning, conditioning])
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    branch_caches = [{}, {}]  # DeepCache state per guidance branch when they run as separate passes
    with deepcache(unet, scheduler) if enable_deepcache else nullcontext() as cache_helper:
        for t in scheduler.timesteps:
            latent_input = torch.cat([latents, latents]) if do_guidance else latents
            latent_input = scheduler.scale_model_input(latent_input, t)
            unet_input = torch.cat([latent_input, conditioning], dim=1)
            if do_guidance and split_guidance_batch:
                noise_pred = _predict_noise_in_two_passes(unet, unet_input, t, audio_embeds, cache_helper, branch_caches)
            else:
                noise_pred = unet(unet_input, t, encoder_hidden_states=audio_embeds).sample
            if do_guidance:
                noise_uncond, noise_audio = noise_pred.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_audio - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, eta=0.0, generator=generator).prev_sample
    return latents


def _predict_noise_in_two_passes(unet, unet_input, t, audio_embeds, cache_helper, branch_caches) -> torch.Tensor:
    """The guidance batch as two U-Net passes (unconditional, then audio): half the activation memory.

    With DeepCache on, each branch must reuse its own cached features, so the helper's cache is
    swapped per pass (its wrapped forwards read `cached_output` at call time).
    """
    outputs = []
    for branch_input, branch_audio, cache in zip(unet_input.chunk(2), audio_embeds.chunk(2), branch_caches):
        if cache_helper is not None:
            cache_helper.cached_output = cache
        outputs.append(unet(branch_input, t, encoder_hidden_states=branch_audio).sample)
    return torch.cat(outputs)


def unet_device_dtype(unet) -> tuple[torch.device, torch.dtype]:
    parameter = next(unet.parameters())
    return parameter.device, parameter.dtype
