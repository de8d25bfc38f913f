"""Write requirements/cog.lock: every Python package of the Cog image pinned to one file, by URL
and sha256, and the line of cog.yaml that builds the source-only packages.

    pip install uv && python -m scripts.lock_image

1. The image's packages are requirements.txt's, with onnxruntime-gpu in place of onnxruntime,
   plus what the source-only packages need to build (setuptools, Cython; numpy is there), less
   Cog's own SDK: Cog installs that itself (cog.yaml's build.sdk_version) and drops it from
   requirement files.
2. uv resolves them for the image, Linux x86_64 with Python 3.11, into a PEP 751 lock: each
   package's files with their sha256.
3. Each package gets the file pip would choose there: its best-matching wheel. The file lists them
   as `name @ URL --hash=sha256:...` under `--require-hashes`: pip downloads exactly those files
   and refuses any other. (Not `name==version --hash=...`: Cog rewrites such lines to
   `name==version` and drops the hashes.)
4. Packages published only as source (insightface, openai-whisper, python-speech-features) run
   their setup at build time. pip would build them in an isolated environment whose build tools
   it fetches unchecked, so cog.yaml builds them in a step after the lock is installed, with
   `--no-build-isolation`: only the locked setuptools, Cython and numpy run, and the source
   archives are hash-checked too. That step's line is written into cog.yaml here.
"""

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

from latentsync.config import REPO_ROOT

LOCK = REPO_ROOT / "requirements" / "cog.lock"
COG_YAML = REPO_ROOT / "cog.yaml"
ONNXRUNTIME_GPU = "onnxruntime-gpu==1.31.1"  # the GPU build for InsightFace (it trails the CPU build's version)
BUILD_TOOLS = ("setuptools", "cython")  # what the source-only packages' setup imports (with numpy, already pinned)
COGS_OWN = "cog"  # the SDK Cog installs in the image itself
PYTHON, PLATFORM = (3, 11), "x86_64-manylinux_2_28"  # the Cog image: python_version "3.11" on a CUDA Ubuntu image (glibc 2.28 or newer)
SOURCES_STEP = re.compile(r'^(\s*- )"printf .*--no-build-isolation.*"$', re.MULTILINE)  # cog.yaml's step for the source packages
# The tags of the wheels the image can install, most preferred first, as pip ranks them.
PLATFORM_TAGS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
IMAGE_TAGS = [*cpython_tags(PYTHON, platforms=PLATFORM_TAGS), *compatible_tags(PYTHON, platforms=PLATFORM_TAGS)]


def image_requirements() -> list[str]:
    """requirements.txt's pins as the image installs them."""
    pins = [line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    pins = [ONNXRUNTIME_GPU if pin.startswith("onnxruntime==") else pin for pin in pins if pin and not pin.startswith(f"{COGS_OWN}==")]
    return pins + list(BUILD_TOOLS)


def resolve(requirements: list[str]) -> list[dict]:
    """The packages uv resolves for the image, as its pylock.toml lists them."""
    with tempfile.TemporaryDirectory() as folder:
        source, lock = Path(folder) / "image.in", Path(folder) / "pylock.toml"
        source.write_text("\n".join(requirements) + "\n")
        subprocess.run(["uv", "pip", "compile", str(source), "--python-version", ".".join(map(str, PYTHON)), "--python-platform", PLATFORM,
                        "--index-url", "https://pypi.org/simple", "--format", "pylock.toml", "--quiet", "-o", str(lock)], check=True)
        return tomllib.loads(lock.read_text())["packages"]


def chosen_file(package: dict) -> dict:
    """The wheel pip installs in the image (the best-ranked tag), else the source archive."""
    ranked = [(min((IMAGE_TAGS.index(tag) for tag in parse_wheel_filename(wheel["url"].rsplit("/", 1)[1])[3] if tag in IMAGE_TAGS), default=None), wheel)
              for wheel in package.get("wheels", [])]
    ranked = [(rank, wheel) for rank, wheel in ranked if rank is not None]
    return min(ranked, key=lambda item: item[0])[1] if ranked else package["sdist"]


def requirement_line(package: dict) -> str:
    file = chosen_file(package)
    return f"{package['name']} @ {file['url']} --hash=sha256:{file['hashes']['sha256']}"


def main() -> int:
    packages = sorted(resolve(image_requirements()), key=lambda package: package["name"])
    wheels = [requirement_line(p) for p in packages if not chosen_file(p)["url"].endswith(".tar.gz")]
    sources = [requirement_line(p) for p in packages if chosen_file(p)["url"].endswith(".tar.gz")]
    LOCK.parent.mkdir(exist_ok=True)
    LOCK.write_text(
        "# The Cog image's Python packages, one file each, by URL and sha256 (written by `python -m scripts.lock_image`\n"
        "# from requirements.txt; cog.yaml installs it). Built from source by cog.yaml's next step, hashed there:\n"
        + "".join(f"#   {line}\n" for line in sources)
        + "--require-hashes\n"
        + "".join(f"{line}\n" for line in wheels)
    )
    step = "printf '%s\\n' " + " ".join(f"'{line}'" for line in sources) + " > /tmp/sources.txt"
    step += " && pip install --require-hashes --no-deps --no-build-isolation -r /tmp/sources.txt"
    cog_yaml = COG_YAML.read_text()
    if not SOURCES_STEP.search(cog_yaml):
        print(f"cog.yaml has no step building the source packages; add under build.run:\n    - {json.dumps(step)}", file=sys.stderr)
        return 1
    COG_YAML.write_text(SOURCES_STEP.sub(lambda match: match.group(1) + json.dumps(step), cog_yaml))  # a JSON string is a YAML one
    print(f"{LOCK.relative_to(REPO_ROOT)}: {len(wheels)} wheels; cog.yaml builds {len(sources)} from source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
