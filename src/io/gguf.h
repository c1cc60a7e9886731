// gguf.h: read llama.cpp GGUF files (versions 2 and 3, little endian), mmapped read-only.
// File = "GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv × (string key, u32 type, value)
//        | n_tensors × (string name, u32 n_dims, n_dims × i64 ne, u32 ggml_type, u64 offset)
//        | pad to general.alignment (default 32) | data (tensor i at data_start + offset_i).
// Strings are u64 length + UTF-8 bytes (no NUL); arrays are u32 element type + u64 count + items.
// ne[0] is the innermost (contiguous) dimension: a [rows, cols] PyTorch matrix has ne = {cols, rows}.
// Validation follows ggml's gguf_init_from_file_impl: magic, version, duplicate keys/tensor names,
// nested arrays, n_dims <= 4, non-negative dims, ne[0] a multiple of the type's block size, known
// types, offsets aligned, data inside the file and not overlapping. Errors name the file and the
// key or tensor.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "src/common.h"

namespace frugal {

enum class GGUFValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_value_type_name(GGUFValueType t);  // "UINT32", ...; "?" when unknown

// ggml tensor types (ggml.h enum ggml_type). Values are fixed by the file format.
enum class GGMLType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, Q2_K = 10,
  Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18,
  IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26,
  I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};
// Elements per block and bytes per block (ggml type traits); {0, 0} for an unknown value.
struct GGMLTypeTraits {
  const char* name;
  int64_t block_size;
  int64_t type_size;
};
GGMLTypeTraits ggml_type_traits(uint32_t type);  // name "?" and sizes 0 when unknown

// One metadata value. Scalars: integer types in `i` (UINT64 above INT64_MAX in `u`), floats in `f`,
// BOOL in `b`, STRING in `s`. Arrays: `array_type` and the items in ai / af / as (by item kind);
// `n` = item count. Nested arrays are rejected by the reader (as ggml does).
struct GGUFValue {
  GGUFValueType type = GGUFValueType::UINT8;
  GGUFValueType array_type = GGUFValueType::UINT8;
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0.0;
  bool b = false;
  std::string s;
  size_t n = 0;
  std::vector<int64_t> ai;       // integer and BOOL items
  std::vector<double> af;        // FLOAT32 / FLOAT64 items
  std::vector<std::string> as;   // STRING items
  bool is_integer() const;       // scalar of one of the 8 integer types
  bool is_float() const { return type == GGUFValueType::FLOAT32 || type == GGUFValueType::FLOAT64; }
};

struct GGUFTensorInfo {
  std::string name;
  uint32_t type = 0;             // GGMLType value
  std::vector<int64_t> ne;       // ggml order: ne[0] innermost
  uint64_t offset = 0;           // relative to the data section
  const uint8_t* data = nullptr; // into the mapping
  size_t nbytes = 0;
  int64_t numel() const;
  std::vector<int64_t> shape() const;  // row-major (PyTorch) order = reversed ne
  GGMLType ggml_type() const { return (GGMLType)type; }
};

class GGUFFile {
 public:
  explicit GGUFFile(const std::string& path);
  ~GGUFFile();
  GGUFFile(const GGUFFile&) = delete;
  GGUFFile& operator=(const GGUFFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_start_; }  // file offset of the data section
  size_t file_size() const { return size_; }

  const std::vector<std::string>& keys() const { return key_order_; }  // in file order
  const GGUFValue* find(const std::string& key) const;                // nullptr if absent
  bool has(const std::string& key) const { return find(key) != nullptr; }
  // Typed getters: a missing key or a value of the wrong type throws naming the file and the key.
  const GGUFValue& get(const std::string& key) const;
  int64_t get_int(const std::string& key) const;       // any integer type
  double get_float(const std::string& key) const;      // FLOAT32/FLOAT64 (integers accepted)
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;
  const std::vector<int64_t>& get_int_array(const std::string& key) const;    // integer items
  std::vector<double> get_float_array(const std::string& key) const;          // float or integer items
  // ...with a default when the key is absent (a wrong type still throws).
  int64_t get_int(const std::string& key, int64_t def) const { return has(key) ? get_int(key) : def; }
  double get_float(const std::string& key, double def) const { return has(key) ? get_float(key) : def; }
  bool get_bool(const std::string& key, bool def) const { return has(key) ? get_bool(key) : def; }
  std::string get_string(const std::string& key, const std::string& def) const {
    return has(key) ? get_string(key) : def;
  }

  const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }  // in file order
  const GGUFTensorInfo* find_tensor(const std::string& name) const;       // nullptr if absent
  const GGUFTensorInfo& tensor(const std::string& name) const;            // throws naming it

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t data_start_ = 0;
  std::vector<std::string> key_order_;
  std::map<std::string, GGUFValue> kv_;
  std::vector<GGUFTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
  void parse(const uint8_t* buf, size_t size);
};

}  // namespace frugal
