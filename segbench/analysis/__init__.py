"""Analyses the IBN-Net paper argues with, for any trained segbench model.

* `shift`: mIoU under controlled image-only appearance transforms (brightness, colour, contrast, blur, noise, JPEG,
  colour-transfer style), clean vs shifted, per model.
* `divergence`: layer-wise feature divergence (symmetric KL of per-channel mean statistics) for appearance and content
  pairs, as in the paper's Section 3.

`run_analyses` (`runner`) is the entry point for the matrix runner; `segbench analyze ...` (`cli.main`) for people.
"""
from .runner import ANALYSES, analyze_divergence, analyze_shift, run_analyses

__all__ = ["ANALYSES", "analyze_shift", "analyze_divergence", "run_analyses"]
