"""AnomalyGate: stops the run when ExampleValidator found anomalies.

TFX's ExampleValidator only records anomalies; a pipeline that must not train on bad data
needs a step that fails, with a message that says which split and feature are wrong.
"""

import os
from typing import List

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies

ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator writes in each Split-<name>/


class DataAnomalyError(RuntimeError):
    pass


def describe_anomalies(split: str, anomalies: anomalies_pb2.Anomalies) -> List[str]:
    problems = [
        f"split '{split}', feature '{feature}': {info.short_description or info.description}"
        for feature, info in sorted(anomalies.anomaly_info.items())
    ]
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        problems.append(f"split '{split}', dataset: {info.short_description or info.description}")
    return problems


@component
def AnomalyGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:
    """Raises DataAnomalyError listing every anomaly of every split."""
    problems = []
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies], split), ANOMALIES_FILE)
        found = anomalies_pb2.Anomalies()
        found.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
        problems += describe_anomalies(split, found)
    if problems:
        raise DataAnomalyError(
            "ExampleValidator found anomalies in the data:\n  "
            + "\n  ".join(problems)
            + f"\n(details: {anomalies.uri})"
        )
