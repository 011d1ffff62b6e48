"""`triplet-tfx embed` / `search`: which files of a folder are read (regular files only: a FIFO
cannot hang the client; symbolic links followed once, loops left out, broken links named; hidden and
AppleDouble files ignored), --k checked against the index size as soon as the model is read, and a
terminal as quiet as `triplet-tfx run`'s."""

import contextlib
import os
import signal
import subprocess
import sys

import pytest
from contract_model import EMBEDDING_DIM, random_digits, write_contract_model, write_pngs
from tfserving_standin import ModelRegistry, RestStandIn

from triplet_tfx.components.serving import index
from triplet_tfx.components.serving.client import image_files
from triplet_tfx.pipeline import cli

NOISE = ("cuda", "cudnn", "tensorrt", "onednn", "futurewarning", "local rendezvous")


@contextlib.contextmanager
def deadline(seconds: int):
    """Fails the test instead of hanging for ever (e.g. on opening a FIFO for reading)."""

    def expired(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(capsys, *argv):
    with deadline(60):
        code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def contract_dir(tmp_path_factory):
    return write_contract_model(str(tmp_path_factory.mktemp("contract")), version=1, num_references=50)


@pytest.fixture(scope="module")
def indexed_model(tmp_path_factory, contract_dir):
    """A served model as the ServingModelBuilder writes it (`search` over a `reference_ids` index of
    500 references), around the contract model's embedding signatures."""
    import tensorflow as tf

    pixels, labels = random_digits(500, seed=11)
    embeddings = (
        tf.saved_model.load(contract_dir).signatures["embed_pixels"](pixels=tf.constant(pixels))["embedding"].numpy()
    )
    assert embeddings.shape == (500, EMBEDDING_DIM)
    base = tmp_path_factory.mktemp("indexed") / "indexed_model"
    index.build_serving_model(contract_dir, index.reference_ids("train", 500), labels, embeddings, str(base / "1"))
    return str(base)


@pytest.fixture()
def folder(tmp_path):
    folder = tmp_path / "queries"
    write_pngs(str(folder), 2)
    return folder


def test_a_fifo_in_a_folder_is_refused_by_name_without_hanging(capsys, folder, contract_dir):
    os.mkfifo(folder / "x.png")
    code, out, err = run(capsys, "embed", str(folder), "--model", contract_dir)
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [f"triplet-tfx: error: {folder / 'x.png'}: not a regular file (FIFO)"]
    code, out, err = run(capsys, "embed", str(folder / "x.png"), "--model", contract_dir)  # named as a file too
    assert code == 2 and f"{folder / 'x.png'}: not a regular file (FIFO)" in err


def test_links_are_followed_once_loops_left_out_hidden_files_ignored(capsys, tmp_path, folder, contract_dir):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere_png,) = write_pngs(str(elsewhere), 1, seed=5)
    os.symlink(elsewhere, folder / "linked")  # a folder link: followed
    os.symlink(elsewhere_png, folder / "file_link.png")  # a file link: followed
    os.symlink(".", folder / "loop")  # a loop: left out, with a warning
    (folder / ".hidden.png").write_bytes(b"not an image")
    (folder / "._digit0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    os.makedirs(folder / "__MACOSX")
    (folder / "__MACOSX" / "._digit1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    expected = sorted(
        [
            str(folder / "digit0.png"),
            str(folder / "digit1.png"),
            str(folder / "file_link.png"),
            str(folder / "linked" / "digit0.png"),
        ]
    )
    warnings = []
    assert image_files([str(folder)], warn=warnings.append) == expected
    assert warnings == [f"{folder / 'loop'}: symbolic link loop (to .), left out"]
    code, out, err = run(capsys, "embed", str(folder), "--model", contract_dir, "--format", "tsv")
    assert code == 0
    assert [line.split("\t")[0] for line in out.splitlines()[1:]] == expected
    assert err.strip().splitlines() == [f"triplet-tfx: warning: {folder / 'loop'}: symbolic link loop (to .), left out"]


def test_a_broken_link_is_named_in_one_line(capsys, folder, contract_dir):
    os.symlink(folder / "gone.png", folder / "broken.png")
    code, out, err = run(capsys, "search", str(folder), "--model", contract_dir)
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [
        f"triplet-tfx: error: {folder / 'broken.png'}: broken symbolic link (to {folder / 'gone.png'})"
    ]


def test_k_larger_than_the_index_fails_in_one_line(capsys, folder, indexed_model, contract_dir):
    code, out, err = run(capsys, "search", str(folder), "--model", indexed_model, "--k", "501")
    assert (code, out) == (2, "")
    assert err.splitlines() == ["triplet-tfx: error: --k 501: the index holds 500 references"]
    code, out, _ = run(capsys, "search", str(folder), "--model", indexed_model, "--k", "500", "--format", "tsv")
    assert code == 0 and len(out.splitlines()) == 1 + 2 * 500
    # A model whose index size is not in its variables, and a server: the served assertion, as one line.
    code, out, err = run(capsys, "search", str(folder), "--model", contract_dir, "--k", "51")
    assert (code, out) == (2, "")
    assert err.splitlines() == ["triplet-tfx: error: --k 51: the index holds 50 references"]
    registry = ModelRegistry({"triplet_mnist": indexed_model})
    with RestStandIn(registry) as rest:
        code, out, err = run(capsys, "search", str(folder), "--server", rest.url, "--k", "501")
    assert (code, out) == (2, "")
    assert err.splitlines() == ["triplet-tfx: error: --k 501: the index holds 500 references"]


def test_the_client_checks_k_before_reading_images(indexed_model):
    from triplet_tfx.components.serving.client import Client, IndexSizeError

    with Client(model=indexed_model) as client:
        assert client.index_size() == 500
        with pytest.raises(IndexSizeError, match="^k 501: the index holds 500 references$"):
            client.search([b"not read: k is checked first"], k=501)


def _triplet_tfx(*argv):
    command = os.path.join(os.path.dirname(sys.executable), "triplet-tfx")
    if not os.path.exists(command):
        command = None
    argv = [command, *argv] if command else [sys.executable, "-m", "triplet_tfx.pipeline.cli", *argv]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.slow  # a `triplet-tfx search` process that loads TensorFlow
def test_search_keeps_the_terminal_quiet(folder, indexed_model, contract_dir):
    done = _triplet_tfx("search", str(folder), "--model", indexed_model, "--k", "3")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2
    noisy = [line for line in done.stderr.splitlines() if any(word in line.lower() for word in NOISE)]
    assert noisy == [] and done.stderr == ""
    # A failure inside the served graph (the contract model's assertion on k): its one line, without
    # TensorFlow's own lines ("Local rendezvous is aborting...").
    done = _triplet_tfx("search", str(folder), "--model", contract_dir, "--k", "51")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["triplet-tfx: error: --k 51: the index holds 50 references"]


@pytest.mark.slow  # a `triplet-tfx search` process that loads TensorFlow
def test_verbose_shows_tensorflows_lines(folder, indexed_model):
    done = _triplet_tfx("embed", str(folder), "--model", indexed_model, "--verbose")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2
