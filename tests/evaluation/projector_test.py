"""The projector bundle, read back by TensorBoard's own projector plugin (its HTTP routes)."""

import io
import json
import os

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.base_plugin import TBContext
from tensorboard.plugins.projector import projector_plugin
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from werkzeug.test import Client

from triplet_tfx.components import projector


def _plugin_client(logdir):
    plugin = projector_plugin.ProjectorPlugin(TBContext(logdir=str(logdir), data_provider=None))
    apps = plugin.get_plugin_apps()

    def get(route, **args):
        client = Client(apps[route])
        response = client.get(route, query_string=args)
        return response.status_code, response.get_data()

    return get


def _data(n=30, d=6, side=(5, 4), channels=None, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    labels = rng.integers(0, 4, size=n)
    shape = (n,) + side + ((channels,) if channels else ())
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return emb, labels, images


def test_single_column_bundle_through_plugin(tmp_path):
    emb, labels, images = _data()
    paths = projector.write_projector_bundle(str(tmp_path), emb, labels, images=images)
    assert set(paths) == {"vecs", "meta", "sprite", "config"}
    for p in paths.values():
        assert os.path.isfile(p)

    get = _plugin_client(tmp_path)
    status, body = get("/runs")
    assert status == 200 and json.loads(body) == ["."]

    status, body = get("/info", run=".")
    assert status == 200
    info = json.loads(body)
    (emb_info,) = info["embeddings"]
    assert emb_info["tensorName"] == projector.TENSOR_NAME
    assert [int(x) for x in emb_info["tensorShape"]] == [30, 6]
    assert [int(x) for x in emb_info["sprite"]["singleImageDim"]] == [4, 5]  # [width, height]

    status, body = get("/tensor", run=".", name=projector.TENSOR_NAME)
    assert status == 200
    served = np.frombuffer(body, dtype=np.float32).reshape(30, 6)
    np.testing.assert_allclose(served, emb, rtol=1e-4, atol=1e-6)

    status, body = get("/metadata", run=".", name=projector.TENSOR_NAME)
    assert status == 200
    lines = body.decode().splitlines()
    # One column: no header and no tab anywhere (a tab on the first line means "header").
    assert len(lines) == 30 and all("\t" not in line for line in lines)
    assert lines == [str(int(v)) for v in labels]

    status, body = get("/sprite_image", run=".", name=projector.TENSOR_NAME)
    assert status == 200
    sprite = np.asarray(Image.open(io.BytesIO(body)))
    side = int(np.ceil(np.sqrt(30)))
    assert sprite.shape == (side * 5, side * 4)
    # Row-major grid: image i at (i // side, i % side).
    for i in (0, 7, 29):
        r, c = divmod(i, side)
        np.testing.assert_array_equal(sprite[r * 5 : (r + 1) * 5, c * 4 : (c + 1) * 4], images[i])


def test_multi_column_metadata_has_header(tmp_path):
    emb, labels, images = _data(n=12, channels=3)
    correct = np.arange(12) % 3 == 0
    projector.write_projector_bundle(str(tmp_path), emb, labels, images=images, split="eval", correct_at_1=correct)
    get = _plugin_client(tmp_path)
    status, body = get("/metadata", run=".", name=projector.TENSOR_NAME)
    assert status == 200
    lines = body.decode().splitlines()
    assert lines[0].split("\t") == ["label", "split", "correct@1"]
    assert len(lines) == 13
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == [str(int(v)) for v in labels]
    assert all(r[1] == "eval" for r in rows)
    assert [r[2] for r in rows] == ["true" if c else "false" for c in correct]
    status, body = get("/sprite_image", run=".", name=projector.TENSOR_NAME)
    assert status == 200
    assert np.asarray(Image.open(io.BytesIO(body))).shape == (4 * 5, 4 * 4, 3)


def test_config_parses_with_proto_and_paths_are_relative(tmp_path):
    emb, labels, _ = _data(n=5)
    paths = projector.write_projector_bundle(str(tmp_path), emb, labels)
    assert "sprite" not in paths
    config = ProjectorConfig()
    with open(paths["config"]) as f:
        text_format.Parse(f.read(), config)
    (info,) = config.embeddings
    assert info.tensor_path == "vecs.tsv" and info.metadata_path == "meta.tsv"
    assert not info.sprite.image_path
    # The plugin's own TSV reader.
    tensor = projector_plugin._read_tensor_tsv_file(paths["vecs"])
    np.testing.assert_allclose(tensor, emb, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_cap_keeps_sprite_within_8192_pixels(tmp_path):
    n = 300
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(n, 3)).astype(np.float32)
    labels = np.arange(n)
    images = rng.integers(0, 256, size=(n, 1000, 1000), dtype=np.uint8)  # 8 per side -> 64 max
    paths = projector.write_projector_bundle(str(tmp_path), emb, labels, images=images, split="x")
    with Image.open(paths["sprite"]) as im:
        assert im.size[0] <= 8192 and im.size[1] <= 8192
        assert im.size == (8000, 8000)
    meta = open(paths["meta"]).read().splitlines()
    assert len(meta) == 1 + 64
    kept = [int(line.split("\t")[0]) for line in meta[1:]]
    assert kept == sorted(kept) and len(set(kept)) == 64
    vecs = projector_plugin._read_tensor_tsv_file(paths["vecs"])
    np.testing.assert_allclose(vecs, emb[kept], rtol=1e-4, atol=1e-6)


def test_float_images_and_label_cleaning(tmp_path):
    emb = np.zeros((3, 2), np.float32)
    labels = np.array(["a\tb", "c\nd", "e"], dtype=object)
    images = np.array([np.zeros((2, 2)), np.ones((2, 2)), np.full((2, 2), 0.5)], np.float32)
    paths = projector.write_projector_bundle(str(tmp_path), emb, labels, images=images)
    assert open(paths["meta"]).read().splitlines() == ["a b", "c d", "e"]
    sprite = np.asarray(Image.open(paths["sprite"]))
    assert sprite[0:2, 0:2].max() == 0 and sprite[0:2, 2:4].min() == 255
    assert sprite[2:4, 0:2].min() == 128


def test_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError):
        projector.write_projector_bundle(str(tmp_path), np.zeros((3, 2)), [1, 2])
    with pytest.raises(ValueError):
        projector.write_projector_bundle(str(tmp_path), np.zeros((3, 2)), [1, 2, 3], images=np.zeros((3, 2)))


def test_class_name_column_beside_the_label(tmp_path):
    emb, labels, _ = _data(n=4)
    names = np.array(["ant", "bee", "cat", "dog"], dtype=object)[labels]
    paths = projector.write_projector_bundle(str(tmp_path), emb, labels, split="eval", class_names=names)
    rows = [line.split("\t") for line in open(paths["meta"]).read().splitlines()]
    assert rows[0] == ["label", "class_name", "split"]
    assert rows[1:] == [[str(label), n, "eval"] for label, n in zip(labels, names)]
    with pytest.raises(ValueError, match="class_names and embeddings differ in length"):
        projector.write_projector_bundle(str(tmp_path), emb, labels, class_names=names[:2])


def test_vectors_are_written_as_printf_writes_six_decimals(tmp_path):
    rng = np.random.default_rng(3)
    # Values a quarter of the last digit away from a tie, so that rounding has one answer.
    values = (rng.integers(-9_499_999, 9_499_999, size=(300, 7)) + rng.choice([-0.25, 0.25], size=(300, 7))) / 1e6
    values[0, :4] = [0.0, -0.0, 9.4999994, -1e-9]
    values = values.astype(np.float32)
    expected = "".join("\t".join("%+.6f" % v for v in row.astype(np.float64)) + "\n" for row in values)
    assert projector.fixed_point_tsv(values).decode() == expected
    paths = projector.write_projector_bundle(str(tmp_path), values, np.zeros(300))
    with open(paths["vecs"]) as f:
        assert f.read() == expected


def test_vectors_of_larger_values_keep_six_significant_digits(tmp_path):
    values = np.array([[12.345678, -0.5], [0.25, 1e-3]], np.float32)
    with pytest.raises(ValueError, match="below 9.5"):
        projector.fixed_point_tsv(values)
    with pytest.raises(ValueError, match="below 9.5"):
        projector.fixed_point_tsv(np.array([[np.nan]]))
    paths = projector.write_projector_bundle(str(tmp_path), values, [0, 1])
    with open(paths["vecs"]) as f:
        assert f.read() == "12.3457\t-0.5\n0.25\t0.001\n"
