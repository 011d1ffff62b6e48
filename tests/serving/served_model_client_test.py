"""The client on the real served model (the project's network, Transform graph and search index, built
as the ServingModelBuilder builds it, from tiny_serving_model): in-process, and over the REST and gRPC
stand-ins of tfserving_standin.py (contract tests), the same embeddings to 1e-6 as the evaluator's
path (serving_default on the same images as tf.Examples), and the same neighbours."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tiny_serving_model
from contract_model import png_bytes
from tfserving_standin import GrpcStandIn, ModelRegistry, RestStandIn

from triplet_tfx.components.data import data_sources
from triplet_tfx.components.serving import index
from triplet_tfx.components.serving.client import Client
from triplet_tfx.pipeline import cli

pytestmark = pytest.mark.slow

MODEL = "triplet_mnist"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    export = tiny_serving_model.trained_export()
    train_x, train_y, _, _ = tiny_serving_model.mnist_examples()
    examples = [data_sources.make_example(x, y) for x, y in zip(train_x, train_y)]
    embeddings = (
        tf.saved_model.load(export).signatures["serving_default"](examples=tf.constant(examples))["embedding"].numpy()
    )
    base = tmp_path_factory.mktemp("serving") / MODEL
    index.build_serving_model(export, index.reference_ids("train", len(train_y)), train_y, embeddings, str(base / "1"))
    return str(base)


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    """(PNG paths of 6 eval digits, the evaluator's embeddings of them: serving_default on tf.Examples)."""
    _, _, eval_x, eval_y = tiny_serving_model.mnist_examples()
    folder = tmp_path_factory.mktemp("queries")
    paths = []
    for i, image in enumerate(eval_x[:6]):
        paths.append(str(folder / f"eval{i}.png"))
        with open(paths[-1], "wb") as f:
            f.write(png_bytes(image.reshape(28, 28, 1)))
    return paths, [data_sources.make_example(x, y) for x, y in zip(eval_x[:6], eval_y[:6])]


@pytest.fixture(scope="module")
def clients(base_dir):
    registry = ModelRegistry({MODEL: base_dir})
    with RestStandIn(registry) as rest, GrpcStandIn(registry) as grpc_server:
        made = {
            "local": Client(model=base_dir),
            "rest": Client(server=rest.url, model_name=MODEL),
            "grpc": Client(server=grpc_server.url, model_name=MODEL),
        }
        yield made
        for client in made.values():
            client.close()


def test_embed_and_search_agree_everywhere_and_with_the_evaluators_embeddings(base_dir, clients, queries):
    paths, examples = queries
    evaluator = (
        tf.saved_model.load(os.path.join(base_dir, "1"))
        .signatures["serving_default"](examples=tf.constant(examples))["embedding"]
        .numpy()
    )
    results = {}
    for name, client in clients.items():
        np.testing.assert_allclose(client.embed(paths), evaluator, atol=1e-6, err_msg=name)
        results[name] = client.search(paths, k=5)
    for name in ("rest", "grpc"):
        np.testing.assert_array_equal(results[name].ids, results["local"].ids)
        np.testing.assert_array_equal(results[name].labels, results["local"].labels)
        np.testing.assert_allclose(results[name].distances, results["local"].distances, atol=1e-6)
    train_y = tiny_serving_model.mnist_examples()[1]
    ids = results["local"].ids
    assert all(i.startswith("train/") for i in ids.ravel())
    np.testing.assert_array_equal(results["local"].labels, train_y[[[int(i[6:]) for i in row] for row in ids]])
    assert np.all(np.diff(results["local"].distances, axis=1) >= 0)


def test_cli_on_the_pushed_layout(capsys, base_dir, queries):
    assert cli.main(["search", *queries[0], "--model", base_dir, "--k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == queries[0] and all(len(r["neighbours"]) == 2 for r in rows)
