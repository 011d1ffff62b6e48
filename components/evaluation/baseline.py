"""The evaluator's baseline: the model in production, i.e. the one most recently *pushed*.

TFX's LatestBlessedModelStrategy takes the latest blessed model. A model that was blessed but
whose push then failed would become the baseline, the evaluator would find the candidate equal
to it, and no later run would push it. Here the Pusher's success decides: the baseline is the
model of the newest PushedModel with `pushed` = 1, found through ML Metadata's lineage (the
Pusher execution that wrote the PushedModel, and the Model it read).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.types import standard_artifacts

PUSHED_KEY = "pushed"  # custom property TFX's Pusher sets to 1 on a successful push
PUSHER_MODEL_INPUT = "model"  # the Pusher's input key of the model it pushes


class LatestPushedModelStrategy(resolver.ResolverStrategy):
    """Resolves {model: [the model of the latest successful push], pushed_model: [that push]},
    or empty lists before the first push. Input channels: one of Model, one of PushedModel."""

    def resolve_artifacts(self, store: mlmd.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        empty = {key: [] for key in input_dict}
        model_key = next((k for k, v in input_dict.items() if v and isinstance(v[0], standard_artifacts.Model)), None)
        push_key = next((k for k, v in input_dict.items() if v and isinstance(v[0], standard_artifacts.PushedModel)),
                        None)
        if model_key is None or push_key is None:  # nothing trained or nothing pushed yet
            return empty
        models = {m.id: m for m in input_dict[model_key]}
        pushes = sorted((p for p in input_dict[push_key] if p.get_int_custom_property(PUSHED_KEY) == 1),
                        key=lambda p: p.id, reverse=True)
        for push in pushes:
            pushers = [e.execution_id for e in store.get_events_by_artifact_ids([push.id])
                       if e.type == metadata_store_pb2.Event.OUTPUT]
            for event in store.get_events_by_execution_ids(pushers):
                if (event.type == metadata_store_pb2.Event.INPUT and event.path.steps
                        and event.path.steps[0].key == PUSHER_MODEL_INPUT and event.artifact_id in models):
                    return {model_key: [models[event.artifact_id]], push_key: [push]}
        return empty
