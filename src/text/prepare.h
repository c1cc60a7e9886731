// prepare.h: `frugal prepare`: JSONL / text -> the HDF5 token dataset of src/io/dataset.h, with SFT
// loss masks. Formats (one sample per input line):
//   text:   JSONL {"text": str}, or a plain .txt file (one document per non-empty line); the
//           tokenizer's post-processor prefix (e.g. Llama-3's BOS) + text + EOS, all trained.
//   alpaca: JSONL {"instruction": str, "input": str (optional), "output": str}; with --template
//           alpaca (the default for this format) the Alpaca prompt is masked and output + EOS
//           trained; with llama3/chatml the record becomes a user turn (instruction, then "\n\n"
//           + input when given) and an assistant turn.
//   chat:   JSONL {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]};
//           rendered with the chat template; system/user turns and headers masked, assistant
//           contents and their end token trained (Alpaca template: the tokenizer's EOS after each
//           reply). A conversation without an assistant message is malformed.
// Each rendered piece is tokenized on its own (special tokens in the template text match as added
// tokens) and the ids concatenated, so the mask boundaries are exact.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/text/chat_template.h"
#include "src/io/dataset.h"
#include "src/text/tokenizer.h"

namespace frugal {

enum class PrepareFormat { Text, Alpaca, Chat };
PrepareFormat parse_prepare_format(const std::string& name);  // "text" | "alpaca" | "chat"

struct PrepareOptions {
  std::string tokenizer;  // tokenizer.json, or the directory holding it (+ tokenizer_config.json)
  std::string input;      // .jsonl (or .txt for --format text)
  std::string out;        // .h5
  PrepareFormat format = PrepareFormat::Text;
  std::string template_name = "auto";  // chat/alpaca: llama3 | chatml | alpaca | auto
  int seq_len = 0;        // > 0: report samples longer than this (the trainer truncates or packs)
  bool pack = false;      // informational: packing happens when the trainer loads the data
  bool skip_bad = false;  // skip malformed lines (counted) instead of failing
  int64_t max_samples = 0;  // > 0: stop after this many samples
};

struct PrepareStats {
  int64_t lines = 0;     // input lines read (blank lines included)
  int64_t samples = 0;   // samples written
  int64_t skipped = 0;   // malformed lines skipped (--skip-bad)
  std::string first_skip;  // the first skipped line's error, for the summary
  int64_t tokens = 0, trained = 0;  // total tokens, tokens with loss_mask 1
  int64_t longer_than_seq_len = 0;
};

// Tokenizes pieces one by one and appends ids and their 0/1 masks.
void append_pieces(const Tokenizer& tok, const std::vector<RenderedPiece>& pieces, std::vector<int32_t>& ids,
                   std::vector<uint8_t>& mask);

// The in-memory dataset (vocab_size, bos/eos/pad ids set from the tokenizer). tokenizer_path is
// used for --template auto and in messages.
TokenDataset prepare_dataset(const Tokenizer& tok, const std::string& tokenizer_path, const PrepareOptions& o,
                             PrepareStats* stats);

// Loads the tokenizer, builds the dataset, writes o.out.
PrepareStats run_prepare(const PrepareOptions& o);

// `frugal eval --data FILE.txt`: the whole file tokenized as one stream, no special tokens added;
// ids >= vocab are an error naming the file.
std::vector<int32_t> read_text_tokens(const std::string& path, const std::string& tokenizer_json, int vocab);

// PATH may be tokenizer.json itself or the model directory holding it.
std::string tokenizer_json_path(const std::string& path);

}  // namespace frugal
