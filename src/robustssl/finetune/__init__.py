"""Fine-tuning on top of an encoder: the protocols (``protocols.py``: slf, alf, aff, ft), heads fitted on
frozen features (``heads.py``), adversarial training pieces (``adversarial.py``) and task-model
checkpoints (``checkpoint.py``).

>>> result = finetune(encoder, train_ds, val_ds, task="classification", protocol="aff", loss="trades")
>>> result.model, result.info["val_score"]
"""

from robustssl.finetune.adversarial import (
    TRAINING_LOSSES,
    Consistency,
    consistency_loss,
    craft_training_examples,
    evaluate_under_attack,
    natural_loss,
    trades_loss,
)
from robustssl.finetune.checkpoint import load_task_model, read_task_model_info, save_task_model
from robustssl.finetune.heads import (
    DEFAULT_WEIGHT_DECAYS,
    evaluate,
    extract_features,
    fit_dense_head,
    fit_linear_probe,
    holdout_split,
    silog_loss,
)
from robustssl.finetune.protocols import PROTOCOLS, FinetuneResult, finetune

__all__ = ["DEFAULT_WEIGHT_DECAYS", "PROTOCOLS", "TRAINING_LOSSES", "Consistency", "FinetuneResult",
           "consistency_loss", "craft_training_examples", "evaluate", "evaluate_under_attack",
           "extract_features", "finetune", "fit_dense_head", "fit_linear_probe", "holdout_split",
           "load_task_model", "natural_loss", "read_task_model_info", "save_task_model", "silog_loss",
           "trades_loss"]
