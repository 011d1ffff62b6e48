"""images:<dir> sources of photos as users have them: any size, PNG/JPEG, grey/CMYK/RGBA/EXIF,
written as the encoded files, the train/eval sub-folder layout, stratified --max-examples, class
checks, the storage ratio, and FIFOs, symbolic links and hidden files."""

import os
import signal

import pytest
from example_gen_helpers import features, generate, read_split, run_example_gen
from photo_collection import CLASSES, make_photo_collection

from triplet_tfx.components import contract
from triplet_tfx.components.config import DataConfig
from triplet_tfx.components.data import data_sources, image_folder
from triplet_tfx.pipeline import pipeline

pytestmark = pytest.mark.slow

CLASS_IDS = {name: i for i, name in enumerate(contract.class_order(CLASSES))}  # one, three, two, zero


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("photos"))
    return root, make_photo_collection(root, per_class=10)


@pytest.fixture(scope="module")
def written(photos, tmp_path_factory):
    root, _ = photos
    output = str(tmp_path_factory.mktemp("examples"))
    artifact = run_example_gen(DataConfig(source=f"images:{root}", num_classes=len(CLASSES)), output)
    return artifact, {split: read_split(output, split) for split in ("train", "eval")}


def test_photos_are_written_as_read_with_their_class_size_and_format(photos, written):
    root, collection = photos
    artifact, splits = written
    assert all(len(splits[split]) > 0 for split in splits)
    by_id = {features(e)["id"].decode(): features(e) for split in splits.values() for e in split}
    assert sorted(by_id) == sorted(os.path.relpath(p.path, root) for p in collection)
    channels = {"grey": 1, "cmyk": 3, "rgba": 4, "exif6": 3, "rgb": 3}  # as TensorFlow decodes them
    for photo in collection:
        values = by_id[os.path.relpath(photo.path, root)]
        with open(photo.path, "rb") as f:
            assert values["image"] == f.read()  # the file's bytes, not decoded or re-encoded
        assert values["label"] == CLASS_IDS[photo.class_name]
        assert values["class_name"] == photo.class_name.encode()
        assert (values["image_width"], values["image_height"]) == (photo.width, photo.height)  # as stored
        assert values["image_channels"] == channels[photo.kind]
        assert values["image_format"] == photo.format.encode()
    assert sorted(splits["train"][0].features.feature) == sorted(
        ["image", "label", "class_name", "image_width", "image_height", "image_channels", "image_format", "id"]
    )
    assert artifact.get_int_custom_property(contract.SKIPPED_IMAGES_PROPERTY) == 0
    assert not os.path.exists(os.path.join(artifact.uri, contract.SKIPPED_IMAGES_FILE))


def test_storage_is_within_1_2_times_the_image_files(photos, written):
    _, collection = photos
    artifact, _ = written
    stored = sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(artifact.uri)
        for name in names
        if os.path.basename(folder).startswith("Split-")
    )
    source = sum(os.path.getsize(p.path) for p in collection)
    assert stored <= 1.2 * source, (stored, source)


def test_train_and_eval_folders_are_the_splits(tmp_path):
    collection = make_photo_collection(str(tmp_path / "photos"), per_class=4, layout="split", eval_per_class=2)
    data = DataConfig(source=f"images:{tmp_path / 'photos'}", num_classes=4)
    data_sources.check_source(data)
    artifact = run_example_gen(data, str(tmp_path / "out"))
    for split in ("train", "eval"):
        ids = sorted(features(e)["id"].decode() for e in read_split(artifact.uri, split))
        assert ids == sorted(os.path.relpath(p.path, tmp_path / "photos") for p in collection if p.split == split)


def test_train_and_eval_folders_beside_class_folders_are_refused(tmp_path):
    make_photo_collection(str(tmp_path / "photos"), per_class=2, layout="split", eval_per_class=1)
    (tmp_path / "photos" / "cats").mkdir()
    with pytest.raises(data_sources.DataSourceError, match=r"photos: has train/ and eval/ and other folders \(cats\)"):
        image_folder.scan(str(tmp_path / "photos"))


def test_max_examples_takes_the_classes_in_turn(photos, tmp_path):
    root, _ = photos
    examples = generate(DataConfig(source=f"images:{root}", num_classes=4, max_examples=6), str(tmp_path))
    import tensorflow as tf

    names = sorted(
        tf.train.Example.FromString(e).features.feature["class_name"].bytes_list.value[0].decode() for e in examples
    )
    # Round robin in class-id order (one, three, two, zero), each class's files in sorted order.
    assert names == sorted(["one", "three", "two", "zero", "one", "three"])


def test_a_split_of_one_class_is_refused(tmp_path):
    make_photo_collection(
        str(tmp_path / "photos"), classes=("cat", "dog"), per_class=3, layout="split", eval_per_class=1
    )
    os.rename(tmp_path / "photos" / "eval" / "dog", tmp_path / "dog_eval_moved")
    with pytest.raises(Exception, match=r"split 'eval' holds examples of 1 class only \(class 0\)"):
        run_example_gen(DataConfig(source=f"images:{tmp_path / 'photos'}", num_classes=2), str(tmp_path / "out"))


def test_fewer_classes_than_num_classes_is_refused(tmp_path):
    make_photo_collection(str(tmp_path / "photos"), per_class=4, layout="split", eval_per_class=2)
    data = DataConfig(source=f"images:{tmp_path / 'photos'}", num_classes=4, max_examples=3)
    with pytest.raises(Exception, match=r"the examples hold 3 of --num-classes 4 classes \(no example of class 3\)"):
        run_example_gen(data, str(tmp_path / "out"))


def test_class_folder_count_must_match_num_classes(photos):
    root, _ = photos
    with pytest.raises(
        data_sources.DataSourceError,
        match=r"4 class folders \(one, three, two, zero\), but "
        r"--num-classes is 10",
    ):
        data_sources.check_source(DataConfig(source=f"images:{root}"))


def _two_classes(root):
    return make_photo_collection(str(root), classes=("a", "b"), per_class=6)


def test_fifo_named_like_an_image_is_refused_not_read(tmp_path):
    _two_classes(tmp_path / "photos")
    os.mkfifo(tmp_path / "photos" / "a" / "x.png")
    data = DataConfig(source=f"images:{tmp_path / 'photos'}", num_classes=2)
    data_sources.check_source(data)  # the layout is fine: nothing is opened
    signal.alarm(60)  # a read of the FIFO would block forever
    try:
        with pytest.raises(Exception, match=r"a/x.png: not a regular file \(FIFO\)"):
            generate(data, str(tmp_path))
        skipped = run_example_gen(
            DataConfig(source=data.source, num_classes=2, on_bad_image="skip", eval_percent=50), str(tmp_path / "out")
        )
    finally:
        signal.alarm(0)
    assert skipped.get_int_custom_property(contract.SKIPPED_IMAGES_PROPERTY) == 1


def test_symbolic_links_are_followed_loops_left_out(tmp_path):
    _two_classes(tmp_path / "photos")
    outside = make_photo_collection(str(tmp_path / "elsewhere"), classes=("c",), per_class=1)[0].path
    os.symlink(outside, tmp_path / "photos" / "a" / "linked.jpg")
    os.symlink(tmp_path / "photos" / "a" / "loop2.png", tmp_path / "photos" / "a" / "loop1.png")
    os.symlink(tmp_path / "photos" / "a" / "loop1.png", tmp_path / "photos" / "a" / "loop2.png")
    os.symlink(tmp_path / "photos", tmp_path / "photos" / "b" / "up")  # a folder loop: not descended
    os.symlink(tmp_path / "photos" / "b", tmp_path / "photos" / "linked_class")  # a class folder link
    layout = image_folder.scan(str(tmp_path / "photos"))
    names = sorted(os.path.basename(item.uri) for item in layout.splits["all"])
    assert "linked.jpg" in names and "loop1.png" not in names and "loop2.png" not in names
    assert layout.class_names == ["a", "b", "linked_class"]
    pipeline.data_fingerprint(str(tmp_path / "photos"))  # loops left out there too
    data = DataConfig(source=f"images:{tmp_path / 'photos'}", num_classes=3)
    with open(outside, "rb") as f:
        assert f.read() in [
            features(__import__("tensorflow").train.Example.FromString(e))["image"]
            for e in generate(data, str(tmp_path))
        ]


def test_broken_symbolic_link_is_one_clear_error(tmp_path):
    _two_classes(tmp_path / "photos")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "photos" / "b" / "broken.jpg")
    message = rf"{tmp_path / 'photos' / 'b' / 'broken.jpg'}: broken symbolic link \(to {tmp_path / 'gone.jpg'}\)"
    with pytest.raises(data_sources.DataSourceError, match=message):
        data_sources.check_source(DataConfig(source=f"images:{tmp_path / 'photos'}", num_classes=2))
    with pytest.raises(data_sources.DataSourceError, match=message):
        pipeline.data_fingerprint(str(tmp_path / "photos"))


def test_hidden_and_apple_double_files_are_left_out(tmp_path):
    collection = _two_classes(tmp_path / "photos")
    (tmp_path / "photos" / "a" / "._a_0.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (tmp_path / "photos" / "a" / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / "photos" / ".thumbnails").mkdir()
    (tmp_path / "photos" / "__MACOSX" / "a").mkdir(parents=True)
    (tmp_path / "photos" / "a" / "notes.txt").write_text("not an image file name")
    layout = image_folder.scan(str(tmp_path / "photos"))
    assert layout.class_names == ["a", "b"]
    assert [item.uri for item in layout.splits["all"]] == [photo.path for photo in collection]
