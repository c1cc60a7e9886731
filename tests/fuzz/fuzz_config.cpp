// config.json: the input is a model config.json (LlamaConfig::load from disk: JSON parse, upstream
// defaults, validation), then written back as transformers writes it and read again.
#include "tests/fuzz/fuzz_util.h"

#include "src/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_file("config.json", data, size);
  fuzz::expect_clean([&] {
    const frugal::LlamaConfig c = frugal::LlamaConfig::load(path);
    (void)frugal::llama_block_linears(c, 0);
  });
  return 0;
}
