"""triplet-tfx's packaging: the metadata, dependencies and console script are in pyproject.toml; this file
keeps what it cannot say.

The three source folders install under one import name, ``triplet_tfx``, so that
nothing shadows other distributions (``kubeflow`` is a namespace of Kubeflow's own SDKs):

    pipeline/   -> triplet_tfx.pipeline    (create_pipeline, runners, CLI)
    components/ -> triplet_tfx.components  (by stage: data/, training/, evaluation/, serving/;
                                            the configuration and the artifact contract)
    kubeflow/   -> triplet_tfx.kubeflow    (the Kubeflow Pipelines v2 runner)
"""

import setuptools

PACKAGE_DIRS = {
    "triplet_tfx.pipeline": "pipeline",
    "triplet_tfx.components": "components",
    "triplet_tfx.kubeflow": "kubeflow",
}
# Sub-packages (components/data, components/training...) live in their parents' folders; folders
# of data files only (the report's templates) are packages too, as setuptools expects of them.
PACKAGES = [
    f"{name}.{sub}" if sub else name
    for name, folder in PACKAGE_DIRS.items()
    for sub in [""] + setuptools.find_namespace_packages(folder)
]

setuptools.setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIRS,
    # Non-Python files that the code loads: the evaluation report's Jinja2 templates.
    package_data={"triplet_tfx.components.evaluation.templates": ["*.j2"]},
)
