"""Runner file for TFX's own CLI (LocalDagRunner):

  tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
  tfx run create --engine local --pipeline_name triplet-mnist

Runs the default configuration (the main job); flags as for `triplet-tfx run` also work:
`python pipeline/local_runner.py --epochs 1`.
"""
import os
import sys

# Run as a script, this file's folder leads sys.path and its modules (config.py, pipeline.py...)
# would shadow top-level names: use the installed package only.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from triplet_tfx.pipeline import cli  # noqa: E402  (pins the Keras flavour first)

if __name__ == "__main__":
    sys.exit(cli.main(["run", *sys.argv[1:]]))
