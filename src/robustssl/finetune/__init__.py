"""Fine-tuning on top of frozen or trainable encoders: linear probes and dense heads (``heads.py``)."""

from robustssl.finetune.heads import (
    DEFAULT_WEIGHT_DECAYS,
    evaluate,
    extract_features,
    fit_dense_head,
    fit_linear_probe,
    holdout_split,
    silog_loss,
)

__all__ = ["DEFAULT_WEIGHT_DECAYS", "evaluate", "extract_features", "fit_dense_head", "fit_linear_probe",
           "holdout_split", "silog_loss"]
