#!/usr/bin/env bash
# Lip-sync the official demo clip: set up the environment, fetch the weights (about 5.5 GB for
# 1.6), and run the official command line. Needs internet; a GPU makes it fast (CPU works, slowly).
#   VERSION=1.5 bash scripts/demo.sh   for the 256 px model
set -euo pipefail
cd "$(dirname "$0")/.."
version="${VERSION:-1.6}"
bash scripts/setup_env.sh
.venv/bin/python -m scripts.download_weights --version "$version"

demo=outputs/demo
mkdir -p "$demo"
official=https://raw.githubusercontent.com/bytedance/LatentSync/a229c3948406bc2cf6eaf4873e662e70c6a04746/assets
for name in demo1_video.mp4 demo1_audio.wav; do
    if [ -f "../shared/assets/$name" ]; then
        cp "../shared/assets/$name" "$demo/$name"
    elif [ ! -f "$demo/$name" ]; then
        curl -fsSL -o "$demo/$name" "$official/$name"
    fi
done

if [ "$version" = "1.5" ]; then
    config=configs/unet/stage2.yaml checkpoint=checkpoints/latentsync-1.5/latentsync_unet.pt
else
    config=configs/unet/stage2_512.yaml checkpoint=checkpoints/latentsync_unet.pt
fi
.venv/bin/python -m scripts.inference \
    --unet_config_path "$config" --inference_ckpt_path "$checkpoint" \
    --video_path "$demo/demo1_video.mp4" --audio_path "$demo/demo1_audio.wav" \
    --video_out_path "$demo/demo1_lipsync_$version.mp4" \
    --inference_steps 20 --guidance_scale 1.5 --enable_deepcache
