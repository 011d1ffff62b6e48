"""The Vertex AI Vector Search export: one JSON object per line that reads back to the same float32
embedding, the class as a restrict, at most 5,000 files, and the duplicate-id message."""

import json

import numpy as np

from triplet_tfx.components.serving import vector_search


def test_a_record_is_one_json_line_that_reads_back_exactly():
    embedding = np.random.default_rng(0).normal(size=256).astype(np.float32)
    embedding[:3] = [1e-8, -0.0, 3.4e38]
    line = vector_search.record('cats/a "1".jpg', embedding, "cats")
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["id"] == 'cats/a "1".jpg'
    assert parsed["restricts"] == [{"namespace": "class", "allow": ["cats"]}]
    np.testing.assert_array_equal(np.array(parsed["embedding"], np.float32), embedding)


def test_file_count_keeps_files_near_64_mb_and_at_most_5000():
    assert vector_search.file_count(0, 256) == 1
    assert vector_search.file_count(10_000, 256) == 1
    assert vector_search.file_count(1_000_000, 256) == 63  # 4,196 bytes a line: 4.2 GB in 64 MiB files
    assert vector_search.file_count(10**10, 256) == vector_search.MAX_FILES


def test_duplicates_message_names_the_ids():
    message = vector_search.duplicates_message([("b", 2), ("a", 3)])
    assert (
        message == "catalog: 2 id(s) appear more than once: 'a' (3 times), 'b' (2 times); every item needs its own id"
    )
    assert vector_search.duplicates_message([]) == ""
