// chat_template.cpp: the Llama-3, ChatML (SmolLM2) and Alpaca renderers of chat_template.h, and
// the "auto" detection from tokenizer_config.json. Each renderer mirrors its Jinja reference
// line by line (the reference text is quoted in comments); tests/test_prepare.cpp checks them
// against transformers' apply_chat_template output in tests/fixtures/chat.
#include "src/text/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "src/common.h"

namespace frugal {
namespace {

// Jinja's `trim` filter is Python's str.strip(): leading/trailing whitespace removed. ASCII
// whitespace covers every case met in chat data; Unicode spaces (U+00A0, ...) are kept.
std::string trim_ws(const std::string& s) {
  const char* ws = " \t\n\r\v\f";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

void check_role(const ChatMessage& m, size_t i) {
  if (m.role != "system" && m.role != "user" && m.role != "assistant")
    fail("chat message ", i, ": unknown role '", m.role, "' (expected system, user or assistant)");
}

// Appends a piece, merging it into the previous one when the train flag is the same (fewer,
// longer pieces tokenize like the reference's one string as far as possible).
void push(std::vector<RenderedPiece>& out, std::string text, bool train) {
  if (text.empty()) return;
  if (!out.empty() && out.back().train == train)
    out.back().text += text;
  else
    out.push_back({std::move(text), train});
}

// Meta-Llama-3-Instruct:
//   {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' +
//      message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content =
//      bos_token + content %}{% endif %}{{ content }} ... '<|start_header_id|>assistant<|end_header_id|>\n\n'
// (Meta's 3.0 template appends the generation prompt unconditionally; we append it only when
// asked, as the 3.1 template does, since a training sample must end after the last reply.)
void render_llama3(std::vector<RenderedPiece>& out, const std::vector<ChatMessage>& msgs, bool gen) {
  for (const ChatMessage& m : msgs) {
    const bool a = m.role == "assistant";
    push(out, "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n", false);
    push(out, trim_ws(m.content) + "<|eot_id|>", a);
  }
  if (gen) push(out, "<|start_header_id|>assistant<|end_header_id|>\n\n", false);
}

// SmolLM2-Instruct:
//   {% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a
//   helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}
//   {{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}
//   ... {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
void render_chatml(std::vector<RenderedPiece>& out, const std::vector<ChatMessage>& msgs, bool gen) {
  if (!msgs.empty() && msgs[0].role != "system")
    push(out,
         "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
         "Face<|im_end|>\n",
         false);
  for (const ChatMessage& m : msgs) {
    const bool a = m.role == "assistant";
    push(out, "<|im_start|>" + m.role + "\n", false);
    push(out, m.content + "<|im_end|>", a);
    push(out, "\n", false);
  }
  if (gen) push(out, "<|im_start|>assistant\n", false);
}

const char* kAlpacaPreambleInput =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n";
const char* kAlpacaPreamble =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n";

// Conversations in Alpaca form: an optional system message replaces the preamble, then each
// user/assistant exchange is one "### Instruction:\n...\n\n### Response:\n..." block; blocks
// are separated by "\n\n". The reply has no end token in the text.
void render_alpaca_chat(std::vector<RenderedPiece>& out, const std::vector<ChatMessage>& msgs, bool gen) {
  size_t i = 0;
  std::string preamble = kAlpacaPreamble;
  if (!msgs.empty() && msgs[0].role == "system") {
    preamble = msgs[0].content + "\n\n";
    i = 1;
  }
  push(out, preamble, false);
  bool first = true;
  for (; i < msgs.size(); i += 2) {
    if (msgs[i].role != "user")
      fail("chat message ", i, ": the alpaca template expects a user message here, got '", msgs[i].role, "'");
    push(out, std::string(first ? "" : "\n\n") + "### Instruction:\n" + msgs[i].content + "\n\n### Response:\n",
         false);
    first = false;
    if (i + 1 < msgs.size()) {
      if (msgs[i + 1].role != "assistant")
        fail("chat message ", i + 1, ": the alpaca template expects an assistant message here, got '",
             msgs[i + 1].role, "'");
      push(out, msgs[i + 1].content, true);
    } else if (!gen) {
      fail("chat message ", i, ": the alpaca template needs an assistant reply after the last user message");
    }
  }
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

const char* chat_template_name(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::Llama3: return "llama3";
    case ChatTemplate::ChatML: return "chatml";
    case ChatTemplate::Alpaca: return "alpaca";
  }
  fail("chat template: invalid enum value ", int(t));
}

std::string chat_end_token(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::Llama3: return "<|eot_id|>";
    case ChatTemplate::ChatML: return "<|im_end|>";
    case ChatTemplate::Alpaca: return "";
  }
  fail("chat template: invalid enum value ", int(t));
}

ChatTemplate parse_chat_template(const std::string& name, const std::string& tokenizer_dir_or_json) {
  if (name == "llama3") return ChatTemplate::Llama3;
  if (name == "chatml") return ChatTemplate::ChatML;
  if (name == "alpaca") return ChatTemplate::Alpaca;
  if (name != "auto") fail("--template: unknown chat template '", name, "' (expected llama3, chatml, alpaca or auto)");

  namespace fs = std::filesystem;
  const fs::path p(tokenizer_dir_or_json);
  const fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  const fs::path cfg = dir / "tokenizer_config.json", tj = fs::is_directory(p) ? dir / "tokenizer.json" : p;
  auto detect = [](const std::string& text) -> int {
    if (text.find("<|start_header_id|>") != std::string::npos) return int(ChatTemplate::Llama3);
    if (text.find("<|im_start|>") != std::string::npos) return int(ChatTemplate::ChatML);
    return -1;
  };
  // 1) the chat_template text (a string, or a list of {name, template} in some configs).
  if (fs::exists(cfg)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text(cfg.string()));
    } catch (const nlohmann::json::exception& e) {
      fail(cfg.string(), ": invalid JSON: ", e.what());
    }
    if (j.contains("chat_template")) {
      const int d = detect(j["chat_template"].dump());
      if (d >= 0) return ChatTemplate(d);
    }
  }
  // 2) the special tokens the vocabulary defines.
  if (fs::exists(tj)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text(tj.string()));
    } catch (const nlohmann::json::exception& e) {
      fail(tj.string(), ": invalid JSON: ", e.what());
    }
    if (j.contains("added_tokens")) {
      const int d = detect(j["added_tokens"].dump());
      if (d >= 0) return ChatTemplate(d);
    }
  }
  fail("--template auto: neither ", cfg.string(), " (chat_template) nor ", tj.string(),
       " (added_tokens) has <|start_header_id|> (llama3) or <|im_start|> (chatml); pass --template");
}

std::vector<RenderedPiece> render_chat(ChatTemplate t, const std::vector<ChatMessage>& msgs,
                                       bool add_generation_prompt, const std::string& bos_text) {
  for (size_t i = 0; i < msgs.size(); ++i) check_role(msgs[i], i);
  std::vector<RenderedPiece> out;
  push(out, bos_text, false);
  switch (t) {
    case ChatTemplate::Llama3: render_llama3(out, msgs, add_generation_prompt); return out;
    case ChatTemplate::ChatML: render_chatml(out, msgs, add_generation_prompt); return out;
    case ChatTemplate::Alpaca: render_alpaca_chat(out, msgs, add_generation_prompt); return out;
  }
  fail("chat template: invalid enum value ", int(t));
}

std::string render_chat_text(ChatTemplate t, const std::vector<ChatMessage>& msgs,
                             bool add_generation_prompt, const std::string& bos_text) {
  std::string s;
  for (const RenderedPiece& p : render_chat(t, msgs, add_generation_prompt, bos_text)) s += p.text;
  return s;
}

std::vector<RenderedPiece> render_alpaca(const std::string& instruction, const std::string& input,
                                         const std::string& output) {
  std::vector<RenderedPiece> out;
  if (input.empty())
    push(out, std::string(kAlpacaPreamble) + "### Instruction:\n" + instruction + "\n\n### Response:\n", false);
  else
    push(out,
         std::string(kAlpacaPreambleInput) + "### Instruction:\n" + instruction + "\n\n### Input:\n" + input +
             "\n\n### Response:\n",
         false);
  push(out, output, true);
  return out;
}

}  // namespace frugal
