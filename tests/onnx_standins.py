"""Stand-ins for InsightFace's buffalo_l ONNX models, built with onnx.helper.

The real det_10g.onnx / 2d106det.onnx cannot be downloaded here. These have the same input and
output signatures, so insightface 0.7.3 loads and runs them for real (FaceAnalysis.prepare/get on
onnxruntime's CPU provider). Their outputs are faces and landmarks we choose, moved in proportion
to the colour balance of what they are given: s = mean of input channel 0 - mean of channel 2
(insightface feeds them R, G, B, normalised to about [-1, 1]). A grey or black frame (s = 0) gives
exactly the chosen faces and landmarks; a frame handed over in the wrong channel order (RGB where
BGR is expected) turns s around and moves them.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

DET_SIZE = 512
STRIDES = (8, 16, 32)
ANCHORS = 2
BOX_SHIFT = 200.0  # detector-input pixels a face box moves right and down per unit of s
LANDMARK_SHIFT_SEED = 5  # the landmarks move by a fixed random pattern (normalised units) per unit of s


def _colour_dependent_model(input_name, input_shape, outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    """A graph whose output `name` is base + s * direction for `outputs[name] = (base, direction)`."""
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["channel_means"], axes=[2, 3], keepdims=0),  # (1, 3)
        helper.make_node("MatMul", ["channel_means", "red_minus_blue"], ["s_matrix"]),  # (1, 1)
        helper.make_node("Reshape", ["s_matrix", "scalar_shape"], ["s"]),
    ]
    initializers = [
        helper.make_tensor("red_minus_blue", TensorProto.FLOAT, [3, 1], [1.0, 0.0, -1.0]),
        helper.make_tensor("scalar_shape", TensorProto.INT64, [0], []),
    ]
    graph_outputs = []
    for name, (base, direction) in outputs.items():
        for part, value in (("base", base), ("direction", direction)):
            initializers.append(helper.make_tensor(f"{name}_{part}", TensorProto.FLOAT, value.shape, value.astype(np.float32).ravel()))
        nodes.append(helper.make_node("Mul", ["s", f"{name}_direction"], [f"{name}_moved"]))
        nodes.append(helper.make_node("Add", [f"{name}_base", f"{name}_moved"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(base.shape)))
    graph = helper.make_graph(
        nodes, "standin", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)], graph_outputs, initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def detector_outputs(faces: list[tuple[tuple[float, float, float, float], float]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """SCRFD-style outputs (scores, box distances, keypoint distances per stride) that decode to
    `faces`: ((x1, y1, x2, y2), score) in the 512x512 detector input, each box moved by
    s * BOX_SHIFT pixels right and down."""
    outputs = {}
    for stride in STRIDES:
        cells = DET_SIZE // stride
        for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
            outputs[f"{kind}_{stride}"] = (np.zeros((cells * cells * ANCHORS, width)), np.zeros((cells * cells * ANCHORS, width)))
    stride = 8
    cells = DET_SIZE // stride
    for (x1, y1, x2, y2), score in faces:
        cx, cy = int((x1 + x2) / 2 // stride), int((y1 + y2) / 2 // stride)
        row = (cy * cells + cx) * ANCHORS
        ax, ay = cx * stride, cy * stride
        outputs[f"score_{stride}"][0][row] = score
        outputs[f"bbox_{stride}"][0][row] = np.array([ax - x1, ay - y1, x2 - ax, y2 - ay]) / stride
        outputs[f"bbox_{stride}"][1][row] = np.array([-1.0, -1.0, 1.0, 1.0]) * BOX_SHIFT / stride  # (left, top, right, bottom) distances
    ordered = [f"score_{s}" for s in STRIDES] + [f"bbox_{s}" for s in STRIDES] + [f"kps_{s}" for s in STRIDES]
    return {name: outputs[name] for name in ordered}


def write_buffalo_standins(root: Path, faces, landmarks_normalised: np.ndarray) -> Path:
    """Write models/buffalo_l/{det_10g,2d106det}.onnx under `root`; returns root.

    `landmarks_normalised` (106, 2) in [-1, 1]: where the landmark model puts each point inside
    its 192x192 face crop at s = 0 (insightface maps (p + 1) * 96 back to the frame)."""
    folder = root / "models" / "buffalo_l"
    folder.mkdir(parents=True, exist_ok=True)
    landmark_shift = np.random.default_rng(LANDMARK_SHIFT_SEED).uniform(-1.0, 1.0, size=(1, 212))
    landmarks = {"fc1": (landmarks_normalised.reshape(1, 212), landmark_shift)}
    onnx.save(_colour_dependent_model("input.1", [1, 3, "height", "width"], detector_outputs(faces)), folder / "det_10g.onnx")
    onnx.save(_colour_dependent_model("data", [1, 3, 192, 192], landmarks), folder / "2d106det.onnx")
    return root
