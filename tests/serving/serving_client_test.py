"""The serving client: in-process for real; REST and gRPC as contract tests against the stand-ins of
tests/serving/tfserving_standin.py (TF Serving 2.16's wire formats, on 127.0.0.1), all on the
contract fixture of contract_model.py. Expected values come from the SavedModel's own
`embed_pixels` on images decoded by PIL, and from a NumPy search over the stored index."""

import base64
import json
import os
import urllib.request

import numpy as np
import portpicker
import pytest
from contract_model import (
    CLASS_NAMES,
    png_bytes,
    random_digits,
    reference_embeddings,
    reference_search,
    write_contract_model,
    write_pngs,
)
from tfserving_standin import GrpcStandIn, ModelRegistry, RestStandIn

from triplet_tfx.components.serving.client import Client
from triplet_tfx.components.serving.client.errors import (
    ImageInputError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerUnavailableError,
    ServingTimeoutError,
    VersionNotLoadedError,
)

MODEL = "digits"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("serving") / MODEL)
    write_contract_model(base, version=1, class_names=False)  # a model from before class names
    write_contract_model(base, version=2)  # the latest: what TF Serving (and the stand-ins) load
    return base


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_pngs(str(tmp_path_factory.mktemp("images")), 5)


@pytest.fixture(scope="module")
def registry(base_dir):
    return ModelRegistry({MODEL: base_dir})


@pytest.fixture(scope="module")
def servers(registry):
    rest, grpc_server = RestStandIn(registry), None
    try:
        grpc_server = GrpcStandIn(registry)
        yield {"rest": rest.url, "grpc": grpc_server.url}
    finally:
        rest.stop()
        if grpc_server:
            grpc_server.stop()


@pytest.fixture(scope="module")
def clients(base_dir, servers):
    made = {
        "local": Client(model=base_dir),
        "rest": Client(server=servers["rest"], model_name=MODEL, batch_size=2),
        "grpc": Client(server=servers["grpc"], model_name=MODEL, batch_size=3),
    }
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def expected(base_dir, images):
    """Embeddings from the latest version's embed_pixels on PIL-decoded pixels."""
    return reference_embeddings(os.path.join(base_dir, "2"), images)


def test_embed_is_the_same_in_process_over_rest_and_over_grpc(clients, images, expected):
    for name, client in clients.items():
        embeddings = client.embed(images)
        assert embeddings.dtype == np.float32 and embeddings.shape == expected.shape, name
        np.testing.assert_allclose(embeddings, expected, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    with open(images[0], "rb") as f:  # bytes work like paths
        np.testing.assert_allclose(clients["rest"].embed([f.read()]), expected[:1], atol=1e-6)


def test_search_is_the_same_everywhere_and_matches_a_numpy_search(base_dir, clients, images, expected):
    ids, labels, distances = reference_search(os.path.join(base_dir, "2"), expected, k=3)
    for name, client in clients.items():
        result = client.search(images, k=3)
        assert result.ids.shape == (5, 3), name
        assert result.ids.tolist() == ids, name
        np.testing.assert_array_equal(result.labels, labels)
        assert result.class_names.tolist() == [[CLASS_NAMES[v] for v in row] for row in labels], name
        np.testing.assert_allclose(result.distances, distances, atol=1e-5)
    local = clients["local"].search(images, k=3)
    for name in ("rest", "grpc"):
        np.testing.assert_allclose(clients[name].search(images, k=3).distances, local.distances, atol=1e-6)


def test_rest_wire_format_is_tf_servings(servers, images):
    """The documented requests (row form with b64, columnar form for search) as raw JSON."""
    with open(images[0], "rb") as f:
        b64 = base64.b64encode(f.read()).decode()

    def post(body):
        request = urllib.request.Request(
            f"{servers['rest']}/v1/models/{MODEL}/versions/2:predict", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    embed = post({"signature_name": "embed_images", "instances": [{"b64": b64}]})
    assert list(embed) == ["predictions"] and len(embed["predictions"][0]) == 8
    search = post({"signature_name": "search", "inputs": {"images": [{"b64": b64}], "k": 2}})
    assert sorted(search["outputs"]) == ["class_names", "distances", "ids", "labels"]
    assert search["outputs"]["class_names"][0][0] in CLASS_NAMES
    assert isinstance(search["outputs"]["ids"][0][0], str) and len(search["outputs"]["labels"][0]) == 2
    with urllib.request.urlopen(f"{servers['rest']}/v1/models/{MODEL}", timeout=10) as response:
        status = json.loads(response.read())
    assert status["model_version_status"][0]["version"] == "2"
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_server_down_is_reported_after_retries(kind):
    port = portpicker.pick_unused_port()
    url = f"http://127.0.0.1:{port}" if kind == "rest" else f"grpc://127.0.0.1:{port}"
    with Client(server=url, model_name=MODEL, retries=2, backoff=0.01, timeout=5) as client:
        with pytest.raises(ServerUnavailableError, match=rf"{url}, model '{MODEL}' is unavailable after 3 attempts"):
            client.embed([png_bytes(random_digits(1)[0][0])])


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_unavailable_is_retried_until_the_server_answers(kind, servers, registry, images, expected):
    before = registry.predict_requests
    registry.unavailable_left = 2
    with Client(server=servers[kind], model_name=MODEL, retries=2, backoff=0.01) as client:
        np.testing.assert_allclose(client.embed(images[:1]), expected[:1], atol=1e-6)
    assert registry.predict_requests - before == 3
    registry.unavailable_left = 2
    with Client(server=servers[kind], model_name=MODEL, retries=1, backoff=0.01) as client:
        with pytest.raises(ServerUnavailableError, match="after 2 attempts: .*still loading"):
            client.embed(images[:1])


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_a_slow_server_times_out(kind, servers, registry, images):
    registry.delay_seconds = 1.5
    try:
        with Client(server=servers[kind], model_name=MODEL, timeout=0.3) as client:
            with pytest.raises(ServingTimeoutError, match=rf"{servers[kind]}, model '{MODEL}': no answer within 0.3 s"):
                client.embed(images[:1])
    finally:
        registry.delay_seconds = 0.0


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_unknown_model_and_version_not_loaded(kind, servers, images):
    url = servers[kind]
    with Client(server=url, model_name="no_such_model", retries=0) as client:
        with pytest.raises(ModelNotFoundError, match=rf"{url} has no model named 'no_such_model'") as err:
            client.embed(images[:1])
        assert not isinstance(err.value, VersionNotLoadedError)
    with Client(server=url, model_name=MODEL, version=1, retries=0) as client:
        with pytest.raises(
            VersionNotLoadedError,
            match=rf"{url}, model '{MODEL}' version 1 is not loaded "
            r"\(loaded versions: 2\)",
        ):
            client.search(images[:1], k=2)


def test_in_process_versions_and_missing_model(base_dir, images, tmp_path):
    with Client(model=base_dir, version=1) as client:
        assert client.target.endswith(os.path.join(MODEL, "1"))
    with pytest.raises(VersionNotLoadedError, match=r"has no version 7 \(versions: 1, 2\)"):
        Client(model=base_dir, version=7)
    with pytest.raises(ModelNotFoundError, match=f"no SavedModel at {tmp_path}"):
        Client(model=str(tmp_path))


def test_bad_files_are_named_before_anything_is_sent(clients, registry, images, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    before = registry.predict_requests
    for name in ("rest", "grpc"):
        with pytest.raises(ImageInputError, match=f"{tmp_path / 'missing.png'}: cannot read it"):
            clients[name].embed([images[0], str(tmp_path / "missing.png")])
        with pytest.raises(ImageInputError, match=f"{not_image}: not a PNG, JPEG, GIF or BMP image"):
            clients[name].search([str(not_image)], k=1)
        with pytest.raises(ImageInputError, match=r"images\[0\] \(bytes\): empty"):
            clients[name].embed([b""])
    assert registry.predict_requests == before


@pytest.mark.parametrize("kind", ["local", "rest", "grpc"])
def test_model_refusals_are_invalid_requests(kind, clients, images):
    broken = b"\x89PNG\r\n\x1a\n" + b"garbage"
    with pytest.raises(InvalidRequestError, match=r"signature embed_images: .*\(inputs: images\[0\] \(bytes\)\)"):
        clients[kind].embed([broken])
    with pytest.raises(InvalidRequestError, match="^k 51: the index holds 50 references$"):  # an IndexSizeError
        clients[kind].search(images[:1], k=51)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        clients[kind].search(images[:1], k=0)


def test_client_arguments():
    with pytest.raises(ValueError, match="exactly one of"):
        Client()
    with pytest.raises(ValueError, match="expected http://HOST:8501"):
        Client(server="ftp://host:1")


def test_a_model_without_class_names_gives_the_labels_as_text(tmp_path, images):
    """A model served before class names: its search has no class_names output."""
    base = str(tmp_path / "old")
    write_contract_model(base, version=1, class_names=False)
    registry = ModelRegistry({"old": base})
    rest, grpc_server = RestStandIn(registry), GrpcStandIn(registry)
    try:
        for client in (
            Client(model=base),
            Client(server=rest.url, model_name="old"),
            Client(server=grpc_server.url, model_name="old"),
        ):
            with client:
                result = client.search(images, k=2)
                assert result.class_names.tolist() == result.labels.astype(str).tolist(), client.target
    finally:
        rest.stop()
        grpc_server.stop()
