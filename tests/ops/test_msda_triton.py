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
    """Lowers both kernels to a CUDA binary for sm_90 (no GPU needed): catches code that the
    interpreter accepts but the compiler rejects."""
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
        bwd = {'value_ptr': dtype, **common, 'grad_out_ptr': dtype, 'grad_value_ptr': '*fp32',
               'grad_loc_ptr': '*fp32', 'grad_attn_ptr': '*fp32', **sizes,
               **{k: 'constexpr' for k in constexprs}}
        for kernel, signature in ((msda_triton._msda_fwd_kernel, fwd),
                                  (msda_triton._msda_bwd_kernel, bwd)):
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature,
                                                constexprs=constexprs), target=target)
            assert compiled.asm['cubin'], (kernel.__name__, dtype)
