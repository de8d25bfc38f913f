"""The LatentSync 3D U-Net, compatible with the released checkpoints (`latentsync_unet.pt`).

It is Stable Diffusion 1.5's U-Net applied to a window of frames: tensors are (batch, channels,
frames, height, width). Convolutions and spatial attention work on each frame; the ResNet group
norms pool statistics over the whole window; temporal "motion modules" attend across frames at
each pixel; and the cross-attention looks at that frame's Whisper audio features instead of text.
Module and parameter names follow the official implementation so its state dicts load strictly.
"""

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ..files import require_weight_file

# Every `model:` field of the official configs, with the defaults the official model uses.
DEFAULT_CONFIG = dict(
    sample_size=None,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    mid_block_type="UNetMidBlock3DCrossAttn",
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    only_cross_attention=False,  # accepted for config compatibility; the official blocks ignore it
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1.0,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1280,
    attention_head_dim=8,  # the official passes this as the NUMBER of heads
    dual_cross_attention=False,
    use_linear_projection=False,
    class_embed_type=None,
    num_class_embeds=None,
    upcast_attention=False,  # accepted; attention runs through scaled_dot_product_attention either way
    resnet_time_scale_shift="default",
    use_inflated_groupnorm=False,
    use_motion_module=False,
    motion_module_resolutions=(1, 2, 4, 8),
    motion_module_mid_block=False,
    motion_module_decoder_only=False,
    motion_module_type=None,
    motion_module_kwargs=None,
    add_audio_layer=False,
)

MOTION_MODULE_DEFAULTS = dict(
    num_attention_heads=8,
    num_transformer_block=2,
    attention_block_types=("Temporal_Self", "Temporal_Self"),
    cross_frame_attention_mode=None,
    temporal_position_encoding=False,
    temporal_position_encoding_max_len=24,
    temporal_attention_dim_div=1,
    zero_initialize=True,
)


@dataclass
class UNet3DConditionOutput:
    sample: torch.Tensor
    deep_features: torch.Tensor | None = None  # for DeepCache: see UNet3DConditionModel.forward


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """(b, c, f, h, w) -> (b*f, c, h, w)"""
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)


def batch_to_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(b*f, c, h, w) -> (b, c, f, h, w)"""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).transpose(1, 2)


class FrameConv(nn.Conv2d):
    """A 2D convolution applied to every frame."""

    def forward(self, x):
        return batch_to_frames(super().forward(frames_to_batch(x)), x.shape[2])


class FrameGroupNorm(nn.GroupNorm):
    """Group norm with statistics per frame (the `use_inflated_groupnorm` variant)."""

    def forward(self, x):
        return batch_to_frames(super().forward(frames_to_batch(x)), x.shape[2])


def group_norm(channels, groups, eps, per_frame: bool) -> nn.GroupNorm:
    # A plain GroupNorm on a 5D tensor pools statistics over all frames of the window.
    return (FrameGroupNorm if per_frame else nn.GroupNorm)(num_groups=groups, num_channels=channels, eps=eps)


def activation(name: str) -> nn.Module:
    if name in ("silu", "swish"):
        return nn.SiLU()
    if name == "mish":
        return nn.Mish()
    raise ValueError(f"Unsupported act_fn {name!r}; the official U-Net supports silu, swish and mish.")


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels, out_channels, temb_channels, groups, eps, act_fn, time_scale_shift, output_scale_factor, per_frame_norm):
        super().__init__()
        self.time_scale_shift = time_scale_shift
        self.output_scale_factor = output_scale_factor
        self.norm1 = group_norm(in_channels, groups, eps, per_frame_norm)
        self.conv1 = FrameConv(in_channels, out_channels, kernel_size=3, padding=1)
        if time_scale_shift == "default":
            self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        elif time_scale_shift == "scale_shift":
            self.time_emb_proj = nn.Linear(temb_channels, out_channels * 2)
            # Present in official scale_shift checkpoints; only used for per-frame time embeddings,
            # which inference never passes. Kept so such checkpoints load strictly.
            self.double_len_linear = nn.Linear(out_channels * 2, out_channels * 4)
        else:
            raise ValueError(f"Unknown resnet_time_scale_shift {time_scale_shift!r} (expected 'default' or 'scale_shift').")
        self.norm2 = group_norm(out_channels, groups, eps, per_frame_norm)
        self.conv2 = FrameConv(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = activation(act_fn)
        self.conv_shortcut = FrameConv(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x, temb):
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        temb = self.time_emb_proj(self.nonlinearity(temb))
        if len(temb) != len(x):  # a shared timestep: its identical rows broadcast over the batch
            temb = temb[:1]
        temb = temb[:, :, None, None, None]
        if self.time_scale_shift == "default":
            h = self.norm2(h + temb)
        else:
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.nonlinearity(h))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (shortcut + h) / self.output_scale_factor


class Downsample3D(nn.Module):
    def __init__(self, channels, padding):
        super().__init__()
        if padding == 0:
            raise ValueError("downsample_padding 0 is not supported (the official U-Net does not implement it).")
        self.conv = FrameConv(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x):
        return self.conv(x)


class Upsample3D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = FrameConv(channels, channels, kernel_size=3, padding=1)

    def forward(self, x, output_size=None):
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling has no bfloat16 kernel everywhere
            x = x.float()
        if output_size is None:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        else:
            x = F.interpolate(x, size=output_size, mode="nearest")
        return self.conv(x.to(dtype))


class Attention(nn.Module):
    """Multi-head attention; keys and values come from `context` (cross) or the input (self)."""

    def __init__(self, query_dim, heads, head_dim, context_dim=None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x.mul_(F.gelu(gate))  # in place: the projection's output is not needed again


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """Self-attention within a frame, cross-attention to that frame's audio, feed-forward."""

    def __init__(self, dim, heads, head_dim, audio_dim, add_audio_layer):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        if add_audio_layer:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, head_dim, context_dim=audio_dim)
        else:
            self.attn2 = None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, audio=None):
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and audio is not None:
            x = self.attn2(self.norm2(x), context=audio) + x
        return self.ff(self.norm3(x)) + x


class Transformer3DModel(nn.Module):
    """Spatial transformer applied to every frame; `audio` holds one row of tokens per frame."""

    def __init__(self, heads, channels, groups, audio_dim, use_linear_projection, add_audio_layer):
        super().__init__()
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in, self.proj_out = nn.Linear(channels, channels), nn.Linear(channels, channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)
        head_dim = channels // heads
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, head_dim, audio_dim, add_audio_layer)])

    def forward(self, x, audio=None):
        frames = x.shape[2]
        x = frames_to_batch(x)
        bf, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear_projection:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(bf, h * w, c)
        if self.use_linear_projection:
            x = self.proj_in(x)
        if audio is not None and audio.dim() == 4:  # (b, f, tokens, dim) -> (b*f, tokens, dim)
            audio = audio.flatten(0, 1)
        for block in self.transformer_blocks:
            x = block(x, audio)
        if self.use_linear_projection:
            x = self.proj_out(x)
        x = x.reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous()
        if not self.use_linear_projection:
            x = self.proj_out(x)
        return batch_to_frames(x + residual, frames)


class TemporalPositionalEncoding(nn.Module):
    def __init__(self, dim, max_len):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * frequency)
        pe[0, :, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return x + self.pe[:, : x.shape[1]]


class TemporalAttention(Attention):
    """Self-attention across the frames of the window, separately at every pixel."""

    def __init__(self, dim, heads, head_dim, position_encoding_max_len):
        super().__init__(dim, heads, head_dim)
        self.pos_encoder = TemporalPositionalEncoding(dim, position_encoding_max_len) if position_encoding_max_len else None

    def forward(self, x, frames):
        bf, pixels, c = x.shape
        x = x.reshape(bf // frames, frames, pixels, c).transpose(1, 2).reshape(-1, frames, c)
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        x = super().forward(x)
        return x.reshape(bf // frames, pixels, frames, c).transpose(1, 2).reshape(bf, pixels, c)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim, heads, head_dim, block_types, position_encoding_max_len):
        super().__init__()
        for block_type in block_types:
            if block_type != "Temporal_Self":
                raise ValueError(f"Unsupported motion-module attention block {block_type!r} (only 'Temporal_Self').")
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, heads, head_dim, position_encoding_max_len) for _ in block_types]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in block_types])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x, frames):
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), frames) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3DModel(nn.Module):
    def __init__(self, channels, heads, head_dim, num_blocks, block_types, position_encoding_max_len):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(inner, heads, head_dim, block_types, position_encoding_max_len) for _ in range(num_blocks)]
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x):
        frames = x.shape[2]
        x = frames_to_batch(x)
        bf, c, h, w = x.shape
        residual = x
        x = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c))
        for block in self.transformer_blocks:
            x = block(x, frames)
        x = self.proj_out(x).reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous()
        return batch_to_frames(x + residual, frames)


class MotionModule(nn.Module):
    """AnimateDiff's "Vanilla" temporal module: a residual temporal transformer."""

    def __init__(self, channels, kwargs: dict):
        super().__init__()
        unknown = set(kwargs) - set(MOTION_MODULE_DEFAULTS)
        if unknown:
            raise ValueError(f"Unknown motion_module_kwargs {sorted(unknown)}.")
        options = {**MOTION_MODULE_DEFAULTS, **kwargs}
        if options["cross_frame_attention_mode"] is not None:
            raise ValueError("cross_frame_attention_mode is not supported (the official module ignores it too).")
        heads = options["num_attention_heads"]
        self.temporal_transformer = TemporalTransformer3DModel(
            channels,
            heads,
            channels // heads // options["temporal_attention_dim_div"],
            options["num_transformer_block"],
            options["attention_block_types"],
            options["temporal_position_encoding_max_len"] if options["temporal_position_encoding"] else None,
        )
        if options["zero_initialize"]:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x):
        return self.temporal_transformer(x)


class _BlockFactory:
    """Builds the layers a U-Net block is made of, from the model config."""

    def __init__(self, config, temb_channels):
        self.c = config
        self.temb_channels = temb_channels

    def resnet(self, in_channels, out_channels, output_scale_factor=1.0):
        c = self.c
        return ResnetBlock3D(
            in_channels, out_channels, self.temb_channels, c.norm_num_groups, c.norm_eps, c.act_fn,
            c.resnet_time_scale_shift, output_scale_factor, c.use_inflated_groupnorm,
        )

    def attention(self, channels, heads):
        c = self.c
        return Transformer3DModel(heads, channels, c.norm_num_groups, c.cross_attention_dim, c.use_linear_projection, c.add_audio_layer)

    def motion(self, channels, enabled):
        return MotionModule(channels, self.c.motion_module_kwargs or {}) if enabled else None


class DownBlock3D(nn.Module):
    """`layers` x (resnet [+ attention] [+ motion module]), then an optional 2x downsample.

    Returns the hidden states and every intermediate output (the skip connections)."""

    def __init__(self, make: _BlockFactory, in_channels, out_channels, layers, with_attention, heads, with_motion, add_downsample):
        super().__init__()
        self.resnets = nn.ModuleList([make.resnet(in_channels if i == 0 else out_channels, out_channels) for i in range(layers)])
        if with_attention:
            self.attentions = nn.ModuleList([make.attention(out_channels, heads) for _ in range(layers)])
        self.motion_modules = nn.ModuleList([make.motion(out_channels, with_motion) for _ in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample3D(out_channels, make.c.downsample_padding)]) if add_downsample else None

    def forward(self, hidden_states, temb, audio=None):
        skips = ()
        attentions = getattr(self, "attentions", [None] * len(self.resnets))
        for resnet, attention, motion in zip(self.resnets, attentions, self.motion_modules):
            hidden_states = resnet(hidden_states, temb)
            if attention is not None:
                hidden_states = attention(hidden_states, audio)
            if motion is not None:
                hidden_states = motion(hidden_states)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class UpBlock3D(nn.Module):
    """`layers` x (concat a skip, resnet [+ attention] [+ motion module]), then an optional 2x upsample."""

    def __init__(self, make: _BlockFactory, in_channels, prev_channels, out_channels, layers, with_attention, heads, with_motion, add_upsample):
        super().__init__()
        resnets = []
        for i in range(layers):
            skip_channels = in_channels if i == layers - 1 else out_channels
            resnets.append(make.resnet((prev_channels if i == 0 else out_channels) + skip_channels, out_channels))
        self.resnets = nn.ModuleList(resnets)
        if with_attention:
            self.attentions = nn.ModuleList([make.attention(out_channels, heads) for _ in range(layers)])
        self.motion_modules = nn.ModuleList([make.motion(out_channels, with_motion) for _ in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels)]) if add_upsample else None

    def forward(self, hidden_states, skips, temb, audio=None, upsample_size=None, layers=None):
        """`layers` (a range) runs only those layers, without the upsample: DeepCache's pieces."""
        for j in layers if layers is not None else range(len(self.resnets)):
            hidden_states = self.layer(j, hidden_states, skips[-1 - j], temb, audio)
        if self.upsamplers is not None and layers is None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states

    def layer(self, j: int, hidden_states, skip, temb, audio=None):
        """Layer `j`: concat its skip, resnet [+ attention] [+ motion module]."""
        hidden_states = self.resnets[j](torch.cat([hidden_states, skip], dim=1), temb)
        if hasattr(self, "attentions"):
            hidden_states = self.attentions[j](hidden_states, audio)
        if self.motion_modules[j] is not None:
            hidden_states = self.motion_modules[j](hidden_states)
        return hidden_states


class UNetMidBlock3DCrossAttn(nn.Module):
    def __init__(self, make: _BlockFactory, channels, heads, with_motion):
        super().__init__()
        scale = make.c.mid_block_scale_factor
        self.resnets = nn.ModuleList([make.resnet(channels, channels, scale), make.resnet(channels, channels, scale)])
        self.attentions = nn.ModuleList([make.attention(channels, heads)])
        self.motion_modules = nn.ModuleList([make.motion(channels, with_motion)])

    def forward(self, hidden_states, temb, audio=None):
        hidden_states = self.resnets[0](hidden_states, temb)
        for attention, resnet, motion in zip(self.attentions, self.resnets[1:], self.motion_modules):
            hidden_states = attention(hidden_states, audio)
            if motion is not None:
                hidden_states = motion(hidden_states)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


BLOCK_TYPES = {"CrossAttnDownBlock3D": True, "DownBlock3D": False, "CrossAttnUpBlock3D": True, "UpBlock3D": False}


class UNet3DConditionModel(nn.Module):
    """The LatentSync U-Net. Build it with `from_config(model_mapping)` (the YAML's `model:` section)."""

    def __init__(self, **config):
        super().__init__()
        unknown = set(config) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"Unknown U-Net config fields: {sorted(unknown)}.")
        c = SimpleNamespace(**{**DEFAULT_CONFIG, **config})
        self.config = c
        _check_supported(c)
        channels = list(c.block_out_channels)
        heads = [c.attention_head_dim] * len(channels) if isinstance(c.attention_head_dim, int) else list(c.attention_head_dim)
        time_embed_dim = channels[0] * 4
        make = _BlockFactory(c, time_embed_dim)

        self.conv_in = FrameConv(c.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)

        self.down_blocks = nn.ModuleList()
        for i, block_type in enumerate(c.down_block_types):
            with_motion = c.use_motion_module and 2**i in c.motion_module_resolutions and not c.motion_module_decoder_only
            self.down_blocks.append(
                DownBlock3D(
                    make, channels[max(i - 1, 0)], channels[i], c.layers_per_block, BLOCK_TYPES[block_type],
                    heads[i], with_motion, add_downsample=i < len(channels) - 1,
                )
            )
        self.mid_block = UNetMidBlock3DCrossAttn(make, channels[-1], heads[-1], c.use_motion_module and c.motion_module_mid_block)

        self.up_blocks = nn.ModuleList()
        reversed_channels, reversed_heads = channels[::-1], heads[::-1]
        for i, block_type in enumerate(c.up_block_types):
            with_motion = c.use_motion_module and 2 ** (3 - i) in c.motion_module_resolutions
            self.up_blocks.append(
                UpBlock3D(
                    make,
                    in_channels=reversed_channels[min(i + 1, len(channels) - 1)],
                    prev_channels=reversed_channels[max(i - 1, 0)],
                    out_channels=reversed_channels[i],
                    layers=c.layers_per_block + 1,
                    with_attention=BLOCK_TYPES[block_type],
                    heads=reversed_heads[i],
                    with_motion=with_motion,
                    add_upsample=i < len(channels) - 1,
                )
            )

        self.conv_norm_out = group_norm(channels[0], c.norm_num_groups, c.norm_eps, c.use_inflated_groupnorm)
        self.conv_act = nn.SiLU()
        self.conv_out = FrameConv(channels[0], c.out_channels, kernel_size=3, padding=1)

    @classmethod
    def from_config(cls, model_config: dict) -> "UNet3DConditionModel":
        """Build from the `model:` mapping of an official U-Net YAML config (random weights)."""
        return cls(**model_config)

    @classmethod
    def from_checkpoint(cls, model_config: dict, checkpoint_path, device="cpu", dtype=torch.float32, config_path=None) -> "UNet3DConditionModel":
        """Build and load an official checkpoint without ever holding two copies of the weights.

        The model is created on the meta device (no memory), the checkpoint is memory-mapped, and
        its tensors become the parameters directly; only then are they cast or moved.
        `config_path` names the config in the message when the checkpoint does not fit it.
        """
        with torch.device("meta"):
            model = cls.from_config(model_config)
        require_weight_file(checkpoint_path, "The U-Net checkpoint")
        try:
            checkpoint = torch.load(checkpoint_path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as error:
            raise ValueError(f"Cannot read the U-Net checkpoint {checkpoint_path}: {error}") from error
        state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state_dict, dict):
            raise ValueError(f"{checkpoint_path} holds no state dict (expected {{'state_dict': ...}} or a plain state dict).")
        model.load_checkpoint_state(state_dict, source=f"The U-Net checkpoint {checkpoint_path}", config=config_path)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def load_checkpoint_state(self, state_dict: dict, source="The checkpoint", config=None) -> None:
        """Strict load that names the first mismatching keys and shapes."""
        expected = self.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        wrong_shape = [f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
        if missing or unexpected or wrong_shape:
            raise ValueError(
                f"{source} does not match the U-Net config{f' {config}' if config else ''}: {len(missing)} missing keys {missing[:3]}, "
                f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong_shape)} wrong shapes {wrong_shape[:3]}."
            )
        self.load_state_dict(state_dict, strict=True, assign=True)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def forward(self, sample, timestep, encoder_hidden_states=None, deep_features=None, return_deep_features=False) -> UNet3DConditionOutput:
        """Predict the noise in `sample` (b, in_channels, f, h, w) at `timestep`.

        `encoder_hidden_states` are the audio features, one row of tokens per frame:
        (b*f, tokens, dim), batch-major like the frames.

        DeepCache (its branch 0, as the official enables it): `return_deep_features` also returns
        the hidden state entering the last layer of the last up block; passing those
        `deep_features` (from an earlier step) in runs only the shallowest path on top of them:
        `conv_in`, that last layer with its skip from `conv_in`, and `conv_out`. This is the
        arithmetic of the DeepCache package's helper on this U-Net, without wrapping modules.
        """
        c = self.config
        if c.center_input_sample:
            sample = 2 * sample - 1.0
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if len(timesteps) == 1:
            # A shared timestep is embedded as two identical rows, as the official embeds it for the
            # usual guidance batch of two, and broadcast over the batch: the result is then the same
            # bit for bit whether the guidance branches run as one batch or as two passes.
            timesteps = timesteps.expand(2)
        temb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        hidden = self.conv_in(sample)
        last_block, last_layer = self.up_blocks[-1], len(self.up_blocks[-1].resnets) - 1
        if deep_features is None:
            deep_features, skips = self._deep_path(hidden, temb, encoder_hidden_states)
            skip = skips[0]
        else:
            skip = hidden
        hidden = last_block.layer(last_layer, deep_features, skip, temb, encoder_hidden_states)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return UNet3DConditionOutput(sample=sample, deep_features=deep_features if return_deep_features else None)

    def _deep_path(self, hidden, temb, audio) -> tuple[torch.Tensor, tuple]:
        """Everything from the first down block to the last up block's last layer: that layer's
        input, and the skip connections it has left (the `conv_in` output)."""
        upsample_factor = 2 ** (len(self.up_blocks) - 1)
        needs_upsample_size = any(s % upsample_factor for s in hidden.shape[-2:])
        skips = (hidden,)
        for block in self.down_blocks:
            hidden, block_skips = block(hidden, temb, audio)
            skips += block_skips
        hidden = self.mid_block(hidden, temb, audio)
        for i, block in enumerate(self.up_blocks):
            block_skips, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            if i < len(self.up_blocks) - 1:
                upsample_size = skips[-1].shape[2:] if needs_upsample_size else None
                hidden = block(hidden, block_skips, temb, audio, upsample_size)
            else:  # the last block, but for its last layer
                hidden = block(hidden, block_skips, temb, audio, layers=range(len(block.resnets) - 1))
                skips = block_skips[:1]
        return hidden, skips


def _check_supported(c) -> None:
    if c.dual_cross_attention:
        raise ValueError("dual_cross_attention is not supported (the official U-Net does not implement it).")
    if c.class_embed_type is not None or c.num_class_embeds is not None:
        raise ValueError("Class embeddings are not supported: LatentSync conditions on audio only.")
    if c.mid_block_type != "UNetMidBlock3DCrossAttn":
        raise ValueError(f"Unknown mid_block_type {c.mid_block_type!r}.")
    for block_type in (*c.down_block_types, *c.up_block_types):
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"Unknown block type {block_type!r}; expected one of {sorted(BLOCK_TYPES)}.")
    if c.use_motion_module and c.motion_module_type != "Vanilla":
        raise ValueError(f"Unknown motion_module_type {c.motion_module_type!r} (only 'Vanilla').")
