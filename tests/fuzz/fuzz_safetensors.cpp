// Safetensors: the input is a whole .safetensors file image (parse_safetensors, the validation
// SafetensorsFile runs on its mapping), then as a file on disk read through SafetensorsModel (mmap)
// with every tensor converted to fp32 where the dtype allows; and, after a "\n--index--\n"
// separator, the same bytes as model.safetensors.index.json beside it.
#include "tests/fuzz/fuzz_util.h"

#include <filesystem>
#include <map>
#include <vector>

#include "src/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split(data, size, "\n--index--\n");  // no structured binding: clang 14 cannot capture one
  const std::string_view file = parts.first, index = parts.second;
  const auto* bytes = reinterpret_cast<const uint8_t*>(file.data());
  fuzz::expect_clean([&] {
    std::vector<frugal::TensorView> tensors;
    std::map<std::string, std::string> meta;
    size_t n = 0;
    frugal::parse_safetensors(bytes, file.size(), "<fuzz>", &tensors, &meta, &n);
  });
  const std::filesystem::path dir = fuzz::scratch_dir() / "st";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  if (index.data() == nullptr) {
    fuzz::write_file("st/model.safetensors", bytes, file.size());
  } else {
    fuzz::write_file("st/model-00001-of-00001.safetensors", bytes, file.size());
    fuzz::write_file("st/model.safetensors.index.json", reinterpret_cast<const uint8_t*>(index.data()), index.size());
  }
  fuzz::expect_clean([&] {
    frugal::SafetensorsModel m(dir.string());
    for (const std::string& name : m.names()) {
      const frugal::TensorView& t = m.get(name);
      if (t.dtype != frugal::DType::F32 && t.dtype != frugal::DType::BF16 && t.dtype != frugal::DType::F16) continue;
      std::vector<float> out(size_t(t.numel()));  // numel is bounded by the validated file size
      frugal::to_float(t, out.data());
    }
  });
  return 0;
}
