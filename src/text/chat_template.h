// chat_template.h: chat templates as fixed C++ renderers of their reference Jinja templates
// (tests/fixtures/chat holds transformers' apply_chat_template output they are checked against).
//   Llama3: bos, then per message "<|start_header_id|>{role}<|end_header_id|>\n\n{trim(content)}
//           <|eot_id|>"; generation prompt "<|start_header_id|>assistant<|end_header_id|>\n\n".
//   ChatML: (SmolLM2) "<|im_start|>{role}\n{content}<|im_end|>\n"; when the first message is not a
//           system message, SmolLM2's default system message is rendered first; generation
//           prompt "<|im_start|>assistant\n".
//   Alpaca: the Stanford Alpaca prompt ("Below is an instruction ... ### Instruction: ...
//           ### Input: ... ### Response:\n") followed by the reply; no end token in the text (the
//           caller appends the tokenizer's EOS).
// Pieces carry a train flag: assistant contents and their end token (<|eot_id|>, <|im_end|>) are
// loss targets; everything else (bos, headers, system and user turns, the "\n" after <|im_end|>)
// is masked. Tokenizing the pieces one by one keeps mask boundaries exact.
#pragma once
#include <string>
#include <vector>

namespace frugal {

struct ChatMessage {
  std::string role, content;  // role: system | user | assistant
};

enum class ChatTemplate { Llama3, ChatML, Alpaca };

const char* chat_template_name(ChatTemplate t);  // "llama3" | "chatml" | "alpaca"

// name: "llama3" | "chatml" | "alpaca" | "auto". auto reads tokenizer_config.json (in the
// directory, or beside the given tokenizer.json) and picks from its chat_template text, falling
// back to the added tokens of tokenizer.json: <|start_header_id|> -> Llama3, <|im_start|> ->
// ChatML; anything else is an error naming the file(s).
ChatTemplate parse_chat_template(const std::string& name, const std::string& tokenizer_dir_or_json);

struct RenderedPiece {
  std::string text;
  bool train;  // a loss target: assistant content + its end token
};

// Errors (frugal::Error) on an unknown role, or, for Alpaca, on a conversation that does not
// alternate user/assistant (a system message is allowed first; it replaces the preamble).
// add_generation_prompt appends the assistant header (masked). bos_text ("" if none) is
// rendered first (masked); Llama3's reference template puts bos_token there.
std::vector<RenderedPiece> render_chat(ChatTemplate t, const std::vector<ChatMessage>& msgs,
                                       bool add_generation_prompt, const std::string& bos_text);
// The concatenation of render_chat's pieces, e.g. a generation prompt.
std::string render_chat_text(ChatTemplate t, const std::vector<ChatMessage>& msgs,
                             bool add_generation_prompt, const std::string& bos_text);

// One Alpaca record (instruction, optional input, output) as pieces: prompt masked, output
// trained (an empty output leaves just the prompt, e.g. for generation).
std::vector<RenderedPiece> render_alpaca(const std::string& instruction, const std::string& input,
                                         const std::string& output);

// The special token that ends an assistant turn ("<|eot_id|>", "<|im_end|>"; "" for Alpaca):
// generation stops on it.
std::string chat_end_token(ChatTemplate t);

}  // namespace frugal
