"""MERGE: RUS-guided mixture-of-experts for massively multimodal time series, native to Hugging Face.

Importing the package registers `MergeConfig` (model_type ``merge``), `MergeModel` and
`MergeForSequenceClassification` / `MergeForTokenClassification` with AutoConfig / AutoModel /
AutoModelForSequenceClassification / AutoModelForTokenClassification,
`MergeProcessor` with AutoFeatureExtractor / AutoProcessor, and the ``time-series-classification`` pipeline.
The other parts (``modeling_merge.rus``, ``modeling_merge.llm``, …) are imported as submodules.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_merge import MergeConfig
from .modeling_merge import MergeForSequenceClassification, MergeForTokenClassification, MergeModel
from .processing_merge import PIPELINE_TASK, MergeProcessor, TimeSeriesClassificationPipeline

__version__ = "0.1.0"

MergeConfig.register_for_auto_class()
MergeModel.register_for_auto_class("AutoModel")
MergeForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
MergeForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
MergeProcessor.register_for_auto_class("AutoFeatureExtractor")
AutoConfig.register(MergeConfig.model_type, MergeConfig, exist_ok=True)
AutoModel.register(MergeConfig, MergeModel, exist_ok=True)
AutoModelForSequenceClassification.register(MergeConfig, MergeForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(MergeConfig, MergeForTokenClassification, exist_ok=True)
AutoFeatureExtractor.register(MergeConfig, MergeProcessor, exist_ok=True)
AutoProcessor.register(MergeConfig, MergeProcessor, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=TimeSeriesClassificationPipeline,
                                    pt_model=AutoModelForSequenceClassification, type="multimodal")

__all__ = [
    "MergeConfig",
    "MergeForSequenceClassification",
    "MergeForTokenClassification",
    "MergeModel",
    "MergeProcessor",
    "TimeSeriesClassificationPipeline",
    "__version__",
]
