"""torch APIs the package uses that moved between the oldest tested torch (2.1) and today's."""
import torch

__all__ = ['is_compiling']

if hasattr(getattr(torch, 'compiler', None), 'is_compiling'):  # torch >= 2.3
    is_compiling = torch.compiler.is_compiling
else:
    # torch 2.1 / 2.2: ``torch._utils.is_compiling``, which Dynamo folds to True while it
    # traces (a function that looks it up in ``torch._dynamo`` at call time breaks its trace).
    is_compiling = torch._utils.is_compiling
