"""components.tfrecords: Beam's file sink writing gzipped TFRecords through TensorFlow's writer."""

import gzip
import os
import zlib

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from triplet_tfx.components.config import DEFAULT_BEAM_ARGS
from triplet_tfx.components.tfrecords import WriteToGzipTFRecord

pytestmark = pytest.mark.slow  # runs a Beam pipeline


def test_records_come_back_in_gzip_files_named_as_beams_tfrecord_sink_names_them(tmp_path):
    records = [b"record %d " % i * (i % 7 + 1) for i in range(500)] + [b""]
    with beam.Pipeline(options=PipelineOptions(list(DEFAULT_BEAM_ARGS))) as pipeline:
        _ = pipeline | beam.Create(records) | WriteToGzipTFRecord(str(tmp_path / "out" / "data_tfrecord"))

    files = sorted(os.listdir(tmp_path / "out"))
    assert files == ["data_tfrecord-00000-of-00001.gz"]  # no temporary files left
    path = str(tmp_path / "out" / files[0])
    read = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    assert sorted(read) == sorted(records)
    with open(path, "rb") as f:
        header = f.read(10)
    # A gzip member (RFC 1952: magic 1f 8b, deflate) whose extra flags say "fastest algorithm" (4):
    # zlib writes them for compression level 1, 0 for its default level 6.
    assert header[:3] == b"\x1f\x8b\x08" and header[8] == 4
    with open(path, "rb") as f:
        member = zlib.decompressobj(31)  # one gzip member, nothing after it
        content = member.decompress(f.read())
    assert member.eof and not member.unused_data
    assert len(content) == sum(len(r) + 16 for r in records)  # TFRecord framing: 16 bytes per record


def test_an_empty_collection_gives_one_empty_gzip_file(tmp_path):
    with beam.Pipeline(options=PipelineOptions(list(DEFAULT_BEAM_ARGS))) as pipeline:
        _ = pipeline | beam.Create([], reshuffle=False) | WriteToGzipTFRecord(str(tmp_path / "part"))

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["part-00000-of-00001.gz"]
    path = str(tmp_path / files[0])
    assert list(tf.data.TFRecordDataset(path, compression_type="GZIP")) == []
    with gzip.open(path) as f:
        assert f.read() == b""
