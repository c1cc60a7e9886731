// PEFT adapter_config.json: the input is the file (read_peft_adapter_config: JSON, supported
// keys, target_modules list / regex / "all-linear", exclude_modules, layers_to_transform); an
// accepted config is asked which modules it targets (the regex path runs PCRE2 on fuzzed patterns).
#include "tests/fuzz/fuzz_util.h"

#include <filesystem>

#include "src/model/peft.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::filesystem::create_directories(fuzz::scratch_dir() / "adapter");
  fuzz::write_file("adapter/adapter_config.json", data, size);
  fuzz::expect_clean([&] {
    const frugal::PeftAdapterFile f = frugal::read_peft_adapter_config((fuzz::scratch_dir() / "adapter").string());
    for (const char* key : {"model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj", "lm_head"})
      for (int layer : {0, 3}) (void)frugal::peft_targets(f, key, layer);
  });
  return 0;
}
