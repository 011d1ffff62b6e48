"""Pusher: TFX's Pusher, copying into the serving folder atomically and without version collisions.

TFX 1.16's Pusher names a version by the clock's second and copies the model straight into
`<base>/<version>/`: two runs pushing to one serving folder in the same second share a version
(the second copy is skipped, yet reported as pushed), and a push killed midway leaves a
half-written version that a model server's file-system poller would try to load. Here local
serving folders get `serving_folder.push_atomically` (a locked, unique version, written under a
temporary name and renamed into place). Remote destinations (gs://...) have no atomic rename:
there TFX's own copy runs (`saved_model.pb` last, which is what model servers wait for).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List

from tfx import types
from tfx.components.pusher import component as pusher_component, executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, json_utils, proto_utils

from triplet_tfx.components.serving.serving_folder import push_atomically

logger = logging.getLogger(__name__)
KEEP_VERSIONS_KEY = "keep_versions"  # custom_config: keep the newest N versions (0: all)


class AtomicPushExecutor(pusher_executor.Executor):
    """TFX's Pusher executor with `push_atomically` for local serving folders."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        base = destination.filesystem.base_directory
        if destination.WhichOneof("destination") != "filesystem" or "://" in base:
            super().Do(input_dict, output_dict, exec_properties)
            return
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        custom_config = json_utils.loads(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null")
        keep = int((custom_config or {}).get(KEEP_VERSIONS_KEY, 0))
        serving_path = push_atomically(self.GetModelPath(input_dict), base, keep)
        logger.info("Model written to serving path %s.", serving_path)
        io_utils.copy_dir(self.GetModelPath(input_dict), model_push.uri)  # TFX's archive copy
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=os.path.basename(serving_path))


class Pusher(pusher_component.Pusher):
    """TFX's Pusher component, pushing with AtomicPushExecutor; `custom_config={KEEP_VERSIONS_KEY: N}`
    keeps the newest N versions of a local serving folder."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPushExecutor)
