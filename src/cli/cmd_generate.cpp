// cmd_generate.cpp: `frugal generate --model DIR [--adapter DIR] [--quant nf4|none] --prompt TEXT
// [--chat] [--system TEXT] [--template auto|llama3|chatml] [--max-new-tokens N] [--temperature T]
// [--top-p P] [--top-k K] [--seed S]`.
// Streams the continuation to stdout as it is generated (src/model/generate.h), then one stats line on
// stderr. With --chat the prompt becomes a user turn (after an optional system turn) rendered by
// the chat template (src/text/chat_template.h), and generation also stops at the template's end token.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "src/text/chat_template.h"
#include "src/cli/cli.h"
#include "src/common.h"
#include "src/model/generate.h"
#include "src/model/model.h"
#include "src/model/peft.h"
#include "src/text/tokenizer.h"

namespace frugal {
namespace {

struct GenerateArgs {
  std::string model, adapter, quant = "none", prompt, system, tmpl = "auto", device = "cpu";
  bool chat = false;
  int max_new_tokens = 128;
  float temperature = 0.7f, top_p = 0.9f;
  int top_k = 0;
  uint64_t seed = 0;
};

bool ends_in_replacement_char(const std::string& s) {  // U+FFFD = EF BF BD: an unfinished character
  return s.size() >= 3 && (unsigned char)s[s.size() - 3] == 0xEF &&
         (unsigned char)s[s.size() - 2] == 0xBF && (unsigned char)s[s.size() - 1] == 0xBD;
}

void add_stop(std::vector<int32_t>& stops, int32_t id) {
  if (id >= 0 && std::find(stops.begin(), stops.end(), id) == stops.end()) stops.push_back(id);
}

void run_generate(const GenerateArgs& a) {
  backend_by_name(a.device);  // an unbuilt backend fails before any work
  SamplingParams sp;
  sp.temperature = a.temperature;
  sp.top_p = a.top_p;
  sp.top_k = a.top_k;
  sp.seed = a.seed;
  sp.validate();  // before the (slow) model load
  if (a.max_new_tokens < 0) fail("--max-new-tokens must be >= 0 (got ", a.max_new_tokens, ")");
  const std::string tok_path = (std::filesystem::path(a.model) / "tokenizer.json").string();
  if (!std::filesystem::exists(tok_path))
    fail(tok_path, ": not found (generate needs the model's tokenizer.json)");
  Tokenizer tok = Tokenizer::load(tok_path);

  // prompt ids, and the tokens that end the reply
  std::vector<int32_t> stops;
  if (auto e = tok.eos_id()) add_stop(stops, *e);
  std::vector<int32_t> prompt;
  if (a.chat) {
    ChatTemplate t = parse_chat_template(a.tmpl, a.model);
    std::vector<ChatMessage> msgs;
    if (!a.system.empty()) msgs.push_back({"system", a.system});
    msgs.push_back({"user", a.prompt});
    // Llama-3's reference template starts with bos_token; ChatML (SmolLM2) has none.
    std::string bos_text;
    if (t == ChatTemplate::Llama3 && tok.bos_id()) bos_text = tok.id_to_token(*tok.bos_id());
    const std::string text = render_chat_text(t, msgs, /*add_generation_prompt=*/true, bos_text);
    prompt = tok.encode(text, /*add_special=*/false);  // specials in the text are added tokens
    const std::string end = chat_end_token(t);
    if (!end.empty()) {
      const int32_t id = tok.token_to_id(end);
      if (id < 0) fail(tok_path, ": the ", chat_template_name(t), " chat template ends turns with ", end,
                       ", which is not a token of this tokenizer");
      add_stop(stops, id);
    }
  } else {
    if (!a.system.empty()) fail("--system needs --chat");
    prompt = tok.encode(a.prompt, /*add_special=*/true);  // BOS as the tokenizer's post-processor says
  }
  if (prompt.empty()) fail("the prompt encodes to no tokens; give a non-empty --prompt");

  ModelOptions mo;
  mo.quant = parse_quant_mode(a.quant);
  mo.backend = backend_by_name(a.device).name();
  LlamaModel m = LlamaModel::load(a.model, mo);
  if (!a.adapter.empty()) load_peft_adapter(m, a.adapter);
  const int V = m.config().vocab_size;
  for (int32_t id : prompt)
    if (id >= V) fail(tok_path, ": token id ", id, " is outside the model's vocab_size ", V);

  GenerateOptions o;
  o.max_new_tokens = a.max_new_tokens;
  o.sampling = sp;
  o.stop_ids = stops;
  const int64_t need = (int64_t)prompt.size() + std::max(a.max_new_tokens - 1, 0);
  if (need > m.config().max_position_embeddings)
    fail("prompt (", prompt.size(), " tokens) + --max-new-tokens ", a.max_new_tokens,
         " exceeds the model's max_position_embeddings ", m.config().max_position_embeddings);
  Generator g(m, (int)std::max<int64_t>(need, 1));

  // Stream: decode everything generated so far and print what is new, unless the text ends in
  // an unfinished UTF-8 character (byte tokens of a multi-byte character arrive one by one).
  std::vector<int32_t> out;
  size_t printed = 0;
  auto on_token = [&](int32_t id) {
    out.push_back(id);
    const std::string text = tok.decode(out, /*skip_special=*/true);
    if (ends_in_replacement_char(text) || text.size() <= printed) return;
    std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
    std::fflush(stdout);
    printed = text.size();
  };
  GenerateResult r = generate(g, prompt, o, on_token);
  const std::string text = tok.decode(out, true);
  if (text.size() > printed) std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);

  auto rate = [](double n, double s) { return s > 0 ? n / s : 0.0; };
  std::fprintf(stderr,
               "prompt tokens %d, generated tokens %zu (%s), prefill %.1f tok/s (%.3f s), "
               "decode %.1f tok/s (%d steps, %.3f s); CPU time prefill %.3f s, decode %.1f ms/token\n",
               r.prompt_tokens, r.ids.size(),
               r.reason == StopReason::StopToken ? "stop token" : "max-new-tokens",
               rate(r.prompt_tokens, r.prefill_seconds), r.prefill_seconds,
               rate(r.decode_steps, r.decode_seconds), r.decode_steps, r.decode_seconds,
               r.prefill_cpu_seconds, r.decode_steps ? 1e3 * r.decode_cpu_seconds / r.decode_steps : 0.0);
}

}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "generate text with a KV cache, streamed to stdout");
  cmd->add_option("--model", o->model, "model dir (config.json, safetensors, tokenizer.json)")->required();
  cmd->add_option("--adapter", o->adapter, "PEFT LoRA adapter dir");
  cmd->add_option("--quant", o->quant, "frozen linear storage: none | nf4")->capture_default_str();
  cmd->add_option("--device", o->device, "backend the ops run on: cpu | cuda")->capture_default_str();
  cmd->add_option("--prompt", o->prompt, "prompt text")->required();
  cmd->add_flag("--chat", o->chat, "render the prompt as a user turn with the chat template");
  cmd->add_option("--system", o->system, "system message (with --chat)");
  cmd->add_option("--template", o->tmpl, "chat template: auto | llama3 | chatml")->capture_default_str();
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate at most")->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "softmax temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", o->top_p, "nucleus sampling mass, (0, 1]")->capture_default_str();
  cmd->add_option("--top-k", o->top_k, "keep the k most likely tokens; 0 = all")->capture_default_str();
  cmd->add_option("--seed", o->seed, "sampling seed")->capture_default_str();
  cmd->callback([o] { run_generate(*o); });
}

}  // namespace frugal
