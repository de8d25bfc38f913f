"""The README's self-hosting examples: the Kubernetes manifests parse as YAML and name what the
code uses (the worker command, the queue's stream and consumer group), and no example publishes
Cog's port."""

import re

import yaml

from latentsync.client.queue import GROUP
from latentsync.config import REPO_ROOT


def section(title: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(title)
    return text[start:text.index("\n### ", start + 1)]


def test_the_kubernetes_example_is_valid_yaml_and_scales_on_the_queue():
    blocks = re.findall(r"```yaml\n(.*?)```", section("### Self-hosting on your own GPUs"), re.S)
    documents = [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]
    kinds = {doc["kind"]: doc for doc in documents}
    assert set(kinds) == {"Deployment", "TriggerAuthentication", "ScaledObject"}
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "latentsync.worker"] and "ports" not in container
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    scaled = kinds["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    triggers = [t["metadata"] for t in scaled["triggers"]]
    assert all(t["stream"] == "latentsync:queue" and t["consumerGroup"] == GROUP for t in triggers)
    assert {"lagCount", "pendingEntriesCount"} <= {key for t in triggers for key in t}
    assert all(t["authenticationRef"]["name"] == kinds["TriggerAuthentication"]["metadata"]["name"] for t in scaled["triggers"])


def test_no_example_publishes_cogs_port():
    text = section("### Self-hosting on your own GPUs")
    commands = [line for line in text.splitlines() if line.startswith("docker run")]
    assert commands and all(" -p " not in line and "--publish" not in line and "latentsync.worker" in line for line in commands)
