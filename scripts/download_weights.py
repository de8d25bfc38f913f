"""Download and verify the model weights for a LatentSync version.

    python -m scripts.download_weights --version 1.6
    python -m scripts.download_weights --version all --weights_dir /models/latentsync
"""

import argparse
import logging
import sys
import time

from latentsync.weights import WeightsError, ensure_weights, load_manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="1.6", help="model version (1.5, 1.6) or 'all'")
    parser.add_argument("--weights_dir", default=None, help="target folder (default: $LATENTSYNC_WEIGHTS_DIR or checkpoints/)")
    parser.add_argument("--manifest", default=None, help="manifest file (default: $LATENTSYNC_WEIGHTS_MANIFEST or weights_manifest.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = load_manifest(args.manifest)
        versions = sorted(manifest.versions) if args.version == "all" else [args.version]
        for version in versions:
            started = time.perf_counter()
            files = ensure_weights(version, args.weights_dir, manifest)
            print(f"LatentSync {version}: weights ready in {time.perf_counter() - started:.1f} s ({files.unet_checkpoint.parent})")
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
