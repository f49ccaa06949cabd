"""Quiet start-up: drop the import-time notices of third-party packages that say nothing about the user's work.

Each entry names the logger and the text of one notice; everything else those loggers say, and every warning of this
project, still shows.
"""

from __future__ import annotations

import logging

NOTICES = {
    "torchao": "Failed to load",  # optional CUDA/FP8 kernels a CPU build of torchao lacks
    "torchao.kernel.intmm": "Detected no triton",
    "torch.utils._pytree": "is an Enum subclass",  # torchao registering enums with an older torch API
    "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects",
}


class DropNotice(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_third_party_notices() -> None:
    for name, text in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNotice) and f.text == text for f in logger.filters):
            logger.addFilter(DropNotice(text))
