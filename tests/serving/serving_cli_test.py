"""`triplet-tfx embed` / `search`: JSON lines, TSV and Projector outputs, in-process and through the REST
and gRPC stand-ins (contract tests, see tfserving_standin.py), and errors that name the file or flag."""

import json
import os
import re

import numpy as np
import portpicker
import pytest
from contract_model import CLASS_NAMES, reference_embeddings, reference_search, write_contract_model, write_pngs
from tfserving_standin import GrpcStandIn, ModelRegistry, RestStandIn

from triplet_tfx.pipeline import cli


@pytest.fixture(scope="module")
def output_root(tmp_path_factory):
    """An output root as `triplet-tfx run` leaves it: <root>/serving/triplet_mnist/<version>/."""
    root = tmp_path_factory.mktemp("runs")
    write_contract_model(str(root / "serving" / "triplet_mnist"), version=3)
    return root


@pytest.fixture(scope="module")
def version_dir(output_root):
    return str(output_root / "serving" / "triplet_mnist" / "3")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("queries")
    write_pngs(str(folder / "b"), 2, seed=3)
    write_pngs(str(folder / "a"), 2, seed=4)
    return folder


@pytest.fixture(scope="module")
def files(folder):
    return [str(folder / sub / f"digit{i}.png") for sub in ("a", "b") for i in range(2)]  # sorted


@pytest.fixture(scope="module")
def servers(output_root):
    registry = ModelRegistry({"triplet_mnist": str(output_root / "serving" / "triplet_mnist")})
    with RestStandIn(registry) as rest, GrpcStandIn(registry) as grpc_server:
        yield {"rest": rest.url, "grpc": grpc_server.url}


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_jsonl_default_model_and_tsv_over_rest(
    capsys, monkeypatch, output_root, version_dir, folder, files, servers
):
    expected = reference_embeddings(version_dir, files)
    monkeypatch.chdir(output_root.parent)
    code, out, _ = run(capsys, "embed", str(folder), "--output-root", output_root.name)  # default model
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["input"] for r in rows] == files
    np.testing.assert_allclose([r["embedding"] for r in rows], expected, atol=1e-6)
    for kind in ("rest", "grpc"):
        code, out, _ = run(capsys, "embed", *files, "--server", servers[kind], "--format", "tsv")
        assert code == 0
        header, *lines = out.splitlines()
        assert header.split("\t") == ["input"] + [f"e{i}" for i in range(8)]
        assert [line.split("\t")[0] for line in lines] == files
        np.testing.assert_allclose([[float(v) for v in line.split("\t")[1:]] for line in lines], expected, atol=1e-6)


def test_search_jsonl_and_tsv(capsys, version_dir, files, servers):
    ids, labels, distances = reference_search(version_dir, reference_embeddings(version_dir, files), k=3)
    code, out, _ = run(capsys, "search", *files, "--model", version_dir, "--k", "3")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["input"] for r in rows] == files
    assert [[n["id"] for n in r["neighbours"]] for r in rows] == ids
    assert [[n["label"] for n in r["neighbours"]] for r in rows] == labels.tolist()
    assert [[n["class_name"] for n in r["neighbours"]] for r in rows] == [
        [CLASS_NAMES[v] for v in row] for row in labels
    ]
    np.testing.assert_allclose([[n["distance"] for n in r["neighbours"]] for r in rows], distances, atol=1e-5)
    code, out, _ = run(capsys, "search", *files, "--server", servers["grpc"], "--k", "3", "--format", "tsv")
    assert code == 0
    header, *lines = out.splitlines()
    assert header == "input\trank\tid\tlabel\tdistance\tclass_name"
    cells = [line.split("\t") for line in lines]
    assert [(c[0], int(c[1]), c[2], int(c[3])) for c in cells] == [
        (f, rank + 1, ids[i][rank], int(labels[i][rank])) for i, f in enumerate(files) for rank in range(3)
    ]
    assert [c[5] for c in cells] == [CLASS_NAMES[labels[i][rank]] for i in range(len(files)) for rank in range(3)]


def test_projector_files(capsys, tmp_path, version_dir, files, servers):
    out_dir = tmp_path / "projector"
    code, out, _ = run(capsys, "search", *files, "--server", servers["rest"], "--k", "1", "--projector", str(out_dir))
    assert code == 0 and len(out.splitlines()) == 4
    vecs = np.loadtxt(out_dir / "vecs.tsv", delimiter="\t")
    np.testing.assert_allclose(vecs, reference_embeddings(version_dir, files), atol=1e-4)
    assert (out_dir / "meta.tsv").read_text().splitlines() == files
    assert 'tensor_path: "vecs.tsv"' in (out_dir / "projector_config.pbtxt").read_text()
    code, _, err = run(capsys, "embed", *files, "--model", version_dir, "--projector", str(out_dir))
    assert code == 2 and f"--projector {out_dir}: folder is not empty" in err


def test_errors_name_the_file_or_flag(capsys, tmp_path, version_dir, files):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    cases = [
        (
            ["embed", str(tmp_path / "missing.png"), "--model", version_dir],
            2,
            f"{tmp_path / 'missing.png'}: no such file",
        ),
        (["embed", files[0], str(text), "--model", version_dir], 2, f"{text}: not a PNG, JPEG, GIF or BMP image"),
        (["embed", str(tmp_path / "empty_dir_missing")], 2, "no such file or folder"),
        (["search", files[0], "--model", version_dir, "--k", "0"], 2, "--k: must be at least 1, got 0"),
        (["search", files[0], "--model", version_dir, "--nprobe", "0"], 2, "--nprobe: must be at least 1, got 0"),
        (
            ["search", files[0], "--model", version_dir, "--nprobe", "4"],
            2,
            f"^triplet-tfx: error: --nprobe 4: SavedModel {version_dir}: the served index is exact and takes no "
            "nprobe \\(no search_with_nprobe signature: only ivf indexes have lists to probe\\)\n$",
        ),
        (
            ["search", files[0], "--model", version_dir, "--k", "51"],
            2,
            "^triplet-tfx: error: --k 51: the index holds 50 references\n$",
        ),
        (["embed", files[0], "--server", "localhost:8501"], 2, "--server localhost:8501: expected http://HOST:8501"),
        (
            ["embed", files[0], "--model", os.path.dirname(version_dir), "--model-version", "9"],
            2,
            "--model-version 9: model .* has no version 9 \\(versions: 3\\)",
        ),
        (["embed", files[0], "--model", str(tmp_path)], 2, f"--model: no SavedModel at {tmp_path}"),
        (["embed", files[0], "--output-root", str(tmp_path)], 2, "run `triplet-tfx run` first"),
        (
            ["embed", files[0], "--serving-dir", str(tmp_path / "pushed")],
            2,
            f"no SavedModel at {tmp_path / 'pushed' / 'triplet_mnist'}",
        ),
    ]
    for argv, expected_code, message in cases:
        code, out, err = run(capsys, *argv)
        assert (code, out) == (expected_code, ""), argv
        assert re.search(message, err), (argv, err)


def test_server_errors_name_the_server_and_model(capsys, files, servers):
    down = f"http://127.0.0.1:{portpicker.pick_unused_port()}"
    code, _, err = run(capsys, "embed", files[0], "--server", down, "--retries", "0")
    assert code == 1 and f"TF Serving REST at {down}, model 'triplet_mnist' is unavailable after 1 attempt:" in err
    code, _, err = run(capsys, "embed", files[0], "--server", servers["grpc"], "--model-name", "other")
    assert code == 2 and f"--model-name other: TF Serving gRPC at {servers['grpc']} has no model named 'other'" in err
    code, _, err = run(capsys, "search", files[0], "--server", servers["rest"], "--model-version", "1")
    assert code == 2 and "--model-version 1: " in err and "(loaded versions: 3)" in err


def test_nprobe_on_an_exact_index_is_refused_by_its_signatures(capsys, files, servers):
    """The contract model has no search_with_nprobe: the servers' model metadata says so (the ivf
    index itself: nprobe_client_test.py)."""
    for kind, name in (("rest", "REST"), ("grpc", "gRPC")):
        code, out, err = run(capsys, "search", files[0], "--server", servers[kind], "--nprobe", "2")
        assert (code, out) == (2, "")
        assert err == (
            f"triplet-tfx: error: --nprobe 2: TF Serving {name} at {servers[kind]}, model 'triplet_mnist': "
            "the served index is exact and takes no nprobe (no search_with_nprobe signature: only ivf indexes "
            "have lists to probe)\n"
        )


def test_search_help_explains_nprobe(capsys):
    with pytest.raises(SystemExit):
        cli.main(["search", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "--nprobe N lists of an ivf index searched per query (default: the index's own, its --index-nprobe); more "
        "lists: better recall, slower. Only for ivf indexes: an exact index refuses it"
    ) in help_text
