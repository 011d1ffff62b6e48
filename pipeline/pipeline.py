"""create_pipeline: the one definition of the pipeline, for every runner.

ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> AnomalyGate -> Transform
-> Trainer -> EmbeddingEvaluator (against the latest blessed model) -> ServingModelBuilder (model +
search index) -> Pusher; with --catalog, CatalogExampleGen -> CatalogEmbedder feed the index.

create_index_pipeline: the index refreshed without retraining (ModelImporter -> CatalogExampleGen
-> CatalogEmbedder -> ServingModelBuilder -> Pusher), `triplet-tfx index`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional

import tensorflow_data_validation as tfdv
from tfx.proto import transform_pb2

from triplet_tfx.components.config import ConfigError, PipelineConfig, flag_of
from triplet_tfx.components.data import data_sources, manifest
from triplet_tfx.components.data.example_gen import SourceExampleGen
from triplet_tfx.components.data.validation import AnomalyGate
from triplet_tfx.components.evaluation.baseline import LatestPushedModelStrategy
from triplet_tfx.components.evaluation.evaluator import EmbeddingEvaluator
from triplet_tfx.components.serving.builder import ServingModelBuilder
from triplet_tfx.components.serving.catalog import CatalogEmbedder
from triplet_tfx.components.serving.pusher import KEEP_VERSIONS_KEY, Pusher
from triplet_tfx.pipeline import tfx_api  # tfx.v1's names, without its extensions

# User code is referenced by the dotted names of installed modules (no module_file): TFX then
# packages nothing, and the code fingerprint below tells its cache when that code changed.
PREPROCESSING_FN = "triplet_tfx.components.data.preprocessing.preprocessing_fn"
RUN_FN = "triplet_tfx.components.training.run.run_fn"
BASELINE_RESOLVER_ID = "BaselineModelResolver"
CATALOG_EXAMPLE_GEN_ID = "CatalogExampleGen"
MODEL_IMPORTER_ID = "ModelImporter"


def code_fingerprint() -> str:
    """SHA-256 of the code that runs inside the components: every module below components/ (the
    config among them)."""
    import triplet_tfx.components

    root = os.path.dirname(triplet_tfx.components.__file__)
    paths = sorted(
        os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names if name.endswith(".py")
    )
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.relpath(path, os.path.dirname(root)).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def data_fingerprint(source_path: str) -> str:
    """Names, sizes and modification times of the files below a source folder (following links to
    files; link loops left out, a broken link is a DataSourceError naming it)."""
    from triplet_tfx.components.data.image_items import stat_followed

    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(source_path)):
        dirs.sort()
        for name in sorted(files):
            stat = stat_followed(os.path.join(folder, name))
            if stat is None:
                continue
            digest.update(
                f"{os.path.relpath(os.path.join(folder, name), source_path)}"
                f":{stat.st_size}:{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:16]


# Sources whose files tell TFX's cache when the data changed.
FINGERPRINT_OF = {"tfrecord": data_fingerprint, "images": data_fingerprint, "manifest": manifest.fingerprint}


def create_pipeline(
    config: PipelineConfig,
    metadata_connection_config: Optional[object] = None,
    baseline: str = "pushed",
    data_only: bool = False,
    trainer_class: Optional[type] = None,
    trainer_custom_config: Optional[dict] = None,
) -> tfx_api.dsl.Pipeline:
    """`baseline`: the evaluator's baseline is the latest `pushed` model, or the latest `blessed` one
    (TFX's LatestBlessedModelStrategy, for Kubeflow: KFP v2 compiles only TFX's built-in strategies).
    `data_only`: ExampleGen through Transform alone, no training (Beam runner tests and benchmarks).
    `trainer_class` / `trainer_custom_config`: where the Trainer trains, for kubeflow/runner.py
    (TFX's Vertex AI Trainer and its keys, or a `tfjob` section); default: in its own process.
    The callers check the data source first (`data_sources.check_source`): `triplet-tfx run` before
    it creates the output root, the Kubeflow compiler before it compiles."""
    config.validate()
    if config.serving.index_add:
        raise ConfigError(f"{flag_of('serving', 'index_add')} adds to a served index: it is for `triplet-tfx index`")
    fingerprint = code_fingerprint()
    everything = config.to_dict()

    def sections(*names: str) -> dict:
        # Each component gets only the sections it reads, so that changing, say, a blessing
        # threshold does not invalidate the cached Transform and Trainer.
        return {**{name: everything[name] for name in names}, "code_fingerprint": fingerprint}

    data = config.data
    local = "://" not in data.source_path
    example_gen = SourceExampleGen(
        data=data,
        data_fingerprint=FINGERPRINT_OF[data.source_kind](data.source_path)
        if data.source_kind in FINGERPRINT_OF and local
        else None,
    )
    statistics_gen = tfx_api.components.StatisticsGen(
        examples=example_gen.outputs["examples"],
        # Top values and distinct counts from sketches (Misra-Gries, HyperLogLog), not exact counts:
        # every image is a distinct bytes value, and counting them exactly was half of StatisticsGen's
        # time on MNIST (bench/README.md, "Statistics from sketches").
        stats_options=tfdv.StatsOptions(experimental_use_sketch_based_topk_uniques=True),
    )
    schema_gen = tfx_api.components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx_api.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"])

    transform = tfx_api.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=sections("data"),
        # The Trainer applies the Transform graph to ExampleGen's examples as it reads them (as the
        # served model does): writing 784 floats per example and their statistics took most of
        # Transform's time, and the Trainer read them back as slowly as it reads the raw bytes.
        materialize=False,
        # Encoded sources: the class-name vocabulary is analysed over train AND eval (eval may hold
        # classes train lacks). `transform` names the splits the default names (all); with
        # materialize=False the executor writes none of them (executor.py: no materialize paths).
        splits_config=transform_pb2.SplitsConfig(analyze=["train", "eval"], transform=["train", "eval"])
        if config.data.encoded_images
        else None,
        disable_statistics=True,
    )
    # Train only on data that passed validation.
    transform.add_upstream_node(anomaly_gate)
    # Beam runs in the data components only: they alone get the runner's options, so a
    # Kubeflow package sends ExampleGen, StatisticsGen and Transform to Dataflow or Flink while
    # the Trainer and the evaluator stay in their own containers.
    for component in (example_gen, statistics_gen, transform):
        component.with_beam_pipeline_args(config.data_beam_args)

    def assemble(components) -> tfx_api.dsl.Pipeline:
        return tfx_api.dsl.Pipeline(
            pipeline_name=config.pipeline_name,
            pipeline_root=config.pipeline_root,
            components=components,
            enable_cache=config.enable_cache,
            metadata_connection_config=metadata_connection_config,
        )

    data_components = [example_gen, statistics_gen, schema_gen, example_validator, anomaly_gate, transform]
    if data_only:
        return assemble(data_components)

    trainer = (trainer_class or tfx_api.components.Trainer)(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        custom_config={**sections("data", "train"), **(trainer_custom_config or {})},
    )

    # The model in production: the latest one this pipeline pushed (none on a first run), so that a
    # blessed model whose push failed is not taken for the baseline and is pushed by the next run.
    if baseline == "pushed":
        baseline_resolver = tfx_api.dsl.Resolver(
            strategy_class=LatestPushedModelStrategy,
            model=tfx_api.dsl.Channel(type=tfx_api.types.standard_artifacts.Model),
            pushed_model=tfx_api.dsl.Channel(type=tfx_api.types.standard_artifacts.PushedModel),
        )
    else:
        baseline_resolver = tfx_api.dsl.Resolver(
            strategy_class=tfx_api.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx_api.dsl.Channel(type=tfx_api.types.standard_artifacts.Model),
            model_blessing=tfx_api.dsl.Channel(type=tfx_api.types.standard_artifacts.ModelBlessing),
        )
    baseline_resolver = baseline_resolver.with_id(BASELINE_RESOLVER_ID)

    evaluator = EmbeddingEvaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline_resolver.outputs["model"],
        config=json.dumps(sections("data", "eval", "serving"), sort_keys=True),
    )

    # A catalog other than the training data: embedded in Beam by the blessed model, it is the index.
    catalog_components = (
        catalog_embedding(config, trainer.outputs["model"], evaluator.outputs["blessing"])
        if config.serving.catalog
        else []
    )
    # The blessed model with its search index, as one Model (see components/serving/builder.py).
    serving_model_builder = ServingModelBuilder(
        model=trainer.outputs["model"],
        examples=example_gen.outputs["examples"],
        blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"],
        catalog_embeddings=catalog_components[-1].outputs["catalog_embeddings"] if catalog_components else None,
        config=json.dumps(sections("serving"), sort_keys=True),
    )
    pusher = serving_pusher(config, serving_model_builder, evaluator.outputs["blessing"])
    return assemble(
        data_components + [trainer, baseline_resolver, evaluator] + catalog_components + [serving_model_builder, pusher]
    )


def catalog_embedding(config: PipelineConfig, model, blessing=None) -> list:
    """[CatalogExampleGen, CatalogEmbedder]: the --catalog source read as examples, embedded in Beam."""
    catalog_data = data_sources.catalog_data(config.data, config.serving.catalog)
    local = "://" not in catalog_data.source_path and catalog_data.source_kind in FINGERPRINT_OF
    example_gen = SourceExampleGen(
        data=catalog_data,
        data_fingerprint=FINGERPRINT_OF[catalog_data.source_kind](catalog_data.source_path) if local else None,
        catalog=True,
    ).with_id(CATALOG_EXAMPLE_GEN_ID)
    embedder = CatalogEmbedder(examples=example_gen.outputs["examples"], model=model, blessing=blessing)
    for component in (example_gen, embedder):
        component.with_beam_pipeline_args(config.data_beam_args)
    return [example_gen, embedder]


def serving_pusher(config: PipelineConfig, builder, blessing=None) -> Pusher:
    return Pusher(
        model=builder.outputs["serving_model"],
        model_blessing=blessing,
        push_destination=tfx_api.proto.PushDestination(
            filesystem=tfx_api.proto.PushDestination.Filesystem(base_directory=config.serving_model_dir)
        ),
        custom_config={KEEP_VERSIONS_KEY: config.serving.keep_versions},
    )


def create_index_pipeline(
    config: PipelineConfig, model_uri: str, metadata_connection_config: Optional[object] = None
) -> tfx_api.dsl.Pipeline:
    """Index refresh without retraining: an existing served model (a pushed version folder,
    `model_uri`) embeds the --catalog source in Beam, and a new version holding the same model and the
    new index is pushed next to it, keeping the model's match threshold. Its name, root, ML Metadata
    and serving folder: `index_config`'s."""
    config.validate()
    if not config.serving.catalog:
        raise ValueError("the index pipeline needs a catalog (--catalog SOURCE)")
    fingerprint = code_fingerprint()
    refresh = index_config(config, model_uri)
    model = tfx_api.dsl.Importer(source_uri=model_uri, artifact_type=tfx_api.types.standard_artifacts.Model).with_id(
        MODEL_IMPORTER_ID
    )
    catalog_components = catalog_embedding(config, model.outputs["result"])
    builder = ServingModelBuilder(
        model=model.outputs["result"],
        catalog_embeddings=catalog_components[-1].outputs["catalog_embeddings"],
        config=json.dumps({"serving": config.to_dict()["serving"], "code_fingerprint": fingerprint}, sort_keys=True),
    )
    return tfx_api.dsl.Pipeline(
        pipeline_name=refresh.pipeline_name,
        pipeline_root=refresh.pipeline_root,
        components=[model] + catalog_components + [builder, serving_pusher(refresh, builder)],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
    )


def index_config(config: PipelineConfig, model_uri: str) -> PipelineConfig:
    """The index pipeline's configuration: named <--pipeline-name>-index, so that it has its own
    pipeline root and ML Metadata next to the training pipeline's, and pushing next to the model
    (`model_uri`, a version folder of a serving folder)."""
    base = os.path.dirname(model_uri.rstrip("/"))
    return dataclasses.replace(
        config,
        pipeline_name=f"{config.pipeline_name}-index",
        serving_dir=os.path.dirname(base),
        model_name=os.path.basename(base),
    )
