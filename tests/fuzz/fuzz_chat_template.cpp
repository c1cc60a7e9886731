// Chat templates: input = "<tokenizer_config.json>\n--chat--\n<role>\n<content>\n<role>\n...".
// parse_chat_template("auto") detects the template from the fuzzed tokenizer_config.json (its
// chat_template text), then the fuzzed conversation is rendered with it and with every template.
#include "tests/fuzz/fuzz_util.h"

#include <filesystem>
#include <vector>

#include "src/text/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split(data, size, "\n--chat--\n");
  std::filesystem::create_directories(fuzz::scratch_dir() / "tok");
  fuzz::write_file("tok/tokenizer_config.json", reinterpret_cast<const uint8_t*>(parts.first.data()), parts.first.size());
  std::vector<frugal::ChatMessage> msgs;  // alternate lines: role, content
  std::string_view rest = parts.second;
  while (!rest.empty()) {
    const size_t a = rest.find('\n');
    const std::string role(rest.substr(0, a));
    rest = a == std::string_view::npos ? std::string_view() : rest.substr(a + 1);
    const size_t b = rest.find('\n');
    msgs.push_back({role, std::string(rest.substr(0, b))});
    rest = b == std::string_view::npos ? std::string_view() : rest.substr(b + 1);
  }
  std::vector<frugal::ChatTemplate> templates = {frugal::ChatTemplate::Llama3, frugal::ChatTemplate::ChatML,
                                                 frugal::ChatTemplate::Alpaca};
  fuzz::expect_clean([&] { templates.push_back(frugal::parse_chat_template("auto", (fuzz::scratch_dir() / "tok").string())); });
  for (frugal::ChatTemplate t : templates)
    for (bool gen : {false, true})
      fuzz::expect_clean([&] { (void)frugal::render_chat(t, msgs, gen, "<s>"); });
  return 0;
}
