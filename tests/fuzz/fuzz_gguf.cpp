// GGUF: the input is a whole .gguf file, opened through GGUFFile (mmap + full validation); every
// key is read through the typed getters and every tensor's shape and size computed.
#include "tests/fuzz/fuzz_util.h"

#include "src/io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_file("f.gguf", data, size);
  fuzz::expect_clean([&] {
    frugal::GGUFFile f(path);
    for (const std::string& k : f.keys()) {
      const frugal::GGUFValue& v = f.get(k);
      fuzz::expect_clean([&] { (void)f.get_float_array(k); });
      fuzz::expect_clean([&] { (void)f.get_string(k); });
      fuzz::expect_clean([&] { (void)f.get_int(k); });
      (void)v;
    }
    for (const frugal::GGUFTensorInfo& t : f.tensors()) {
      (void)t.numel();
      (void)t.shape();
      (void)f.tensor(t.name);
    }
  });
  return 0;
}
