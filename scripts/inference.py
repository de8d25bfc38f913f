"""Lip-sync a video to an audio track from the command line.

Accepts the official LatentSync flags, so its documented command works unchanged:

    python -m scripts.inference --unet_config_path configs/unet/stage2_512.yaml \\
        --inference_ckpt_path checkpoints/latentsync_unet.pt \\
        --video_path assets/demo1_video.mp4 --audio_path assets/demo1_audio.wav \\
        --video_out_path video_out.mp4 --inference_steps 20 --guidance_scale 1.5

Model files default to the weights folder (`python -m scripts.download_weights --version 1.6`
fetches them). A JSON report of what was regenerated and why is written next to the output.

Re-make only a few seconds, and see the plan (and its GPU estimate) before running the model:

    python -m scripts.inference --video_path lecture.mp4 --segments fix.json --video_out_path fixed.mp4 --dry-run

with fix.json a list like [{"start": 61.2, "end": 64.0, "audio": "fix.wav"}] (see latentsync.segments).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from latentsync.config import DEFAULT_CRF, DEFAULT_GUIDANCE_SCALE, DEFAULT_INFERENCE_STEPS, DEFAULT_SEED, DEFAULT_VERSION, LENGTH_MODES, LOW_SYNC_ACTIONS, load_yaml
from latentsync.options import LipsyncOptions, parse_speaker_box, parse_speaker_point, resolve_seed
from latentsync.pipeline import LipsyncPipeline
from latentsync.progress import Progress
from latentsync.estimate import describe_plan
from latentsync.segments import read_segments_file
from latentsync.timeline import save_timeline
from latentsync.weights import WeightsError, load_manifest, model_files


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    official = parser.add_argument_group("official flags")
    official.add_argument("--unet_config_path", default=str(load_manifest().versions[DEFAULT_VERSION].unet_config), help="U-Net config (stage2.yaml = 1.5, stage2_512.yaml = 1.6)")
    official.add_argument("--inference_ckpt_path", default=None, help="U-Net checkpoint (default: the config's version in the weights folder)")
    official.add_argument("--video_path", required=True)
    official.add_argument("--audio_path", default=None, help="audio file, or a video whose audio track to use (with --segments: for segments without an audio of their own)")
    official.add_argument("--video_out_path", required=True)
    official.add_argument("--inference_steps", type=int, default=None, help=f"denoising steps (default: the config's, {DEFAULT_INFERENCE_STEPS})")
    official.add_argument("--guidance_scale", type=float, default=None, help=f"classifier-free guidance (default: the config's, {DEFAULT_GUIDANCE_SCALE})")
    official.add_argument("--temp_dir", default=None, help="parent folder for this job's temporary files")
    official.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed; -1 picks one at random")
    official.add_argument("--enable_deepcache", action="store_true", help="reuse deep U-Net features between steps (faster)")

    models = parser.add_argument_group("model files")
    models.add_argument("--weights_dir", default=None, help="weights folder (default: $LATENTSYNC_WEIGHTS_DIR or checkpoints/)")
    models.add_argument("--whisper_path", default=None)
    models.add_argument("--vae_path", default=None, help="diffusers AutoencoderKL folder")
    models.add_argument("--mask_path", default=None)
    models.add_argument("--syncnet_path", default=None, help="syncnet_v2.model, for sync-confidence scores")
    models.add_argument("--face_detector", choices=["auto", "insightface", "mediapipe"], default="auto")
    models.add_argument("--resolution", type=int, default=None, help="face size (default: the config's data.resolution)")
    models.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")

    speed = parser.add_argument_group("speed (the output stays the same)")
    speed.add_argument("--precision", choices=["float32", "float16", "bfloat16"], default=None, help="default: float16 on recent GPUs, float32 elsewhere")
    speed.add_argument("--windows_per_batch", type=int, default=None, help="16-frame windows per U-Net call (default: 1 on the CPU, what fits on a GPU)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the U-Net (the first windows pay for compiling)")

    production = parser.add_argument_group("production options")
    production.add_argument("--report_path", default=None, help="JSON report (default: <output>.report.json)")
    production.add_argument("--report_plot", action="store_true", help="also draw the report's timeline picture into <output>.report.png")
    production.add_argument("--length_mode", choices=LENGTH_MODES, default=LENGTH_MODES[0])
    production.add_argument("--no_skip_silence", action="store_true", help="regenerate silent stretches too")
    production.add_argument("--keep_source_fps", action="store_true", help="keep a 24-30 fps source's rate instead of 25")
    production.add_argument("--speaker_point", default=None, help="x,y or x,y,frame: lip-sync the face at this point")
    production.add_argument("--speaker_box", default=None, help="x1,y1,x2,y2 or x1,y1,x2,y2,frame: lip-sync the face in this box")
    production.add_argument("--min_sync_confidence", type=float, default=None)
    production.add_argument("--low_sync_action", choices=LOW_SYNC_ACTIONS, default=LOW_SYNC_ACTIONS[0])
    production.add_argument("--crf", type=int, default=DEFAULT_CRF, help="H.264 quality (lower is better)")
    production.add_argument("--segments", default=None, help="JSON file listing the time ranges to re-make, each with its audio (relative paths: to the file); the rest stays the source")
    production.add_argument("--dry-run", action="store_true", help="analyse and print the plan with its GPU estimate (written to <output>.plan.json); run no model")
    args = parser.parse_args(argv)
    if args.audio_path is None and args.segments is None:
        parser.error("--audio_path is required (with --segments, only by segments without an audio of their own)")
    if args.inference_steps is not None and args.inference_steps < 1:
        parser.error("--inference_steps must be at least 1")
    if args.windows_per_batch is not None and args.windows_per_batch < 1:
        parser.error("--windows_per_batch must be at least 1")
    return args


def resolve_files(args, config: dict):
    """Model files from the flags, defaulting to the weights folder layout of the config's version."""
    manifest = load_manifest()
    config_path = Path(args.unet_config_path).resolve()
    version = next((v for v, spec in manifest.versions.items() if spec.unet_config.resolve() == config_path), None)
    resolution = args.resolution or config.get("data", {}).get("resolution") or 256
    if version is None:  # a custom config: take the defaults of the version with that resolution
        version = next((v for v, spec in manifest.versions.items() if spec.resolution == resolution), "1.6")
    files = model_files(version, args.weights_dir, manifest)
    files.unet_config, files.resolution = Path(args.unet_config_path), resolution
    for flag, field in (("inference_ckpt_path", "unet_checkpoint"), ("whisper_path", "whisper"), ("vae_path", "vae_dir"), ("mask_path", "mask"), ("syncnet_path", "syncnet")):
        if getattr(args, flag):
            setattr(files, field, Path(getattr(args, flag)))
    missing = [str(p) for p in (files.unet_checkpoint, files.whisper, files.vae_dir / "config.json", files.mask) if not p.exists()]
    if missing:
        raise SystemExit(f"error: model files not found: {', '.join(missing)}. Run `python -m scripts.download_weights --version {version}` or pass their paths.")
    return files


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in (args.video_path, args.audio_path, args.segments):
        if path is not None and not Path(path).exists():
            print(f"error: file not found: {path}", file=sys.stderr)
            return 1
    config = load_yaml(args.unet_config_path)
    run = config.get("run", {})
    seed = resolve_seed(args.seed)
    print(f"Seed: {seed}")
    try:
        options = LipsyncOptions(
            num_inference_steps=args.inference_steps or run.get("inference_steps", DEFAULT_INFERENCE_STEPS),
            guidance_scale=args.guidance_scale if args.guidance_scale is not None else run.get("guidance_scale", DEFAULT_GUIDANCE_SCALE),
            seed=seed,
            enable_deepcache=args.enable_deepcache,
            length_mode=args.length_mode,
            skip_silence=not args.no_skip_silence,
            keep_source_fps=args.keep_source_fps,
            speaker_point=parse_speaker_point(args.speaker_point),
            speaker_box=parse_speaker_box(args.speaker_box),
            min_sync_confidence=args.min_sync_confidence,
            low_sync_action=args.low_sync_action,
            crf=args.crf,
        )
        segments = read_segments_file(args.segments) if args.segments else None
        pipeline = LipsyncPipeline.from_files(
            resolve_files(args, config), device=args.device, face_detector=args.face_detector, precision=args.precision,
            windows_per_batch=args.windows_per_batch, compile_unet=args.compile,
        )
        with ProgressBars() as progress:
            if args.dry_run:
                return _dry_run(pipeline, args, options, segments, progress)
            result = pipeline(args.video_path, args.audio_path, args.video_out_path, options, report_path=args.report_path, temp_dir=args.temp_dir,
                              progress=progress, segments=segments)
    except (ValueError, WeightsError, FileNotFoundError) as error:  # bad inputs, bad segments, no usable face, missing weights
        print(f"error: {error}", file=sys.stderr)
        return 1
    report = result.report
    print(f"Wrote {result.output_path} ({report.frames} frames, {report.frames_generated} regenerated) and {result.report_path}")
    if args.report_plot:
        plot = save_timeline(json.loads(result.report_path.read_text()), Path(args.video_out_path).with_suffix(".report.png"))
        print(f"Wrote {plot}")
    return 0


def _dry_run(pipeline, args, options, segments, progress) -> int:
    """Print the plan and its estimate, and write them next to the output; no model runs."""
    plan = pipeline.plan(args.video_path, args.audio_path, options, segments=segments, progress=progress).to_dict()
    plan_path = Path(args.video_out_path).with_suffix(".plan.json")
    plan_path.write_text(json.dumps(plan, indent=2))
    print(describe_plan(plan))
    print(f"Wrote {plan_path}")
    if args.report_plot:
        print(f"Wrote {save_timeline(plan, plan_path.with_suffix('.png'))}")
    return 0


class ProgressBars:
    """A terminal progress bar per stage of the job, fed by the pipeline's progress callback."""

    LABELS = {"analyse": ("Finding faces", "frame"), "denoise": ("Denoising", "window"), "write": ("Writing", "frame")}

    def __enter__(self) -> "ProgressBars":
        self.bars = {}
        return self

    def __call__(self, progress: Progress) -> None:
        if progress.stage not in self.bars:
            label, unit = self.LABELS[progress.stage]
            self.bars[progress.stage] = tqdm(total=progress.total, desc=label, unit=unit, leave=False)
        bar = self.bars[progress.stage]
        bar.update(progress.done - bar.n)

    def __exit__(self, *exc_info) -> None:
        for bar in self.bars.values():
            bar.close()


if __name__ == "__main__":
    sys.exit(main())
