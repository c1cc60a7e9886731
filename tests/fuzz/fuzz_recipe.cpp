// TOML recipes: the input is a recipe's text, read through the schema (Recipe::from_string: TOML
// parse, unknown keys, types, ranges, cross-key checks); an accepted recipe must survive its own
// round trip (from_string(to_toml()) accepts it again).
#include "tests/fuzz/fuzz_util.h"

#include "src/train/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean([&] {
    const frugal::Recipe r = frugal::Recipe::from_string(text, "<fuzz>");
    const std::string again = r.to_toml();
    try {
      (void)frugal::Recipe::from_string(again, "<fuzz round trip>");
    } catch (const frugal::Error&) {
      std::abort();  // to_toml wrote a recipe that from_string rejects
    }
  });
  return 0;
}
