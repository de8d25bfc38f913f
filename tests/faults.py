"""Faults injected into servers the tests start (Cog's HTTP server, the web app), where the real
failure cannot happen here: while the file named by $LATENTSYNC_TEST_FAULT_FILE exists, every
U-Net call raises the error a GPU raises after an illegal memory access; if the file says
"sticky", the device then counts as broken for good, as a CUDA context is after such an error."""

import os
from pathlib import Path

import latentsync.serving
from latentsync.models.unet import UNet3DConditionModel

FAULT_FILE_VARIABLE = "LATENTSYNC_TEST_FAULT_FILE"
CUDA_ERROR = "CUDA error: an illegal memory access was encountered"


def install() -> None:
    """Make every U-Net forward raise `CUDA_ERROR` while the fault file exists."""
    marker = Path(os.environ[FAULT_FILE_VARIABLE])
    forward = UNet3DConditionModel.forward

    def forward_unless_faulty(self, *args, **kwargs):
        if marker.exists():
            raise RuntimeError(CUDA_ERROR)
        return forward(self, *args, **kwargs)

    UNet3DConditionModel.forward = forward_unless_faulty
    device_works = latentsync.serving.device_works
    latentsync.serving.device_works = lambda device: not (marker.exists() and marker.read_text() == "sticky") and device_works(device)
