// safetensors.h: read (mmap, zero copy) and write Hugging Face .safetensors files (SPEC §1).
// File = [u64 LE N][N bytes UTF-8 JSON header, space padded][data buffer, little endian, row-major].
// The reader enforces every rule of the reference reader (huggingface/safetensors tensor.rs
// read_metadata + Metadata::validate) in its order; errors name the file and the tensor.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "src/common.h"

namespace frugal {

// The values follow the reference's Dtype enum order (increasing alignment), which the writer
// sorts by (descending), so the numeric order matters; code should use the names.
enum class DType {
  BOOL,
  F4,
  F6_E2M3,
  F6_E3M2,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  F8_E4M3FNUZ,
  F8_E5M2FNUZ,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};

const char* dtype_name(DType dt);                  // "BF16"
bool dtype_from_name(const std::string& s, DType* out);  // false if unknown
int dtype_bits(DType dt);                          // bits per element (F4: 4, F6_*: 6, BF16: 16)

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // [] = scalar, a 0 dimension = empty tensor
  const uint8_t* data = nullptr;  // into the file's read-only mapping (not necessarily aligned)
  size_t nbytes = 0;
  std::string file;  // path of the file holding it
  int64_t numel() const;
};

// One .safetensors file, mmapped read-only (MAP_PRIVATE) and validated on construction.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::vector<TensorView>& tensors() const { return tensors_; }  // sorted by data offset
  const TensorView* find(const std::string& name) const;             // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }
  size_t file_size() const { return size_; }
  size_t header_size() const { return header_n_; }  // N

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  size_t header_n_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// Validates an in-memory file image exactly like SafetensorsFile (which calls it on the mapping).
// `path` is only used in messages. Fills tensors (data pointing into buf), metadata, N.
void parse_safetensors(const uint8_t* buf, size_t size, const std::string& path,
                       std::vector<TensorView>* tensors, std::map<std::string, std::string>* metadata,
                       size_t* header_n);

// A model: a single .safetensors file, a directory with model.safetensors, or a directory with
// model.safetensors.index.json (sharded; a name in two shards is an error).
class SafetensorsModel {
 public:
  explicit SafetensorsModel(const std::string& dir_or_file);
  bool has(const std::string& name) const;
  const TensorView& get(const std::string& name) const;  // throws naming the tensor
  std::vector<std::string> names() const;                // sorted
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> by_name_;
};

// F32/BF16/F16 -> fp32 / bf16 (out has numel elements); other dtypes throw
// "unsupported dtype X for tensor Y in FILE".
void to_float(const TensorView& t, float* out);
void to_bf16(const TensorView& t, bf16* out);
// Throws "tensor Y in FILE has a non-finite value (NaN or Inf) at element i" when a F32/BF16/F16
// tensor holds one (an all-ones exponent); other dtypes pass. One read of the raw bytes.
void check_finite(const TensorView& t);

// Drops the (clean, file-backed) pages of a mapped range once its bytes have been converted, so
// loading or merging a model never holds the whole file resident beside its converted copy.
// Advisory: failure only costs memory. Later reads of the range still work (pages re-fault).
void release_mapped_pages(const void* data, size_t nbytes);

// Collects (name, dtype, shape, pointer) WITHOUT copying the data: buffers must stay alive until
// write(). Layout = reference writer: sorted by dtype alignment descending then name, offsets back
// to back, compact JSON with __metadata__ first, header space-padded to a multiple of 8.
class SafetensorsWriter {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const void* data;
    size_t nbytes;
  };
  void add(const std::string& name, DType dt, std::vector<int64_t> shape, const void* data, size_t nbytes);
  void set_metadata(std::map<std::string, std::string> m) { metadata_ = std::move(m); }
  // Writes <path>.tmp.<pid> then renames it to path.
  void write(const std::string& path) const;

  // Entries in file order (dtype alignment descending, then name).
  std::vector<const Entry*> sorted() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The padded JSON header for the given entries (in the given order), as write() produces it.
  std::string header(const std::vector<const Entry*>& entries) const;
  size_t total_bytes() const;  // sum of data bytes

 private:
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes dir/model.safetensors when the data is <= max_shard_bytes, else
// dir/model-0000k-of-0000n.safetensors (greedy fill in writer order, a tensor never split; one
// larger than the limit gets its own shard) plus dir/model.safetensors.index.json
// {"metadata":{"total_size":BYTES},"weight_map":{name:file}}. Removes weight files of another
// layout left in dir so readers cannot pick them up.
void write_sharded(const std::string& dir, const SafetensorsWriter& w,
                   size_t max_shard_bytes = 5'000'000'000ull);

// The streaming form behind write_sharded, for models too large to hold: `layout` declares the
// tensors (its entries' data pointers are never read) and write_tensor(entry, sink) produces each
// tensor's bytes, in file order, chunk by chunk through sink — exactly entry.nbytes in all (checked).
// Same files, sharding rule, index and stale-file removal as write_sharded; every file is written
// under a temporary name and renamed. Returns the names of the files written.
using TensorSink = std::function<void(const void* data, size_t nbytes)>;
std::vector<std::string> stream_model_files(
    const std::string& dir, const SafetensorsWriter& layout, size_t max_shard_bytes,
    const std::function<void(const SafetensorsWriter::Entry&, const TensorSink&)>& write_tensor);

}  // namespace frugal
