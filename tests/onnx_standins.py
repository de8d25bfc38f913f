"""Stand-ins for InsightFace's buffalo_l ONNX models, built with onnx.helper.

The real det_10g.onnx / 2d106det.onnx cannot be downloaded here. These have the same input and
output signatures, so insightface 0.7.3 loads and runs them for real (FaceAnalysis.prepare/get on
onnxruntime's CPU provider), but their outputs are constants we choose: known faces and landmarks.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

DET_SIZE = 512
STRIDES = (8, 16, 32)
ANCHORS = 2


def _constant_model(input_name, input_shape, outputs: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A graph whose outputs are constants (plus 0 x the input's mean, so the input is used)."""
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    initializers = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph_outputs = []
    for name, value in outputs.items():
        initializers.append(helper.make_tensor(f"{name}_value", TensorProto.FLOAT, value.shape, value.astype(np.float32).ravel()))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes, "standin", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)], graph_outputs, initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def detector_outputs(faces: list[tuple[tuple[float, float, float, float], float]]) -> dict[str, np.ndarray]:
    """SCRFD-style outputs (scores, box distances, keypoint distances per stride) that decode to
    `faces`: ((x1, y1, x2, y2), score) in the 512x512 detector input."""
    outputs = {}
    for stride in STRIDES:
        cells = DET_SIZE // stride
        outputs[f"score_{stride}"] = np.zeros((cells * cells * ANCHORS, 1))
        outputs[f"bbox_{stride}"] = np.zeros((cells * cells * ANCHORS, 4))
        outputs[f"kps_{stride}"] = np.zeros((cells * cells * ANCHORS, 10))
    stride = 8
    cells = DET_SIZE // stride
    for (x1, y1, x2, y2), score in faces:
        cx, cy = int((x1 + x2) / 2 // stride), int((y1 + y2) / 2 // stride)
        row = (cy * cells + cx) * ANCHORS
        ax, ay = cx * stride, cy * stride
        outputs[f"score_{stride}"][row] = score
        outputs[f"bbox_{stride}"][row] = np.array([ax - x1, ay - y1, x2 - ax, y2 - ay]) / stride
        outputs[f"kps_{stride}"][row] = np.zeros(10)
    ordered = [f"score_{s}" for s in STRIDES] + [f"bbox_{s}" for s in STRIDES] + [f"kps_{s}" for s in STRIDES]
    return {name: outputs[name] for name in ordered}


def write_buffalo_standins(root: Path, faces, landmarks_normalised: np.ndarray) -> Path:
    """Write models/buffalo_l/{det_10g,2d106det}.onnx under `root`; returns root.

    `landmarks_normalised` (106, 2) in [-1, 1]: where the landmark model puts each point inside
    its 192x192 face crop (insightface maps (p + 1) * 96 back to the frame)."""
    folder = root / "models" / "buffalo_l"
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(_constant_model("input.1", [1, 3, "height", "width"], detector_outputs(faces)), folder / "det_10g.onnx")
    onnx.save(_constant_model("data", [1, 3, 192, 192], {"fc1": landmarks_normalised.reshape(1, 212)}), folder / "2d106det.onnx")
    return root
