"""End to end, a catalog: the pipeline trains on MNIST (raw pixels) and indexes a separate photo
catalog (1,500 PNG digits in class folders named by words) with an ivf index of 8 lists: embedded in
Beam, exported for Vertex AI Vector Search, served with `search` and `match`; then `triplet-tfx index`
refreshes the index with another catalog, without retraining, and a refresh killed midway leaves no
partial version."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from triplet_tfx.components.config import DataConfig, EvalConfig, PipelineConfig, ServingConfig, TrainConfig
from triplet_tfx.components.data import data_sources
from triplet_tfx.components.serving.client import Client
from triplet_tfx.pipeline import cli

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "serving"))
from tfserving_standin import GrpcStandIn, ModelRegistry, RestStandIn  # noqa: E402  (tests/serving)

pytestmark = pytest.mark.slow

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_catalog(folder, start: int, count: int) -> dict:
    """PNGs of MNIST test digits [start, start + count) in class folders; {relative path: class name}."""
    images, labels = data_sources.load_mnist()["test"]
    items = {}
    for i in range(start, start + count):
        name = NAMES[labels[i]]
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        relative = os.path.join(name, f"digit{i:05d}.png")
        Image.fromarray(images[i][..., 0]).save(os.path.join(folder, relative))
        items[relative] = name
    return items


@pytest.fixture(scope="module")
def catalog_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    items = write_catalog(str(root / "catalog"), 0, 1500)
    config = PipelineConfig(
        output_root=str(root / "out"),
        data=DataConfig(max_examples=600),
        train=TrainConfig(max_steps=40, network="strided"),
        eval=EvalConfig(lower_bounds={"precision_at_1": 0.0}, plot="pca", match_precision=0.9),
        serving=ServingConfig(catalog=f"images:{root / 'catalog'}", index="ivf", index_lists=8),
    )
    return config, cli.run_locally(config), items, root


def catalog_folder(config) -> str:
    (folder,) = glob.glob(os.path.join(config.pipeline_root, "CatalogEmbedder", "catalog_embeddings", "*"))
    return folder


def png(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_the_catalog_is_embedded_exported_and_served(catalog_run):
    config, summary, items, root = catalog_run
    assert summary.executions["CatalogExampleGen"] == "COMPLETE"
    assert summary.executions["CatalogEmbedder"] == "COMPLETE"
    assert summary.search_index.startswith("1500 catalog references")
    # Vertex AI Vector Search's import format: JSON Lines, unique ids, the class as a restrict.
    exported = []
    for path in glob.glob(os.path.join(catalog_folder(config), "vector_search", "*.json")):
        with open(path) as f:
            exported += [json.loads(line) for line in f]
    assert sorted(r["id"] for r in exported) == sorted(items)
    assert all(r["restricts"] == [{"namespace": "class", "allow": [items[r["id"]]]}] for r in exported)
    # The exported embeddings are the served model's embeddings of those files.
    loaded = tf.saved_model.load(summary.pushed_to)
    chosen = sorted(exported, key=lambda r: r["id"])[:64]
    served = loaded.signatures["embed_images"](images=tf.constant([png(root / "catalog" / r["id"]) for r in chosen]))[
        "embedding"
    ].numpy()
    np.testing.assert_allclose(np.array([r["embedding"] for r in chosen]), served, atol=1e-6)
    # search and match answer with catalog ids and the catalog's class names.
    queries = tf.constant([png(root / "catalog" / r["id"]) for r in chosen[:8]])
    found = loaded.signatures["search"](images=queries, k=tf.constant(3))
    assert [i.decode() for i in found["ids"].numpy()[:, 0]] == [r["id"] for r in chosen[:8]]  # itself, distance 0
    assert [n.decode() for n in found["class_names"].numpy()[:, 0]] == [items[r["id"]] for r in chosen[:8]]
    match = loaded.signatures["match"](images=queries)
    # Each image's own catalog entry, at the distance to its int8 codes.
    assert match["matched"].numpy().all() and np.allclose(match["distances"].numpy(), 0, atol=0.02)
    assert float(loaded.match_threshold.numpy()) == pytest.approx(summary.metrics["match_threshold"], rel=1e-6)


def test_search_and_match_through_the_rest_and_grpc_clients(catalog_run):
    config, summary, items, root = catalog_run
    serving = os.path.dirname(summary.pushed_to)
    paths = [str(root / "catalog" / relative) for relative in sorted(items)[::150]]  # 10 catalog photos
    registry = ModelRegistry({config.model_name: serving})
    with RestStandIn(registry) as rest, GrpcStandIn(registry) as grpc_server:
        clients = {
            "local": Client(model=serving),
            "rest": Client(server=rest.url, model_name=config.model_name),
            "grpc": Client(server=grpc_server.url, model_name=config.model_name),
        }
        found = {name: client.search(paths, k=3) for name, client in clients.items()}
        matched = {name: client.match(paths) for name, client in clients.items()}
        for client in clients.values():
            client.close()
    for name in ("rest", "grpc"):
        np.testing.assert_array_equal(found[name].ids, found["local"].ids)
        np.testing.assert_array_equal(found[name].class_names, found["local"].class_names)
        np.testing.assert_allclose(found[name].distances, found["local"].distances, atol=1e-6)
        np.testing.assert_array_equal(matched[name].ids, matched["local"].ids)
        np.testing.assert_array_equal(matched[name].matched, matched["local"].matched)
    assert found["local"].ids[:, 0].tolist() == sorted(items)[::150]
    assert matched["local"].ids.tolist() == sorted(items)[::150] and matched["local"].matched.all()
    assert matched["local"].class_names.tolist() == [items[i] for i in sorted(items)[::150]]


def test_a_catalog_with_duplicate_ids_is_refused_before_any_work(tmp_path, capsys):
    manifest = tmp_path / "catalog.csv"
    digit = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(digit)
    manifest.write_text(f"uri,label,id\n{digit},zero,a\n{digit},one,a\n")
    out = tmp_path / "out"
    assert cli.main(["run", "--output-root", str(out), "--catalog", f"manifest:{manifest}"]) == 2
    error = capsys.readouterr().err
    assert str(manifest) in error and "'a'" in error and "line 3" in error, error
    assert not out.exists()  # refused in the pre-flight checks: nothing written


def refresh(config, model_dir, catalog, output_root, **popen):
    argv = [
        "index",
        "--model",
        model_dir,
        "--catalog",
        f"images:{catalog}",
        "--index",
        "ivf",
        "--index-lists",
        "4",
        "--output-root",
        output_root,
        "--pipeline-name",
        config.pipeline_name,
    ]
    if popen:
        return subprocess.Popen([sys.executable, "-m", "triplet_tfx.pipeline.cli", *argv], **popen)
    return cli.main(argv)


def test_index_refresh_pushes_a_new_version_with_the_same_model(catalog_run, capsys):
    config, summary, _, root = catalog_run
    serving = os.path.dirname(summary.pushed_to)
    before = sorted(os.listdir(serving))
    new_items = write_catalog(str(root / "new_catalog"), 5000, 400)
    assert refresh(config, serving, root / "new_catalog", config.output_root) == 0
    assert "Pushed model: " in capsys.readouterr().out
    after = sorted(os.listdir(serving))
    assert len(after) == len(before) + 1 and set(before) < set(after)
    old, new = tf.saved_model.load(summary.pushed_to), tf.saved_model.load(os.path.join(serving, after[-1]))
    assert sorted(i.decode() for i in new.reference_ids.numpy()) == sorted(new_items)
    assert old.reference_ids.shape == (1500,)  # the old version is untouched and loadable
    queries = tf.constant([png(root / "new_catalog" / path) for path in sorted(new_items)[:16]])
    np.testing.assert_array_equal(  # the same weights
        old.signatures["embed_images"](images=queries)["embedding"].numpy(),
        new.signatures["embed_images"](images=queries)["embedding"].numpy(),
    )
    assert float(new.match_threshold.numpy()) == float(old.match_threshold.numpy())
    found = new.signatures["search"](images=queries, k=tf.constant(1))
    assert [i.decode() for i in found["ids"].numpy()[:, 0]] == sorted(new_items)[:16]
    # Only the model's own embedding variables travel into the new version, not the old index.
    stored = tf.train.load_checkpoint(os.path.join(serving, after[-1], "variables", "variables"))
    assert sum(key.endswith("/centroids/.ATTRIBUTES/VARIABLE_VALUE") for key in stored.get_variable_to_shape_map()) == 1


def test_a_refresh_killed_midway_leaves_no_partial_version(catalog_run, tmp_path):
    config, summary, _, root = catalog_run
    serving = os.path.dirname(summary.pushed_to)
    write_catalog(str(tmp_path / "catalog"), 6000, 300)
    log = open(tmp_path / "refresh.log", "w")
    output_root = str(tmp_path / "out")
    process = refresh(config, serving, tmp_path / "catalog", output_root, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        # Kill it as it builds and pushes: once the builder's output folder appears.
        pattern = os.path.join(output_root, "pipelines", f"{config.pipeline_name}-index", "*", "*", "*")
        while time.monotonic() < deadline and process.poll() is None:
            if any(os.path.basename(os.path.dirname(p)) == "serving_model" for p in glob.glob(pattern)):
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL  # killed while it ran, not after it finished
    for name in os.listdir(serving):
        if name.isdigit():  # every numbered version is a whole model
            tf.saved_model.load(os.path.join(serving, name))
    assert not [n for n in os.listdir(serving) if not n.isdigit() and not n.startswith(".push-tmp-")]


def test_index_add_keeps_the_served_lists(catalog_run, capsys):
    config, summary, _, root = catalog_run
    serving = os.path.dirname(summary.pushed_to)
    newest = os.path.join(serving, sorted(os.listdir(serving), key=lambda n: int(n) if n.isdigit() else -1)[-1])
    before = tf.saved_model.load(newest)
    added = write_catalog(str(root / "added"), 7000, 120)
    argv = ["index", "--model", newest, "--catalog", f"images:{root / 'added'}", "--index-add"]
    assert cli.main([*argv, "--output-root", config.output_root, "--pipeline-name", config.pipeline_name]) == 0
    assert "items added to the served lists" in capsys.readouterr().out
    after = tf.saved_model.load(os.path.join(serving, max(n for n in os.listdir(serving) if n.isdigit())))
    np.testing.assert_array_equal(after.ivf.centroids.numpy(), before.ivf.centroids.numpy())  # no re-clustering
    old_ids = {i.decode() for i in before.reference_ids.numpy()}
    assert {i.decode() for i in after.reference_ids.numpy()} == old_ids | set(added)
    queries = tf.constant([png(root / "added" / path) for path in sorted(added)[:8]])
    found = after.signatures["search"](images=queries, k=tf.constant(1))
    assert [i.decode() for i in found["ids"].numpy()[:, 0]] == sorted(added)[:8]
