"""AUROC, binary or one-vs-rest macro-averaged over classes (a local, offline `evaluate` module)."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import roc_auc_score

_DESCRIPTION = (
    "Area under the ROC curve. Binary: `prediction_scores` is the positive-class score per example. "
    "Multiclass: `prediction_scores` holds one probability per class and the result is the unweighted "
    "mean of the one-vs-rest AUROCs of the classes present in `references`."
)
_KWARGS_DESCRIPTION = """
Args:
    prediction_scores: (N,) floats (binary config) or (N, C) class probabilities summing to 1 (multiclass config).
    references (list of int): true class ids, shape (N,).
Returns:
    roc_auc (float): in [0, 1]; 0.5 is chance.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RocAuc(evaluate.Metric):
    def _info(self):
        if self.config_name not in ("default", "binary", "multiclass"):
            raise ValueError(f"roc_auc: unknown config {self.config_name!r}; use 'binary' or 'multiclass'")
        score = datasets.Sequence(datasets.Value("float64")) if self.config_name == "multiclass" else datasets.Value("float64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"prediction_scores": score, "references": datasets.Value("int64")}),
        )

    def _compute(self, prediction_scores, references):
        references = np.asarray(references)
        present = np.unique(references)
        if present.size < 2:
            raise ValueError(f"roc_auc: the references hold only class(es) {present.tolist()}; AUROC needs two classes")
        scores = np.asarray(prediction_scores, dtype=np.float64)
        if not np.all(np.isfinite(scores)):
            raise ValueError("roc_auc: prediction_scores contain NaN or infinite values")
        if scores.ndim == 1:
            return {"roc_auc": float(roc_auc_score(references, scores))}
        one_vs_rest = [roc_auc_score(references == c, scores[:, c]) for c in present]
        return {"roc_auc": float(np.mean(one_vs_rest))}
