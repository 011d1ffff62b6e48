"""Data stage: sources, ExampleGen, validation gate and the Transform preprocessing_fn."""
