"""The Triton MSDA kernels, run on the CPU through Triton's interpreter (small shapes).

``TRITON_INTERPRET=1`` has to be set before triton is imported, so the checks run in a fresh
interpreter (``_msda_triton_interp.py``)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_triton_kernels_match_reference_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run([sys.executable, os.path.join(HERE, '_msda_triton_interp.py')],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'failures: []' in proc.stdout


def test_triton_kernels_compile_for_a_cuda_target():
    """Lowers the kernels (forward, both backward variants, the deterministic grad_value pass) to
    a CUDA binary for sm_90 (no GPU needed): catches code that the interpreter accepts but the
    compiler rejects."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from crossformer_mm.ops import msda_triton

    common = {'shapes_ptr': '*i64', 'starts_ptr': '*i64', 'loc_ptr': '*fp32',
              'attn_ptr': '*fp32'}
    sizes = {'S': 'i32', 'Q': 'i32', 'NH': 'i32', 'D': 'i32'}
    constexprs = {'L': 4, 'P': 4, 'BLOCK_Q': 64, 'BLOCK_D': 32, 'ACC_FP64': False}
    target = GPUTarget('cuda', 90, 32)
    for dtype in ('*fp32', '*bf16'):
        fwd = {'value_ptr': dtype, **common, 'out_ptr': dtype, **sizes,
               **{k: 'constexpr' for k in constexprs}}
        bwd_constexprs = dict(constexprs, DETERMINISTIC=False)
        bwd = {'value_ptr': dtype, **common, 'grad_out_ptr': dtype, 'grad_value_ptr': '*fp32',
               'grad_loc_ptr': '*fp32', 'grad_attn_ptr': '*fp32', 'rows_ptr': '*i64',
               'coef_ptr': '*fp32', **sizes, **{k: 'constexpr' for k in bwd_constexprs}}
        value_constexprs = {'LP': 16, 'BLOCK_D': 32, 'ACC_FP64': False}
        value = {'grad_out_ptr': dtype, 'order_ptr': '*i64', 'coef_ptr': '*fp32',
                 'offsets_ptr': '*i64', 'grad_value_ptr': dtype, 'D': 'i32',
                 **{k: 'constexpr' for k in value_constexprs}}
        kernels = [(msda_triton._msda_fwd_kernel, fwd, constexprs),
                   (msda_triton._msda_bwd_kernel, bwd, bwd_constexprs)]
        if dtype == '*fp32':  # the deterministic variant once (its dtype handling is shared)
            kernels += [(msda_triton._msda_bwd_kernel, bwd,
                         dict(bwd_constexprs, DETERMINISTIC=True)),
                        (msda_triton._msda_bwd_value_kernel, value, value_constexprs)]
        for kernel, signature, consts in kernels:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature,
                                                constexprs=consts), target=target)
            assert compiled.asm['cubin'], (kernel.__name__, dtype)
            if consts.get('DETERMINISTIC') or kernel is msda_triton._msda_bwd_value_kernel:
                assert 'atom' not in compiled.asm['ptx'], (kernel.__name__, 'uses atomics')
