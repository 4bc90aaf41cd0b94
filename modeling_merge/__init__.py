"""MERGE: RUS-guided mixture-of-experts for massively multimodal time series, native to Hugging Face.

Importing the package registers `MergeConfig` (model_type ``merge``), `MergeModel` and
`MergeForSequenceClassification` with AutoConfig / AutoModel / AutoModelForSequenceClassification.
The other parts (``modeling_merge.rus``, ``modeling_merge.llm``, …) are imported as submodules.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .configuration_merge import MergeConfig
from .modeling_merge import MergeForSequenceClassification, MergeModel

MergeConfig.register_for_auto_class()
MergeModel.register_for_auto_class("AutoModel")
MergeForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
AutoConfig.register(MergeConfig.model_type, MergeConfig, exist_ok=True)
AutoModel.register(MergeConfig, MergeModel, exist_ok=True)
AutoModelForSequenceClassification.register(MergeConfig, MergeForSequenceClassification, exist_ok=True)

__all__ = ["MergeConfig", "MergeForSequenceClassification", "MergeModel"]
