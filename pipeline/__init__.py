"""The pipeline: configuration, create_pipeline, the local runner and the CLI."""

# Imported first so that every entry point pins the Keras flavour (see components/__init__.py).
import triplet_tfx.components  # noqa: F401
