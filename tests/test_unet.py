"""The U-Net against the official implementation's reference vectors (random weights)."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from latentsync.config import load_yaml
from latentsync.models.unet import UNet3DConditionModel
from latentsync.weights import load_manifest
from tests.parity import within

VERSIONS = load_manifest().versions


@pytest.fixture(scope="module")
def tiny_config(reference):
    return load_yaml(reference / "unet_tiny.yaml")["model"]


@pytest.fixture(scope="module")
def tiny_unet(reference, tiny_config):
    return UNet3DConditionModel.from_checkpoint(tiny_config, reference / "unet_tiny.pt")


def test_tiny_forward_matches_the_official_output(reference, tiny_config):
    unet = UNet3DConditionModel.from_config(tiny_config)
    unet.load_state_dict(torch.load(reference / "unet_tiny.pt", weights_only=True)["state_dict"], strict=True)
    io = torch.load(reference / "unet_tiny_io.pt", weights_only=True)
    with torch.no_grad():
        out = unet.eval()(io["sample"], io["timestep"], encoder_hidden_states=io["encoder_hidden_states"]).sample
    assert out.shape == io["out"].shape
    within("U-Net forward", (out - io["out"]).abs().max().item(), 7e-5)


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_full_size_config_has_the_released_checkpoint_layout(reference, version):
    with torch.device("meta"):
        unet = UNet3DConditionModel.from_config(load_yaml(VERSIONS[version].unet_config)["model"])
    expected = json.loads((reference / "unet_keys_stage2.json").read_text())
    ours = {key: list(tensor.shape) for key, tensor in unet.state_dict().items()}
    assert ours == expected
    assert sum(t.numel() for t in unet.state_dict().values()) == pytest.approx(1.268e9, rel=1e-3)


def test_from_checkpoint_accepts_a_bare_state_dict_and_names_mismatches(tmp_path, reference, tiny_config, tiny_unet):
    state = torch.load(reference / "unet_tiny.pt", weights_only=True)["state_dict"]
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    loaded = UNet3DConditionModel.from_checkpoint(tiny_config, bare)
    assert torch.equal(loaded.conv_in.weight, tiny_unet.conv_in.weight)

    broken = dict(state)
    del broken["conv_out.bias"]
    broken["extra.weight"] = torch.zeros(1)
    broken_path = tmp_path / "broken.pt"
    torch.save({"state_dict": broken}, broken_path)
    with pytest.raises(ValueError, match=r"1 missing keys \['conv_out.bias'\].*1 unexpected keys \['extra.weight'\]"):
        UNet3DConditionModel.from_checkpoint(tiny_config, broken_path)
    with pytest.raises(FileNotFoundError, match="download_weights"):
        UNet3DConditionModel.from_checkpoint(tiny_config, tmp_path / "missing.pt")


def test_unsupported_config_values_are_rejected(tiny_config):
    with pytest.raises(ValueError, match="Unknown U-Net config fields"):
        UNet3DConditionModel.from_config({**tiny_config, "no_such_field": 1})
    with pytest.raises(ValueError, match="dual_cross_attention"):
        UNet3DConditionModel.from_config({**tiny_config, "dual_cross_attention": True})
    with pytest.raises(ValueError, match="motion_module_type"):
        UNet3DConditionModel.from_config({**tiny_config, "motion_module_type": "Sparse"})


@pytest.mark.parametrize(
    "change",
    [
        {"use_motion_module": False},
        {"add_audio_layer": False},
        {"resnet_time_scale_shift": "scale_shift"},
        {"use_inflated_groupnorm": True, "attention_head_dim": [2, 4, 4, 8], "motion_module_mid_block": True},
        {"motion_module_decoder_only": True, "center_input_sample": True, "use_linear_projection": True},
    ],
)
def test_config_variants_build_and_run(tiny_config, change):
    config = {**tiny_config, **change}
    unet = UNet3DConditionModel.from_config(config).eval()
    sample = torch.randn(1, 13, 3, 8, 8)
    audio = torch.randn(3, 50, 384)
    with torch.no_grad():
        out = unet(sample, 500, encoder_hidden_states=audio).sample
    assert out.shape == (1, 4, 3, 8, 8) and torch.isfinite(out).all()
    has_motion = any(m is not None for m in unet.down_blocks[0].motion_modules)
    assert has_motion == (config["use_motion_module"] and not config.get("motion_module_decoder_only", False))


def test_window_length_and_odd_sizes(tiny_unet):
    # A last window shorter than 16 frames, and a latent size that is not a multiple of 8.
    with torch.no_grad():
        out = tiny_unet(torch.randn(2, 13, 5, 12, 12), torch.tensor(10), encoder_hidden_states=torch.randn(10, 50, 384)).sample
    assert out.shape == (2, 4, 5, 12, 12)


def test_deepcache_runs_only_the_shallow_path_on_cached_features(tiny_unet):
    """Between full steps, DeepCache reuses the deep features of the last full step: the deep
    blocks do not run, and the output moves only through the shallowest path."""
    calls = {"mid": 0}
    hook = tiny_unet.mid_block.attentions[0].register_forward_hook(lambda *_: calls.__setitem__("mid", calls["mid"] + 1))
    torch.manual_seed(0)
    sample, audio = torch.randn(2, 13, 16, 8, 8), torch.randn(32, 50, 384)
    try:
        with torch.no_grad():
            plain = tiny_unet(sample, torch.tensor(801), encoder_hidden_states=audio)
            full = tiny_unet(sample, torch.tensor(801), encoder_hidden_states=audio, return_deep_features=True)
            fresh = tiny_unet(sample, torch.tensor(761), encoder_hidden_states=audio).sample
            calls["mid"] = 0
            cached = tiny_unet(sample, torch.tensor(761), encoder_hidden_states=audio, deep_features=full.deep_features).sample
    finally:
        hook.remove()
    assert plain.deep_features is None and full.deep_features.shape == (2, 32, 16, 8, 8)
    assert torch.equal(plain.sample, full.sample)  # asking for the features changes nothing
    assert calls["mid"] == 0  # the deep blocks did not run
    # The deep features are one step stale, so the output differs from a full step's, but modestly.
    relative = ((fresh - cached).norm() / fresh.norm()).item()
    assert 0 < relative < 0.1


@pytest.mark.slow
def test_loading_a_full_size_checkpoint_holds_one_copy(tmp_path):
    """Peak RSS while loading a random full-size checkpoint stays within 1.3x the file size."""
    checkpoint = tmp_path / "latentsync_unet.pt"
    script = (
        "import sys, torch\n"
        "from latentsync.config import load_yaml\n"
        "from latentsync.models.unet import UNet3DConditionModel\n"
        "from latentsync.weights import load_manifest\n"
        "config = load_yaml(load_manifest().versions['1.5'].unet_config)['model']\n"
        "with torch.device('meta'):\n"
        "    unet = UNet3DConditionModel.from_config(config)\n"
        "state = {k: torch.randn(v.shape) * 0.01 for k, v in unet.state_dict().items()}\n"
        "torch.save({'state_dict': state}, sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(checkpoint)], check=True)
    measure = (
        "import sys, torch\n"
        "from latentsync.config import load_yaml\n"
        "from latentsync.device import peak_rss_gb\n"
        "from latentsync.models.unet import UNet3DConditionModel\n"
        "from latentsync.weights import load_manifest\n"
        "unet = UNet3DConditionModel.from_checkpoint(load_yaml(load_manifest().versions['1.5'].unet_config)['model'], sys.argv[1])\n"
        "total = sum(p.float().sum().item() for p in unet.parameters())  # touch every weight\n"
        "print(int(peak_rss_gb() * 1024**3))\n"  # this process's own peak, not the big pytest parent's
    )
    result = subprocess.run([sys.executable, "-c", measure, str(checkpoint)], check=True, capture_output=True, text=True)
    peak = int(result.stdout.strip().splitlines()[-1])
    size = checkpoint.stat().st_size
    print(f"checkpoint {size / 1e9:.2f} GB, peak RSS {peak / 1e9:.2f} GB ({peak / size:.2f}x)")
    assert peak <= 1.3 * size


def test_a_subprocess_reports_its_own_peak_memory_not_its_parents():
    parent = np.ones(2 * 1024**3 // 8)  # 2 GB resident here, which a forked child would inherit in ru_maxrss
    child = subprocess.run([sys.executable, "-c", "from latentsync.device import peak_rss_gb; print(peak_rss_gb())"], capture_output=True, text=True, check=True)
    assert parent.sum() > 0 and 0.05 < float(child.stdout) < 1.0
