"""The evaluator's baseline: the model in production, i.e. the one most recently *pushed*.

TFX's LatestBlessedModelStrategy takes the latest blessed model. A model that was blessed but
whose push then failed would become the baseline, the evaluator would find the candidate equal
to it, and no later run would push it. Here the Pusher's success decides: the baseline is the
model named (`current_model_id`, as TFX's Evaluator sets it) by the ModelBlessing that the Pusher
of the newest PushedModel with `pushed` = 1 read, found through ML Metadata's lineage. The
blessing, not the Pusher's `model` input, names it: what the Pusher copies may be built from the
trained model (e.g. with a search index added), while the evaluator compares trained models.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.components.evaluator import constants
from tfx.dsl.components.common import resolver
from tfx.types import standard_artifacts, standard_component_specs

PUSHED_KEY = "pushed"  # custom property TFX's Pusher sets to 1 on a successful push


class LatestPushedModelStrategy(resolver.ResolverStrategy):
    """Resolves {model: [the model of the latest successful push], pushed_model: [that push]},
    or empty lists before the first push. Input channels: one of Model, one of PushedModel."""

    def resolve_artifacts(
        self, store: mlmd.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
    ) -> Optional[Dict[str, List[types.Artifact]]]:
        empty = {key: [] for key in input_dict}
        model_key = next((k for k, v in input_dict.items() if v and isinstance(v[0], standard_artifacts.Model)), None)
        push_key = next(
            (k for k, v in input_dict.items() if v and isinstance(v[0], standard_artifacts.PushedModel)), None
        )
        if model_key is None or push_key is None:  # nothing trained or nothing pushed yet
            return empty
        models = {m.id: m for m in input_dict[model_key]}
        pushes = sorted(
            (p for p in input_dict[push_key] if p.get_int_custom_property(PUSHED_KEY) == 1),
            key=lambda p: p.id,
            reverse=True,
        )
        for push in pushes:
            pushers = [
                e.execution_id
                for e in store.get_events_by_artifact_ids([push.id])
                if e.type == metadata_store_pb2.Event.OUTPUT
            ]
            blessing_ids = [
                e.artifact_id
                for e in store.get_events_by_execution_ids(pushers)
                if e.type == metadata_store_pb2.Event.INPUT
                and e.path.steps
                and e.path.steps[0].key == standard_component_specs.MODEL_BLESSING_KEY
            ]
            for blessing in store.get_artifacts_by_id(blessing_ids):
                model_id = blessing.custom_properties[constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY].int_value
                if model_id in models:
                    return {model_key: [models[model_id]], push_key: [push]}
        return empty
