"""Input-purification defences and their adaptive evaluation.

- :func:`denoise_then_classify` (De³): noise, reconstruct with a pretrained ``nim`` model, clamp, predict;
  :func:`mae_reconstruction` is the MAE baseline; :func:`finetune_on_denoised` adapts the task model.
- :func:`evaluate_defense`: clean, PGD, EOT-PGD, gray-box transfer, Square and AutoAttack-rand;
  :func:`tradeoff_curve` / :func:`write_curve`: clean vs robust over σ_test (CSV + PNG).
"""

from robustssl.defenses.de3 import (
    FINETUNE_SIGMA,
    DenoisedModel,
    check_compatible,
    denoise_then_classify,
    finetune_on_denoised,
    mae_reconstruction,
)
from robustssl.defenses.evaluate import (
    THREATS,
    DefenseEvalConfig,
    evaluate_defense,
    format_table,
    headline,
    paired_draw_difference,
    tradeoff_curve,
    write_curve,
    write_rows,
)
from robustssl.pretrain.masked_image import load_denoiser

__all__ = ["FINETUNE_SIGMA", "THREATS", "DefenseEvalConfig", "DenoisedModel", "check_compatible",
           "denoise_then_classify", "evaluate_defense", "finetune_on_denoised", "format_table", "headline",
           "load_denoiser", "mae_reconstruction", "paired_draw_difference", "tradeoff_curve", "write_curve",
           "write_rows"]
