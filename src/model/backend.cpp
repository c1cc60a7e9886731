// backend.cpp: the op list of the backend seam and the registry of backends (src/model/backend.h).
#include "src/model/backend.h"

namespace frugal {

const std::vector<std::string>& backend_op_names() {
  static const std::vector<std::string> ops = {
      "alloc", "free", "copy_to_backend", "copy_to_host", "copy", "synchronize", "zero",
      "to_bf16", "to_f32", "add",
      "embedding_forward", "embedding_backward",
      "rmsnorm_forward", "rmsnorm_backward",
      "rope_table", "rope_forward", "rope_backward",
      "attention_forward", "attention_backward", "attention_decode",
      "swiglu_forward", "swiglu_backward",
      "linear_forward", "linear_backward_input", "linear_backward_weight", "linear_nf4_scratch_elems",
      "lora_forward", "lora_backward", "lora_chunk_rows",
      "lm_head_ce", "lm_head_logits",
      "adamw_update", "grad_sq_sums", "grad_scale",
      "gemm_f32", "svd_f32", "gram_f64", "tri_solve_lt_f64", "eigh_f64",
      "kernel_scratch", "warm_up"};
  return ops;
}

std::vector<std::string> available_backends() { return {"cpu"}; }

Backend& backend_by_name(const std::string& name) {
  if (name == "cpu") return cpu_backend();
  if (name == "cuda")
    fail("device backend 'cuda': CUDA backend not built/not implemented yet (the CUDA kernels in "
         "kernels/cuda are not wired into a Backend); use 'cpu'");
  fail("unknown device backend '", name, "' (expected cpu or cuda)");
}

}  // namespace frugal
