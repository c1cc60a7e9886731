// tokenizer.json: input = "<tokenizer.json>\n--text--\n<text>". The first part is loaded as a
// tokenizer; the text is encoded and decoded with it. Without a separator the input is text for
// the committed byte-level BPE fixture (tests/fixtures/tokenizer/golden.json's tokenizer), whose
// round trip must be exact: decode(encode(text)) == text for valid UTF-8 text.
#include "tests/fuzz/fuzz_util.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "src/text/tokenizer.h"

namespace {
const frugal::Tokenizer& fixed_tokenizer() {
  static const frugal::Tokenizer t =
      frugal::Tokenizer::load(FRUGAL_SOURCE_DIR "/tests/fuzz/data/bytelevel_tokenizer.json");
  return t;
}

void round_trip(const frugal::Tokenizer& t, std::string_view text, bool exact) {
  std::vector<int32_t> ids;
  try {
    ids = t.encode(text, true);
  } catch (const frugal::Error&) {
    return;  // invalid UTF-8 is a clean error
  }
  for (int32_t id : ids) (void)t.id_to_token(id);
  const std::string back = t.decode(t.encode(text, false), false);
  (void)t.decode(ids, true);
  if (exact && back != text) std::abort();  // byte-level BPE without normalizer is lossless
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto [head, text] = fuzz::split(data, size, "\n--text--\n");
  if (text.data() == nullptr) {
    round_trip(fixed_tokenizer(), head, true);
    return 0;
  }
  fuzz::expect_clean([&] {
    const nlohmann::json j = nlohmann::json::parse(head, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return;  // not JSON: Tokenizer::load's own parse is fuzzed below
    const frugal::Tokenizer t = frugal::Tokenizer::from_json(j, "<fuzz>");
    (void)t.vocab_size();
    round_trip(t, text, false);
  });
  const std::string path = fuzz::write_file("tokenizer.json", reinterpret_cast<const uint8_t*>(head.data()), head.size());
  fuzz::expect_clean([&] { (void)frugal::Tokenizer::load(path); });
  return 0;
}
