"""Gzipped TFRecord files written by a Beam pipeline (`WriteToGzipTFRecord`): Beam's file sink (its
temporary files, shards and final renames) with TensorFlow's own TFRecord writer filling each file,
gzipped at compression level GZIP_LEVEL.

Beam's `WriteToTFRecord` gzips in Python at zlib's default level (6): writing MNIST's 60,000 training
examples (50 MB of records) took it 1.0-1.2 s of SourceExampleGen's 3 s, TensorFlow's writer at level 1
0.4 s, for a file 11 % larger that reads back as fast (a 2-core Intel Xeon with AMX, 2026-12-08;
bench/README.md, "gzip level of the examples"). The files are TFX's format: TFRecords in one gzip
member, named `*.gz`, which TFX's and TensorFlow's readers take as gzipped.
"""

from __future__ import annotations

import apache_beam as beam
import tensorflow as tf
from apache_beam.io import filebasedsink

# zlib's fastest level: encoded images do not compress anyway, raw pixels 4.3x instead of 4.8x.
GZIP_LEVEL = 1


class _GzipTFRecordSink(filebasedsink.FileBasedSink):
    def __init__(self, file_path_prefix: str, file_name_suffix: str):
        super().__init__(file_path_prefix, coder=beam.coders.BytesCoder(), file_name_suffix=file_name_suffix)

    def open(self, temp_path):
        # In place of Beam's file object and its compression: TensorFlow's writer frames and gzips.
        options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=GZIP_LEVEL)
        return tf.io.TFRecordWriter(temp_path, options)

    def write_encoded_record(self, file_handle, value):
        file_handle.write(value)


class WriteToGzipTFRecord(beam.PTransform):
    """Writes a PCollection of serialized records to gzipped TFRecord files `<file_path_prefix>-SSSSS-of-
    NNNNN<file_name_suffix>`, as `beam.io.WriteToTFRecord(..., compression_type=GZIP)` names them."""

    def __init__(self, file_path_prefix: str, file_name_suffix: str = ".gz"):
        super().__init__()
        self._sink = _GzipTFRecordSink(file_path_prefix, file_name_suffix)

    def expand(self, pcoll):
        return pcoll | beam.io.Write(self._sink)
