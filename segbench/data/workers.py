"""DataLoader worker setup: one OpenCV thread per worker and distinct augmentation seeds."""
from __future__ import annotations

import random

import cv2
import numpy as np
import torch


def worker_init_fn(worker_id: int) -> None:
    """Pass as `DataLoader(worker_init_fn=...)`.

    OpenCV would start a thread pool per worker (N workers x N cores threads fighting over the cores); and numpy's
    global generator is copied by fork, so without reseeding every worker draws the same "random" crops.
    """
    cv2.setNumThreads(0)
    cv2.ocl.setUseOpenCL(False)
    seed = torch.initial_seed() % 2**32  # already distinct per worker and per epoch
    np.random.seed(seed)
    random.seed(seed)
