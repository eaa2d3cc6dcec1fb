"""tflite-cluster: post-training weight clustering of deployed TensorFlow Lite models.

>>> import tflite_cluster as tc
>>> result = tc.cluster("model.tflite", tc.ClusterConfig(k=16))
>>> result.save("model_k16.tflite")
"""

from .clustering import ClusterReport, ClusterResult, TensorReport, cluster
from .config import ClusterConfig, Granularity, Init, Method, NameRule, Settings, Space, load_config
from .errors import (ClusterError, ConfigError, InputFileError, InvalidModelError,
                     MissingExtraError, OutputError, UnsupportedModelError)
from .inspection import Inspection, TensorInfo, inspect

__version__ = "0.1.0"

__all__ = [
    "cluster", "inspect", "load_config",
    "ClusterConfig", "Settings", "NameRule", "Granularity", "Space", "Method", "Init",
    "ClusterResult", "ClusterReport", "TensorReport", "Inspection", "TensorInfo",
    "ClusterError", "ConfigError", "InputFileError", "InvalidModelError", "UnsupportedModelError",
    "OutputError", "MissingExtraError", "__version__",
]
