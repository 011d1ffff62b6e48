"""TFX's Transform executor, plus the `payload_format` property on its transformed examples.

TFX 1.16's ExampleGen records the payload format (FORMAT_TF_EXAMPLE) on its Examples
artifact; Transform does not on the transformed examples it writes, so the Trainer reading them
warns "Examples artifact does not have payload_format custom property" once per split.
"""
from tfx.components.transform import executor as tfx_transform_executor
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs


class Executor(tfx_transform_executor.Executor):

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        super().Do(input_dict, output_dict, exec_properties)
        for examples in output_dict.get(standard_component_specs.TRANSFORMED_EXAMPLES_KEY, []):
            examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
