"""manifest:<file> sources: CSV and JSON Lines, relative and absolute uris, split and id columns,
and one clear error naming the file and line for each problem."""

import json
import os

import pytest
import tensorflow as tf
from example_gen_helpers import features, generate, read_split, run_example_gen
from photo_collection import make_photo_collection

from triplet_tfx.components.config import DataConfig
from triplet_tfx.components.data import data_sources, example_gen, manifest

pytestmark = pytest.mark.slow


@pytest.fixture()
def photos(tmp_path):
    return make_photo_collection(str(tmp_path / "photos"), classes=("cat", "dog", "owl"), per_class=4)


def _write_csv(path, rows, header="uri,label,split,id"):
    path.write_text(header + "\n" + "".join(",".join(row) + "\n" for row in rows))
    return str(path)


def test_csv_manifest_with_relative_uris_splits_and_ids(tmp_path, photos):
    rows = [
        (os.path.relpath(p.path, tmp_path), p.class_name, "eval" if i % 4 == 3 else "train", f"item{i}")
        for i, p in enumerate(photos)
    ]
    path = _write_csv(tmp_path / "list.csv", rows)
    data = DataConfig(source=f"manifest:{path}", num_classes=3)
    data_sources.check_source(data)
    assert example_gen.split_patterns(data) == {"train": "train", "eval": "eval"}
    artifact = run_example_gen(data, str(tmp_path / "out"))
    for split in ("train", "eval"):
        found = {features(e)["id"].decode(): features(e) for e in read_split(artifact.uri, split)}
        expected = {f"item{i}": p for i, p in enumerate(photos) if rows[i][2] == split}
        assert sorted(found) == sorted(expected)
        for item_id, photo in expected.items():
            with open(photo.path, "rb") as f:
                assert found[item_id]["image"] == f.read()
            assert found[item_id]["label"] == ["cat", "dog", "owl"].index(photo.class_name)
            assert found[item_id]["class_name"] == photo.class_name.encode()


def test_jsonl_manifest_without_split_is_split_by_hash(tmp_path, photos):
    path = tmp_path / "list.jsonl"
    path.write_text("".join(json.dumps({"uri": p.path, "label": p.class_name}) + "\n" for p in photos) + "\n")
    data = DataConfig(source=f"manifest:{path}", num_classes=3, eval_percent=50)
    assert example_gen.split_patterns(data) == {}
    examples = [tf.train.Example.FromString(e) for e in generate(data, str(tmp_path))]
    assert len(examples) == len(photos)
    assert all("id" not in e.features.feature for e in examples)  # no id column: no id


def test_integer_labels_sort_numerically(tmp_path, photos):
    path = _write_csv(
        tmp_path / "list.csv", [(p.path, str([2, 10, 9][i % 3])) for i, p in enumerate(photos)], header="uri,label"
    )
    assert manifest.read(path).class_names == ["2", "9", "10"]


def test_max_examples_keeps_every_class(tmp_path, photos):
    path = _write_csv(tmp_path / "list.csv", [(p.path, p.class_name) for p in photos], header="uri,label")
    examples = generate(DataConfig(source=f"manifest:{path}", num_classes=3, max_examples=3), str(tmp_path))
    assert sorted(features(tf.train.Example.FromString(e))["label"] for e in examples) == [0, 1, 2]


def test_bad_image_names_the_manifest_line(tmp_path, photos):
    (tmp_path / "broken.jpg").write_bytes(b"")
    path = _write_csv(
        tmp_path / "list.csv", [(p.path, p.class_name) for p in photos] + [("broken.jpg", "cat")], header="uri,label"
    )
    with pytest.raises(Exception, match=rf"list.csv line 14: {tmp_path / 'broken.jpg'}: empty file \(0 bytes\)"):
        generate(DataConfig(source=f"manifest:{path}", num_classes=3), str(tmp_path))


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("list.csv", "uri,label\na.jpg,cat\nmissing.jpg,dog\n", r"list.csv line 3: .*missing.jpg: file not found"),
        (
            "list.csv",
            "uri,label,split\na.jpg,cat,train\na.jpg,dog,test\n",
            r"list.csv line 3: unknown split 'test' \(train or eval",
        ),
        ("list.csv", "uri,label\na.jpg,cat\na.jpg,\n", r"list.csv line 3: empty label \(a.jpg\)"),
        (
            "list.csv",
            "uri,label,id\na.jpg,cat,x1\na.jpg,dog,x1\n",
            r"list.csv line 3: duplicate id 'x1' \(also on line 2\)",
        ),
        ("list.csv", "path,label\na.jpg,cat\n", r"list.csv line 1: missing column uri \(the header has path, label"),
        (
            "list.jsonl",
            '{"uri": "a.jpg", "label": "cat"}\n{"uri": "a.jpg", "label": "dog"\n',
            r"list.jsonl line 2: bad JSON \(Expecting ',' delimiter",
        ),
        ("list.jsonl", '{"uri": "a.jpg", "label": "cat"}\n\n{"uri": "a.jpg"}\n', r"list.jsonl line 3: missing label"),
        ("list.jsonl", '["a.jpg", "cat"]\n', r"list.jsonl line 1: expected a JSON object"),
        (
            "list.csv",
            "uri,label,split\na.jpg,cat,train\na.jpg,dog,\n",
            r"list.csv line 3: no split, but line 2 has one",
        ),
        ("list.txt", "a.jpg cat\n", r"list.txt: a manifest is a .csv"),
    ],
)
def test_manifest_problem_names_file_and_line(tmp_path, name, content, message):
    (tmp_path / "a.jpg").write_bytes(b"not decoded by the pre-flight")
    (tmp_path / name).write_text(content)
    with pytest.raises(data_sources.DataSourceError, match=message):
        data_sources.check_source(DataConfig(source=f"manifest:{tmp_path / name}", num_classes=2))


def test_missing_manifest_and_class_count(tmp_path, photos):
    with pytest.raises(data_sources.DataSourceError, match=r"nowhere.csv: manifest not found \(--data manifest"):
        data_sources.check_source(DataConfig(source=f"manifest:{tmp_path / 'nowhere.csv'}"))
    path = _write_csv(tmp_path / "list.csv", [(p.path, p.class_name) for p in photos], header="uri,label")
    with pytest.raises(data_sources.DataSourceError, match=r"list.csv: 3 classes \(cat, dog, owl\), but --num-classes"):
        data_sources.check_source(DataConfig(source=f"manifest:{path}"))


def test_fingerprint_follows_the_files(tmp_path, photos):
    path = _write_csv(tmp_path / "list.csv", [(p.path, p.class_name) for p in photos], header="uri,label")
    before = manifest.fingerprint(path)
    os.utime(photos[0].path, ns=(1, 1))
    assert manifest.fingerprint(path) != before
