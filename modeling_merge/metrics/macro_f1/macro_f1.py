"""Macro-F1: the unweighted mean over classes of per-class F1 (a local, offline `evaluate` module)."""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = (
    "Macro-F1 = mean over classes c of 2·precision_c·recall_c / (precision_c + recall_c), every class "
    "weighted equally; a class never predicted nor present is left out unless `labels` lists it."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids, shape (N,).
    references (list of int): true class ids, shape (N,).
    labels (list of int, optional): the class ids to average over (default: those that occur).
Returns:
    macro_f1 (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, labels=None):
        if len(predictions) == 0:
            raise ValueError("macro_f1: no predictions were given")
        score = f1_score(references, predictions, labels=labels, average="macro", zero_division=0)
        return {"macro_f1": float(score)}
