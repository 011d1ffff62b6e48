"""Per-request nprobe: `Client.search(..., nprobe=N)` and `triplet-tfx search --nprobe N` call the
`search_with_nprobe` signature of a served ivf index, in-process and over the REST and gRPC stand-ins
(tfserving_standin.py). The served models are the project's (index.build_serving_model, an ivf index
of 8 float32 lists and an exact one) on the contract fixture's embedding model; expected neighbours
come from a NumPy search of the reference embeddings. The flag's checks on an exact model, fast, are
in serving_cli_test.py."""

import json

import numpy as np
import pytest
import tensorflow as tf
from contract_model import random_digits, reference_embeddings, write_contract_model, write_pngs
from tfserving_standin import GrpcStandIn, ModelRegistry, RestStandIn

from triplet_tfx.components import ivf_index
from triplet_tfx.components.serving import index
from triplet_tfx.components.serving.client import Client, NprobeError
from triplet_tfx.components.serving.client.errors import ModelNotFoundError
from triplet_tfx.pipeline import cli

pytestmark = pytest.mark.slow  # builds two served models with their indexes

LISTS, DEFAULT_NPROBE, K = 8, 2, 5
TRANSPORTS = ("local", "rest", "grpc")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """({"ivf": base directory, "exact": base directory, "export": the embedding model}, reference embeddings)."""
    root = tmp_path_factory.mktemp("nprobe")
    export = write_contract_model(str(root / "export"))
    pixels, labels = random_digits(200, seed=5)
    embeddings = tf.saved_model.load(export).signatures["embed_pixels"](pixels=tf.constant(pixels))["embedding"]
    embeddings, ids = embeddings.numpy(), index.reference_ids("train", len(labels))
    state = ivf_index.build_for(embeddings, ids, labels, LISTS, "float32")
    index.build_serving_model(
        export, ids, labels, embeddings, str(root / "ivf" / "1"), ivf=state, nprobe=DEFAULT_NPROBE
    )
    index.build_serving_model(export, ids, labels, embeddings, str(root / "exact" / "1"))
    return {"ivf": str(root / "ivf"), "exact": str(root / "exact"), "export": export}, embeddings


@pytest.fixture(scope="module")
def queries(tmp_path_factory, served):
    """(6 PNG paths, their embeddings by the embedding model's embed_pixels on PIL-decoded pixels)."""
    paths = write_pngs(str(tmp_path_factory.mktemp("queries")), 6)
    return paths, reference_embeddings(served[0]["export"], paths)


@pytest.fixture(scope="module")
def registry(served):
    return ModelRegistry({"ivf": served[0]["ivf"], "exact": served[0]["exact"]})


@pytest.fixture(scope="module")
def servers(registry):
    with RestStandIn(registry) as rest, GrpcStandIn(registry) as grpc_server:
        yield {"rest": rest.url, "grpc": grpc_server.url}


@pytest.fixture(scope="module")
def clients(served, servers):
    """{(transport, model name): Client}; "nope" is a model the servers do not have."""
    made = {(transport, "nope"): Client(server=url, model_name="nope", retries=0) for transport, url in servers.items()}
    for model in ("ivf", "exact"):
        made["local", model] = Client(model=served[0][model])
        for transport, url in servers.items():
            made[transport, model] = Client(server=url, model_name=model, retries=0)
    yield made
    for client in made.values():
        client.close()


def exact_search(queries: np.ndarray, references: np.ndarray, k: int):
    """(reference indices, distances) [Q, k] of the k nearest references by brute force."""
    distances = np.sqrt(np.maximum(((queries[:, None, :] - references[None, :, :]) ** 2).sum(-1), 0))
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return nearest, np.take_along_axis(distances, nearest, 1)


def positions(ids: np.ndarray) -> np.ndarray:
    return np.array([[int(i.split("/")[1]) for i in row] for row in ids])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_list_is_exact_search_and_one_list_answers_valid_neighbours(clients, served, queries, transport):
    references = served[1]
    paths, query_embeddings = queries
    client = clients[transport, "ivf"]
    nearest, distances = exact_search(query_embeddings, references, K)
    every = client.search(paths, k=K, nprobe=LISTS)
    np.testing.assert_array_equal(positions(every.ids), nearest)
    np.testing.assert_allclose(every.distances, distances, atol=1e-5)

    one = client.search(paths, k=K, nprobe=1)
    found = positions(one.ids)
    assert found.shape == (len(paths), K) and all(len(set(row)) == K for row in found)
    true_distances = np.linalg.norm(query_embeddings[:, None, :] - references[found], axis=-1)
    np.testing.assert_allclose(one.distances, true_distances, atol=1e-5)
    assert np.all(np.diff(one.distances, axis=1) >= 0) and np.all(one.distances >= distances - 1e-5)

    default = client.search(paths, k=K)  # `search`: the index's own nprobe
    np.testing.assert_array_equal(default.ids, client.search(paths, k=K, nprobe=DEFAULT_NPROBE).ids)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_nprobe_and_an_exact_index_are_refused_in_one_line(clients, registry, queries, transport):
    paths = queries[0]
    sent = registry.predict_requests
    with pytest.raises(ValueError, match=r"^nprobe must be a positive integer, got 0$"):
        clients[transport, "ivf"].search(paths, nprobe=0)
    with pytest.raises(NprobeError, match=r"the served index is exact and takes no nprobe") as refused:
        clients[transport, "exact"].search(paths, nprobe=2)
    assert refused.value.nprobe == 2 and str(refused.value).startswith("nprobe 2: ")
    assert registry.predict_requests == sent  # both refused before anything was sent
    with pytest.raises(NprobeError, match=rf"^nprobe {LISTS + 1}: the index has {LISTS} lists$"):
        clients[transport, "ivf"].search(paths, nprobe=LISTS + 1)  # the model's own assertion
    if transport != "local":
        with pytest.raises(ModelNotFoundError, match="'nope'"):
            clients[transport, "nope"].search(paths, nprobe=1)


def test_cli_search_nprobe(capsys, served, servers, queries):
    paths, query_embeddings = queries
    code = cli.main(["search", *paths, "--model", served[0]["ivf"], "--k", "3", "--nprobe", str(LISTS)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [r["input"] for r in rows] == paths
    found = [[int(n["id"].split("/")[1]) for n in r["neighbours"]] for r in rows]
    np.testing.assert_array_equal(found, exact_search(query_embeddings, served[1], 3)[0])

    assert cli.main(["search", *paths, "--server", servers["grpc"], "--model-name", "ivf", "--nprobe", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(paths)

    assert cli.main(["search", *paths, "--server", servers["rest"], "--model-name", "ivf", "--nprobe", "9"]) == 2
    assert capsys.readouterr().err == "triplet-tfx: error: --nprobe 9: the index has 8 lists\n"
