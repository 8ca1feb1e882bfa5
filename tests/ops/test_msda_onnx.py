"""ONNX export of the MSDA module: the grid_sample formulation is recorded automatically, with
either torch exporter, and onnxruntime (CPU) reproduces the PyTorch output."""
import inspect

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from crossformer_mm.ops import MSDeformAttn

from test_msda import _module_inputs, _randomise  # noqa: E402


class _Wrapper(torch.nn.Module):
    def __init__(self, module, spatial_shapes, level_start_index):
        super().__init__()
        self.module = module
        self.spatial_shapes = spatial_shapes
        self.level_start_index = level_start_index

    def forward(self, query, value, reference_points, key_padding_mask):
        return self.module(query, value=value, reference_points=reference_points,
                           key_padding_mask=key_padding_mask,
                           spatial_shapes=self.spatial_shapes,
                           level_start_index=self.level_start_index)


@pytest.mark.parametrize('dynamo', [
    pytest.param(False, id='torchscript'),
    pytest.param(True, id='dynamo', marks=pytest.mark.needs_custom_op),  # torch.export of the op
])
@pytest.mark.parametrize('ref_dims', [2, 4])
def test_module_exports_to_onnx_and_matches_in_onnxruntime(tmp_path, dynamo, ref_dims):
    torch.manual_seed(0)
    module = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3,
                          dropout=0.0).eval()
    _randomise(module)
    inputs = _module_inputs(ref_dims=ref_dims)
    shapes = inputs['spatial_shapes'] if not dynamo else [tuple(s) for s in
                                                          inputs['spatial_shapes'].tolist()]
    wrapper = _Wrapper(module, shapes, inputs['level_start_index'])
    args = (inputs['query'], inputs['value'], inputs['reference_points'],
            inputs['key_padding_mask'])
    expected = wrapper(*args).detach().numpy()
    path = str(tmp_path / 'msda.onnx')
    # Recent torch defaults to the dynamo exporter; older torch has only the TorchScript one
    # and no ``dynamo`` argument.
    choice = ({'dynamo': dynamo} if 'dynamo' in inspect.signature(torch.onnx.export).parameters
              else {})
    torch.onnx.export(wrapper, args, path, **choice, opset_version=17,
                      input_names=['query', 'value', 'reference_points', 'key_padding_mask'])
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert 'GridSample' in ops, sorted(ops)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    feeds = {name: t.numpy() for name, t in zip(
        ('query', 'value', 'reference_points', 'key_padding_mask'), args)}
    out = session.run(None, feeds)[0]
    assert np.abs(out - expected).max() <= 1e-5
