"""The multi-arch busybox base image: it lives in devkit/busybox_image.py, which the demo
shares (examples/ imports nothing of tests/); the tests keep importing it from here."""

from devkit.busybox_image import (
    BUSYBOX,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    PATH_ENV,
    OciLayout,
    PlatformImage,
    SetupError,
    busybox_layer,
    need_tool,
    sha256,
    skopeo_push,
    write_busybox_layout,
)

__all__ = ["BUSYBOX", "OCI_CONFIG", "OCI_INDEX", "OCI_LAYER", "OCI_MANIFEST", "PATH_ENV",
           "OciLayout", "PlatformImage", "SetupError", "busybox_layer", "need_tool", "sha256",
           "skopeo_push", "write_busybox_layout"]
