"""The LatentSync diffusion model: loading its parts, and 16-frame windows through it.

The algorithm, as the official pipeline runs it for one window:

1. The aligned faces are normalised to [-1, 1]; the training mask blanks their lower half.
2. The VAE encodes the masked faces and the full faces (the "reference") into latents.
3. Starting from noise, DDIM denoises for `num_inference_steps`. Each step feeds the U-Net
   13 channels (noisy latents 4 + mask 1 + masked-face latents 4 + reference latents 4) and the
   per-frame Whisper audio features; classifier-free guidance contrasts it with silent audio.
4. The VAE decodes the result, and only the masked (mouth) region is kept: the rest of each face
   is pasted back from the input.

`denoise_windows` takes several windows of the same length through step 3 as one batch; steps
1, 2 and 4 still run window by window, so the random draws come in the same order and each
window gets the result it gets alone. Random numbers are drawn on the CPU in float32 whatever
the model's device and dtype, so a seed means the same noise on every machine.
"""

import logging

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from .config import DEFAULT_GUIDANCE_SCALE, DEFAULT_INFERENCE_STEPS, SCHEDULER_CONFIG_DIR, VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR, load_yaml
from .device import to_device, with_fast_layout
from .files import require_weight_file
from .models.unet import UNet3DConditionModel

logger = logging.getLogger("latentsync")

DEEPCACHE_INTERVAL = 3  # with DeepCache, every third step runs the whole U-Net (the official's setting)


def load_unet(files, device="cpu", dtype=torch.float32) -> UNet3DConditionModel:
    """The U-Net of `files` (a `weights.ModelFiles`: config + checkpoint), loaded without a second copy in memory."""
    unet = UNet3DConditionModel.from_checkpoint(load_yaml(files.unet_config)["model"], files.unet_checkpoint, device, dtype, config_path=files.unet_config)
    return with_fast_layout(unet)


def load_scheduler() -> DDIMScheduler:
    """The DDIM scheduler the model was released with (configs/scheduler_config.json)."""
    return DDIMScheduler.from_pretrained(SCHEDULER_CONFIG_DIR)


def load_vae(vae_dir, device="cpu", dtype=torch.float32) -> AutoencoderKL:
    """The SD VAE (stabilityai/sd-vae-ft-mse) from a diffusers folder with config.json + safetensors."""
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype, low_cpu_mem_usage=False)  # the small VAE needs no accelerate
    return with_fast_layout(vae.to(device).eval().requires_grad_(False))


def load_training_mask(path, resolution: int) -> torch.Tensor:
    """The mouth mask the U-Net was trained with, as (3, resolution, resolution) floats in [0, 1].

    White (1) keeps the input face, black (0) is regenerated. Resized with Lanczos like the official.
    """
    import cv2  # only here: the model itself runs without OpenCV

    image = cv2.imread(str(require_weight_file(path, "The training mask")), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"The training mask {path} is not an image; run `python -m scripts.download_weights` to fetch it again.")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, frames_per_batch: int | None = None) -> torch.Tensor:
    """VAE-decode latents (1, 4, f, h, w) into (f, 3, H, W) pixels in [-1, 1] (unclamped).

    `frames_per_batch` bounds how many frames go through the decoder at once (memory), without
    changing the result.
    """
    latents = latents[0].permute(1, 0, 2, 3) / VAE_SCALING_FACTOR + VAE_SHIFT_FACTOR
    step = frames_per_batch or len(latents)
    return torch.cat([vae.decode(part).sample for part in latents.split(step)])


def decode_in_float32(vae: AutoencoderKL, latents: torch.Tensor, frames_per_batch: int | None = None) -> torch.Tensor:
    """Decode once more with the VAE in float32: the SD VAE's decoder can overflow float16 into
    Inf/NaN on some latents. Raises FloatingPointError if float32 gives non-finite values too."""
    logger.warning("the VAE decoded non-finite values in %s; decoding that window again in float32", vae.dtype)
    dtype = vae.dtype
    vae.to(torch.float32)  # callers hold the model lock: no other batch uses the VAE meanwhile
    try:
        decoded = decode_latents(vae, latents.float(), frames_per_batch)
    finally:
        vae.to(dtype)
    if not torch.isfinite(decoded).all():
        raise FloatingPointError("the VAE decoded non-finite values even in float32 (the U-Net's latents are not finite)")
    return decoded


def noise_frame(generator, latent_size: tuple[int, int]) -> torch.Tensor:
    """One frame of starting noise (1, 4, 1, h, w), drawn on the CPU in float32."""
    return torch.randn((1, 4, 1, *latent_size), generator=generator, dtype=torch.float32)


def initial_noise(generator, latent_size: int, num_frames: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """The starting latents: ONE noise frame, repeated over the frames (1, 4, f, h, w), as the official draws it."""
    return noise_frame(generator, (latent_size, latent_size)).to(device, dtype).repeat(1, 1, num_frames, 1, 1)


@torch.no_grad()
def denoise_window(unet, vae: AutoencoderKL, scheduler: DDIMScheduler, faces: torch.Tensor, audio_embeds: torch.Tensor, mask: torch.Tensor, **settings) -> torch.Tensor:
    """One window: (f, 3, H, W) uint8 faces and (f, 50, 384) audio features in, (f, 3, H, W)
    faces in [-1, 1] out. `settings` as for `denoise_windows`."""
    return denoise_windows(unet, vae, scheduler, faces[None], audio_embeds[None], mask, **settings)[0]


@torch.no_grad()
def denoise_windows(
    unet,
    vae: AutoencoderKL,
    scheduler: DDIMScheduler,
    faces: torch.Tensor,
    audio_embeds: torch.Tensor,
    mask: torch.Tensor,
    num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    initial_latents: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sample_posterior: bool = True,
    enable_deepcache: bool = False,
    split_guidance_batch: bool = False,
    vae_frames_per_batch: int | None = None,
) -> torch.Tensor:
    """Regenerate the mouth region of windows of aligned faces to match their audio.

    Args:
        unet: the LatentSync U-Net.
        vae, scheduler: the SD VAE and the DDIM scheduler.
        faces: (n, f, 3, H, W) uint8 aligned face crops at the model resolution: n windows of f frames.
        audio_embeds: (n, f, 50, 384) Whisper features, one chunk per frame.
        mask: (3, H, W) training mask from `load_training_mask` (1 = keep, 0 = regenerate).
        initial_latents: (1, 4, f, H/8, W/8) starting noise shared by the windows; when None,
            each window draws its own from `generator`.
        generator: a CPU generator for the noise and the VAE posterior samples. Draw order as the
            official, window after window: initial noise (if not given), masked-face latents,
            reference latents.
        sample_posterior: sample the VAE posterior (official) or take its mean (deterministic).
        enable_deepcache: reuse deep U-Net features between steps (interval 3, branch 0).
        split_guidance_batch: run the unconditional and audio branches as two U-Net passes instead
            of one batch of two (same result, less peak memory).
        vae_frames_per_batch: encode and decode this many frames at a time (same result, less memory).

    Returns:
        (n, f, 3, H, W) faces in [-1, 1]: decoded mouth region, input pixels elsewhere.
    """
    device, dtype = unet_device_dtype(unet)
    windows, frames, _, height, width = faces.shape
    latent_size = (height // 8, width // 8)

    # 1-2. The faces in [-1, 1]; the masked and the full faces of every window through the VAE in one call.
    pixels = (faces.to(device, torch.float32) / 255.0 - 0.5) / 0.5
    mask = mask.to(device, torch.float32)
    both = torch.stack([pixels * mask, pixels], dim=1).flatten(0, 2)  # window by window: masked frames, then full ones
    # In the layout the faces came in (a job's crops are channels-last, (H, W, 3) from the aligner),
    # so the convolutions compute exactly what they did on each window's faces alone.
    layout = torch.channels_last if pixels[0].is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    posterior = _encode(vae, both.to(vae.dtype, memory_format=layout), vae_frames_per_batch)
    # The random draws, made on the CPU in the official order and moved to the device in one copy.
    draws = draw_window_noise(generator, windows, frames, latent_size, initial_latents is None, sample_posterior)
    per_window = to_device(draws, device, torch.float32).view(windows, -1)
    noise_frame_size = 4 * latent_size[0] * latent_size[1] if initial_latents is None else 0
    if initial_latents is None:
        start = per_window[:, :noise_frame_size].view(windows, 4, 1, *latent_size).repeat(1, 1, frames, 1, 1)
    else:
        start = initial_latents.to(device, torch.float32).expand(windows, -1, -1, -1, -1)
    if sample_posterior:
        latents = posterior.mean + posterior.std * per_window[:, noise_frame_size:].reshape(posterior.mean.shape).to(posterior.mean.dtype)
    else:
        latents = posterior.mode()
    latents = ((latents - VAE_SHIFT_FACTOR) * VAE_SCALING_FACTOR).unflatten(0, (windows, 2, frames)).permute(0, 1, 3, 2, 4, 5)
    mask_latents = F.interpolate(mask[0:1].expand(frames, 1, height, width), size=latent_size).permute(1, 0, 2, 3)[None]
    conditioning = torch.cat([mask_latents.expand(windows, -1, -1, -1, -1), latents[:, 0], latents[:, 1]], dim=1).to(dtype)
    start = start.to(dtype) * scheduler.init_noise_sigma

    # 3. DDIM with classifier-free guidance.
    latents = denoising_loop(
        unet, scheduler, start, conditioning, audio_embeds.flatten(0, 1).to(device, dtype),
        num_inference_steps, guidance_scale, enable_deepcache, split_guidance_batch,
    )

    # 4. Decode, and keep only the mouth region of what was decoded.
    mask_full = mask[0:1]
    results = []
    for window_latents, window_pixels in zip(latents.split(1), pixels):
        decoded = decode_latents(vae, window_latents.to(vae.dtype), vae_frames_per_batch).float()
        if not torch.isfinite(decoded).all():
            decoded = decode_in_float32(vae, window_latents, vae_frames_per_batch)
        results.append(decoded * (1 - mask_full) + window_pixels * mask_full)  # only the mouth region is new
    return torch.stack(results)


def draw_window_noise(generator, windows: int, frames: int, latent_size: tuple[int, int], initial_noise: bool, posterior: bool) -> torch.Tensor:
    """Every random number a batch of windows needs, drawn on the CPU in float32 in the official
    order, as one flat tensor of equal parts per window: its initial noise frame (if drawn here),
    then the posterior samples of its masked faces and of its reference faces (if sampled)."""
    draws = []
    for _ in range(windows):
        if initial_noise:
            draws.append(noise_frame(generator, latent_size).flatten())
        if posterior:
            draws += [torch.randn((frames, 4, *latent_size), generator=generator, dtype=torch.float32).flatten() for _ in range(2)]
    return torch.cat(draws) if draws else torch.empty(windows, 0)


def _encode(vae: AutoencoderKL, pixels: torch.Tensor, frames_per_batch: int | None):
    """The VAE posterior of (n, 3, H, W) pixels, `frames_per_batch` at a time (same result)."""
    if frames_per_batch is None or frames_per_batch >= len(pixels):
        return vae.encode(pixels).latent_dist
    parts = [vae.encode(part).latent_dist for part in pixels.split(frames_per_batch)]
    return DiagonalGaussianDistribution(torch.cat([part.parameters for part in parts]))


def denoising_loop(unet, scheduler, latents, conditioning, audio_embeds, num_inference_steps, guidance_scale,
                   enable_deepcache=False, split_guidance_batch=False) -> torch.Tensor:
    """Step 3: DDIM from `latents` (n, 4, f, h, w), already scaled by the scheduler's initial sigma,
    with classifier-free guidance against silent audio when `guidance_scale` > 1.

    The scheduler works on the CPU with the timesteps as Python numbers and the U-Net reads them
    from one copy on its device, so no step waits for the GPU.
    """
    do_guidance = guidance_scale > 1.0
    if do_guidance:
        audio_embeds = torch.cat([torch.zeros_like(audio_embeds), audio_embeds])  # unconditional first
        conditioning = torch.cat([conditioning, conditioning])
    scheduler.set_timesteps(num_inference_steps)
    on_device = to_device(scheduler.timesteps, latents.device)
    passes = 2 if do_guidance and split_guidance_batch else 1
    deep_features = [None] * passes  # DeepCache: per guidance branch when they run as separate passes
    for step, t in enumerate(scheduler.timesteps.tolist()):
        refresh = not enable_deepcache or step % DEEPCACHE_INTERVAL == 0
        latent_input = scheduler.scale_model_input(torch.cat([latents, latents]) if do_guidance else latents, t)
        unet_inputs = torch.cat([latent_input, conditioning], dim=1).chunk(passes)
        outputs = []
        for k, (unet_input, audio) in enumerate(zip(unet_inputs, audio_embeds.chunk(passes))):
            output = unet(unet_input, on_device[step], encoder_hidden_states=audio,
                          deep_features=None if refresh else deep_features[k], return_deep_features=enable_deepcache and refresh)
            if enable_deepcache and refresh:
                deep_features[k] = output.deep_features
            outputs.append(output.sample)
        noise_pred = torch.cat(outputs) if passes > 1 else outputs[0]
        if do_guidance:
            noise_uncond, noise_audio = noise_pred.chunk(2)
            noise_pred = noise_uncond + guidance_scale * (noise_audio - noise_uncond)
        latents = scheduler.step(noise_pred, t, latents, eta=0.0).prev_sample
    return latents


def unet_device_dtype(unet) -> tuple[torch.device, torch.dtype]:
    parameter = next(unet.parameters())
    return parameter.device, parameter.dtype
