"""The part of TFX's public `tfx.v1` API that the pipeline and the local runner use, under the
same names under `tfx_api` (`from triplet_tfx.pipeline import tfx_api`; `tfx_api.components.Trainer`, ...).

`from tfx import v1` also imports every extension, among them the Google Cloud AI Platform
one and with it google-cloud-aiplatform and its protos: about a third of a local run's
start-up (measured with `python -X importtime`). These are the modules `tfx.v1` re-exports.
"""

from types import SimpleNamespace

from tfx import components  # noqa: F401  (StatisticsGen, SchemaGen, ..., Trainer, Pusher)
from tfx.dsl.components.common.importer import Importer
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.orchestration import metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import pusher_pb2
from tfx.types import channel, standard_artifacts

dsl = SimpleNamespace(
    Importer=Importer,
    Resolver=Resolver,
    Channel=channel.Channel,
    Pipeline=Pipeline,
    experimental=SimpleNamespace(LatestBlessedModelStrategy=LatestBlessedModelStrategy),
)
types = SimpleNamespace(standard_artifacts=standard_artifacts)
proto = SimpleNamespace(PushDestination=pusher_pb2.PushDestination)
orchestration = SimpleNamespace(LocalDagRunner=LocalDagRunner, metadata=metadata)
