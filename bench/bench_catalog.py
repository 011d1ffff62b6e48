"""Catalog embedding throughput: images per second of CatalogEmbedder (a photo catalog embedded in
Beam by a pushed model, as `triplet-tfx index` runs it), with the in-process runner, its
multi-process mode (2 worker processes) and the portable runner (Beam's local job service and an
external worker pool), one after the other in one session.

  .venv/bin/python bench/bench_catalog.py                   # 10,000 PNG digits (28x28)
  .venv/bin/python bench/bench_catalog.py --images 2000     # a quick check

The model: a small strided network trained for a few steps (the throughput does not depend on its
weights). The catalog: MNIST training digits written as PNG files in class folders. Each runner
gets its own output root, so nothing is cached across them; the time is CatalogEmbedder's wall time
from ML Metadata (the run summary's), and CatalogExampleGen's is shown too.
"""

import argparse
import os
import sys
import tempfile

from PIL import Image

from triplet_tfx.components.config import (
    BeamConfig,
    DataConfig,
    EvalConfig,
    PipelineConfig,
    ServingConfig,
    TrainConfig,
)
from triplet_tfx.components.data import data_sources
from triplet_tfx.pipeline import cli, portable_beam, terminal
from triplet_tfx.pipeline.index_command import served_version

STEPS = ("CatalogExampleGen", "CatalogEmbedder")


def write_catalog(folder: str, count: int) -> None:
    images, labels = data_sources.load_mnist()["train"]
    for i in range(count):
        os.makedirs(os.path.join(folder, str(labels[i])), exist_ok=True)
        Image.fromarray(images[i][..., 0]).save(os.path.join(folder, str(labels[i]), f"{i:06d}.png"))


def index(root: str, model: str, catalog: str, beam: BeamConfig, beam_args=()) -> dict:
    config = PipelineConfig(
        output_root=root,
        beam=beam,
        beam_args=tuple(beam_args),
        serving=ServingConfig(catalog=f"images:{catalog}", index="exact"),
    )
    result = cli.run_locally(config, served_model=model)
    failed = {name: state for name, state in result.executions.items() if state != "COMPLETE"}
    if failed:
        raise RuntimeError(f"{beam.runner}: not complete: {failed} (outputs in {root})")
    return {name: result.seconds[name] for name in STEPS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, metavar="N", help="catalog size (default %(default)s)")
    args = parser.parse_args()
    terminal.setup_logging(verbose=False)
    work = tempfile.mkdtemp(prefix="triplet-tfx-bench-catalog-")
    trained = PipelineConfig(
        output_root=os.path.join(work, "model"),
        data=DataConfig(max_examples=600),
        train=TrainConfig(max_steps=20, network="strided"),
        eval=EvalConfig(lower_bounds={"precision_at_1": 0.0}, plot="pca"),
    )
    cli.run_locally(trained, verbose=False)
    model = served_version(trained.serving_model_dir)
    catalog = os.path.join(work, "catalog")
    write_catalog(catalog, args.images)

    runs = {"local": index(os.path.join(work, "local"), model, catalog, BeamConfig())}
    runs["multi-process (2 workers)"] = index(
        os.path.join(work, "multi"),
        model,
        catalog,
        BeamConfig(),
        ("--direct_num_workers=2", "--direct_running_mode=multi_processing"),
    )
    logs = os.path.join(work, "beam-services")
    os.makedirs(logs)
    with portable_beam.local_job_service_and_worker_pool(logs) as beam:
        runs["portable"] = index(os.path.join(work, "portable"), model, catalog, beam)

    print(f"\nCatalog of {args.images:,} PNG digits, embedded by a pushed model ({os.cpu_count()} logical CPUs)\n")
    print("| runner | CatalogExampleGen (s) | CatalogEmbedder (s) | images/s (CatalogEmbedder) |\n|---|---:|---:|---:|")
    for name, seconds in runs.items():
        rate = args.images / seconds["CatalogEmbedder"]
        print(f"| {name} | {seconds['CatalogExampleGen']:.1f} | {seconds['CatalogEmbedder']:.1f} | {rate:,.0f} |")
    print(f"\nOutputs and service logs in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
