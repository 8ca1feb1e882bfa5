"""torch APIs the package uses that moved between the oldest tested torch (2.1) and today's."""
import torch

__all__ = ['is_compiling']

if hasattr(getattr(torch, 'compiler', None), 'is_compiling'):  # torch >= 2.3
    is_compiling = torch.compiler.is_compiling
else:

    def is_compiling() -> bool:
        """``torch.compiler.is_compiling()``, which torch 2.1 and 2.2 have in ``torch._dynamo``."""
        import torch._dynamo
        dynamo_is_compiling = getattr(torch._dynamo, 'is_compiling', None)
        return bool(dynamo_is_compiling is not None and dynamo_is_compiling())
