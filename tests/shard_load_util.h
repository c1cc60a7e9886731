// shard_load_util.h: model settings shared by the sharded-loading tests (test_shard_load.cpp,
// single process with simulated ranks; mpi_shard_load.cpp, under mpirun). Header only.
#pragma once
#include "src/model/config.h"
#include "src/model/model.h"

namespace frugal::test_util {

// NF4 storage with the given block size and double quantization on or off.
inline ModelOptions nf4_opts(int blocksize, bool double_quant) {
  ModelOptions o;
  o.quant = QuantMode::NF4;
  o.nf4_blocksize = blocksize;
  o.nf4_double_quant = double_quant;
  return o;
}

// Odd widths (hidden 59, ffn 333, q 30, kv 10, vocab 37, 2 layers): gate/up/down numel 19647 is
// odd (307 blocks of 64, > 256 so the nested absmax has 2 blocks) and ends in a partial block.
inline LlamaConfig shard_load_odd_config(bool tied) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.vocab_size = 37;
  c.hidden_size = 59;
  c.intermediate_size = 333;
  c.num_attention_heads = 3;
  c.num_key_value_heads = 1;
  c.head_dim = 10;
  c.rope.head_dim = 10;
  c.num_hidden_layers = 2;
  c.tie_word_embeddings = tied;
  c.validate("odd test config");
  return c;
}

}  // namespace frugal::test_util
