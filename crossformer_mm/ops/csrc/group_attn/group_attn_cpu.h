// Softmax attention within token groups, inference, float32, CPU (see group_attn_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

namespace crossformer_mm {

// qkv (G, N, 3, H, D) contiguous float32; bias (nb, H, N, N) and mask (nm, H|1, N|1, N)
// optional, group g uses row g % nb / g % nm. Returns (G, N, H, D).
at::Tensor group_attention_forward_cpu(const at::Tensor& qkv,
                                       const c10::optional<at::Tensor>& bias,
                                       const c10::optional<at::Tensor>& mask, double scale);

}  // namespace crossformer_mm
