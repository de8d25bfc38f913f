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

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler

from .config import SCHEDULER_CONFIG_DIR, VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR, load_yaml
from .device import to_device
from .files import require_weight_file
from .models.unet import UNet3DConditionModel

DEEPCACHE_INTERVAL = 3  # with DeepCache, every third step runs the whole U-Net (the official's setting)


def load_unet(files, device="cpu", dtype=torch.float32) -> UNet3DConditionModel:
    """The U-Net of `files` (a `weights.ModelFiles`: config + checkpoint), loaded without a second copy in memory."""
    return UNet3DConditionModel.from_checkpoint(load_yaml(files.unet_config)["model"], files.unet_checkpoint, device, dtype)


def load_scheduler() -> DDIMScheduler:
    """The DDIM scheduler the model was released with (configs/scheduler_config.json)."""
    return DDIMScheduler.from_pretrained(SCHEDULER_CONFIG_DIR)


def load_vae(vae_dir, device="cpu", dtype=torch.float32) -> AutoencoderKL:
    """The SD VAE (stabilityai/sd-vae-ft-mse) from a diffusers folder with config.json + safetensors."""
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype, low_cpu_mem_usage=False)  # the small VAE needs no accelerate
    return vae.to(device).eval().requires_grad_(False)


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


def standard_normal(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws from `generator` (or torch's global one), made on the CPU in float32,
    then moved to `like`'s device and dtype."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)


def encode_faces(vae: AutoencoderKL, pixels: torch.Tensor, generator=None, sample_posterior=True) -> torch.Tensor:
    """VAE-encode (f, 3, H, W) pixels in [-1, 1] into scaled latents (1, 4, f, H/8, W/8): a sample of
    the posterior (official; mean + std x a standard normal draw), or its mean."""
    posterior = vae.encode(pixels).latent_dist
    latents = posterior.mean + posterior.std * standard_normal(posterior.mean.shape, generator, posterior.mean) if sample_posterior else posterior.mode()
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
    noise = torch.randn((1, 4, 1, latent_size, latent_size), generator=generator, dtype=torch.float32)
    return noise.to(device, dtype).repeat(1, 1, num_frames, 1, 1)


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
    num_inference_steps: int = 20,
    guidance_scale: float = 1.5,
    initial_latents: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sample_posterior: bool = True,
    enable_deepcache: bool = False,
    split_guidance_batch: bool = False,
    decode_frames_per_batch: int | None = None,
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
        decode_frames_per_batch: decode this many frames at a time (same result, less memory).

    Returns:
        (n, f, 3, H, W) faces in [-1, 1]: decoded mouth region, input pixels elsewhere.
    """
    device, dtype = unet_device_dtype(unet)
    starts, pixels, conditioning = [], [], []
    for window in faces:
        start = initial_latents if initial_latents is not None else initial_noise(generator, window.shape[-1] // 8, len(window), device, dtype)
        window_pixels, window_conditioning = encode_window(vae, window, mask, generator, sample_posterior, device, dtype)
        starts.append(start.to(device, dtype) * scheduler.init_noise_sigma)
        pixels.append(window_pixels)
        conditioning.append(window_conditioning)
    latents = denoising_loop(
        unet, scheduler, torch.cat(starts), torch.cat(conditioning), audio_embeds.flatten(0, 1).to(device, dtype),
        num_inference_steps, guidance_scale, enable_deepcache, split_guidance_batch,
    )
    mask_full = mask[0:1].to(device, torch.float32)
    results = []
    for window_latents, window_pixels in zip(latents.split(1), pixels):
        decoded = decode_latents(vae, window_latents.to(vae.dtype), decode_frames_per_batch).float()
        results.append(decoded * (1 - mask_full) + window_pixels * mask_full)  # only the mouth region is new
    return torch.stack(results)


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
