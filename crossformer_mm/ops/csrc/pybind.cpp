// Python bindings of the package's native ops (module crossformer_mm._ext). The kernels release
// the GIL while they run.
#include <torch/extension.h>

#include "msda/msda_cpu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "crossformer_mm native CPU ops";
  m.def("ms_deform_attn_forward", &crossformer_mm::ms_deform_attn_forward_cpu,
        "Multi-scale deformable attention forward (CPU)", py::arg("value"),
        py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::call_guard<py::gil_scoped_release>());
  m.def("ms_deform_attn_backward", &crossformer_mm::ms_deform_attn_backward_cpu,
        "Multi-scale deformable attention backward (CPU): grad_value, grad_sampling_locations, "
        "grad_attention_weights",
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"),
        py::arg("sampling_locations"), py::arg("attention_weights"), py::arg("grad_output"),
        py::call_guard<py::gil_scoped_release>());
}
