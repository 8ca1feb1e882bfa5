"""Runs the Triton MSDA kernels through Triton's interpreter on CPU tensors and compares them with
the reference (forward, backward with atomics, and the deterministic backward: equal to the
reference and bit-identical over two runs). Executed in a subprocess by
``test_msda_triton.py``, since ``TRITON_INTERPRET`` must be set before triton is imported;
exits non-zero on a mismatch."""
import os
import sys

os.environ['TRITON_INTERPRET'] = '1'

import torch  # noqa: E402

from crossformer_mm.ops.msda import ms_deform_attn_pytorch  # noqa: E402
from crossformer_mm.ops.msda_triton import (ms_deform_attn_backward_triton,  # noqa: E402
                                            ms_deform_attn_forward_triton)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_msda import make_inputs  # noqa: E402

CASES = [
    # (name, value dtype, tolerance, make_inputs kwargs)
    ('float64', torch.float64, 1e-10, dict(shapes=((6, 4), (3, 2), (1, 1)), head_dims=5)),
    ('float64-outside-one-level', torch.float64, 1e-10, dict(shapes=((5, 7), ), spread=0.6)),
    ('float64-five-levels-wide', torch.float64, 1e-10,
     dict(shapes=((4, 3), (3, 3), (2, 2), (1, 2), (1, 1)), head_dims=71, num_heads=1, bs=1,
          num_queries=3)),
    ('float32', torch.float32, 1e-4, dict(head_dims=32, num_queries=20)),
    ('float16', torch.float16, 5e-3, dict(head_dims=16)),
    ('bfloat16', torch.bfloat16, 3e-2, dict(head_dims=16)),
    # Many queries over a 3x3 map: every value row sums many contributions.
    ('float32-crowded', torch.float32, 1e-4,
     dict(shapes=((3, 3), (1, 2)), head_dims=20, num_queries=60, num_points=4)),
]


def main() -> int:
    failures = []
    for name, dtype, tol, kwargs in CASES:
        opmath = torch.float64 if dtype == torch.float64 else torch.float32
        value, shapes, starts, loc, attn = make_inputs(dtype=opmath, **kwargs)
        value = value.to(dtype)
        out = ms_deform_attn_forward_triton(value, shapes, starts, loc, attn)
        leaves = [value.double().requires_grad_(), loc.double().requires_grad_(),
                  attn.double().requires_grad_()]
        expected = ms_deform_attn_pytorch(leaves[0], shapes, starts, leaves[1], leaves[2])
        grad_out = torch.randn(expected.shape, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(1))
        grads = ms_deform_attn_backward_triton(value, shapes, starts, loc, attn,
                                               grad_out.to(dtype).contiguous())
        det = [ms_deform_attn_backward_triton(value, shapes, starts, loc, attn,
                                              grad_out.to(dtype).contiguous(), deterministic=True)
               for _ in range(2)]
        ref_grads = torch.autograd.grad(expected, leaves, grad_out)
        names = ('grad_value', 'grad_sampling_locations', 'grad_attention_weights')
        checks = [('output', out, expected)] + list(zip(names, grads, ref_grads)) + list(
            zip([f'{n} (deterministic)' for n in names], det[0], ref_grads))
        for what, a, b in zip(names, det[0], det[1]):
            same = torch.equal(a, b) and a.dtype == dtype if what == 'grad_value' else \
                torch.equal(a, b)
            print(f'{name:28s} {what:24s} deterministic: two runs bit-identical: {same}')
            if not same:
                failures.append((name, what + ' not bit-identical'))
        for what, a, b in checks:
            err = (a.double() - b).abs().max().item()
            bound = tol * max(1.0, b.abs().max().item())
            status = 'ok' if err <= bound and a.shape == b.shape else 'FAIL'
            print(f'{name:28s} {what:38s} max|diff| {err:.3e} (bound {bound:.1e}) {status}')
            if status != 'ok':
                failures.append((name, what))
        if out.dtype != dtype or grads[0].dtype != dtype:
            failures.append((name, 'dtype'))
    # Zero queries.
    value, shapes, starts, loc, attn = make_inputs(num_queries=0, dtype=torch.float32)
    if ms_deform_attn_forward_triton(value, shapes, starts, loc, attn).shape != (2, 0, 16):
        failures.append(('zero-queries', 'shape'))
    grads = ms_deform_attn_backward_triton(value, shapes, starts, loc, attn,
                                           torch.zeros(2, 0, 16), deterministic=True)
    if not torch.equal(grads[0], torch.zeros_like(value)):
        failures.append(('zero-queries', 'deterministic grad_value'))
    print('failures:', failures)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
