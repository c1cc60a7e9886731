// gguf.cpp: the GGUF reader (see gguf.h for the layout). Every read is bounds-checked against the
// file size before it happens, so a truncated or lying file gives an error, never a crash.
#include "src/io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace frugal {

const char* gguf_value_type_name(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::UINT8: return "UINT8";
    case GGUFValueType::INT8: return "INT8";
    case GGUFValueType::UINT16: return "UINT16";
    case GGUFValueType::INT16: return "INT16";
    case GGUFValueType::UINT32: return "UINT32";
    case GGUFValueType::INT32: return "INT32";
    case GGUFValueType::FLOAT32: return "FLOAT32";
    case GGUFValueType::BOOL: return "BOOL";
    case GGUFValueType::STRING: return "STRING";
    case GGUFValueType::ARRAY: return "ARRAY";
    case GGUFValueType::UINT64: return "UINT64";
    case GGUFValueType::INT64: return "INT64";
    case GGUFValueType::FLOAT64: return "FLOAT64";
  }
  return "?";
}

GGMLTypeTraits ggml_type_traits(uint32_t type) {
  // ggml.c type_traits: (blck_size, type_size). QK_K = 256.
  switch ((GGMLType)type) {
    case GGMLType::F32: return {"F32", 1, 4};
    case GGMLType::F16: return {"F16", 1, 2};
    case GGMLType::Q4_0: return {"Q4_0", 32, 18};
    case GGMLType::Q4_1: return {"Q4_1", 32, 20};
    case GGMLType::Q5_0: return {"Q5_0", 32, 22};
    case GGMLType::Q5_1: return {"Q5_1", 32, 24};
    case GGMLType::Q8_0: return {"Q8_0", 32, 34};
    case GGMLType::Q8_1: return {"Q8_1", 32, 36};
    case GGMLType::Q2_K: return {"Q2_K", 256, 84};
    case GGMLType::Q3_K: return {"Q3_K", 256, 110};
    case GGMLType::Q4_K: return {"Q4_K", 256, 144};
    case GGMLType::Q5_K: return {"Q5_K", 256, 176};
    case GGMLType::Q6_K: return {"Q6_K", 256, 210};
    case GGMLType::Q8_K: return {"Q8_K", 256, 292};
    case GGMLType::IQ2_XXS: return {"IQ2_XXS", 256, 66};
    case GGMLType::IQ2_XS: return {"IQ2_XS", 256, 74};
    case GGMLType::IQ3_XXS: return {"IQ3_XXS", 256, 98};
    case GGMLType::IQ1_S: return {"IQ1_S", 256, 50};
    case GGMLType::IQ4_NL: return {"IQ4_NL", 32, 18};
    case GGMLType::IQ3_S: return {"IQ3_S", 256, 110};
    case GGMLType::IQ2_S: return {"IQ2_S", 256, 82};
    case GGMLType::IQ4_XS: return {"IQ4_XS", 256, 136};
    case GGMLType::I8: return {"I8", 1, 1};
    case GGMLType::I16: return {"I16", 1, 2};
    case GGMLType::I32: return {"I32", 1, 4};
    case GGMLType::I64: return {"I64", 1, 8};
    case GGMLType::F64: return {"F64", 1, 8};
    case GGMLType::IQ1_M: return {"IQ1_M", 256, 56};
    case GGMLType::BF16: return {"BF16", 1, 2};
    case GGMLType::TQ1_0: return {"TQ1_0", 256, 54};
    case GGMLType::TQ2_0: return {"TQ2_0", 256, 66};
    case GGMLType::MXFP4: return {"MXFP4", 32, 17};
  }
  return {"?", 0, 0};
}

bool GGUFValue::is_integer() const {
  switch (type) {
    case GGUFValueType::UINT8: case GGUFValueType::INT8: case GGUFValueType::UINT16:
    case GGUFValueType::INT16: case GGUFValueType::UINT32: case GGUFValueType::INT32:
    case GGUFValueType::UINT64: case GGUFValueType::INT64:
      return true;
    default:
      return false;
  }
}

int64_t GGUFTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::vector<int64_t> GGUFTensorInfo::shape() const { return std::vector<int64_t>(ne.rbegin(), ne.rend()); }

// ---- parsing ------------------------------------------------------------------------------------
namespace {

constexpr uint64_t kMaxName = 64;  // GGML_MAX_NAME: ggml rejects tensor names of 64+ bytes
constexpr uint32_t kMaxDims = 4;   // GGML_MAX_DIMS

// Sequential bounds-checked reader over the mapping; `what` names the item being read.
struct Cursor {
  const uint8_t* buf;
  size_t size, pos = 0;
  const std::string& path;
  void need(size_t n, const std::string& what) const {
    if (n > size - pos)
      fail(path, ": truncated GGUF file: ", what, " needs ", n, " bytes at offset ", pos, " but the file has ",
           size, " bytes");
  }
  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, buf + pos, sizeof(T));  // GGUF is little endian, as is every supported host
    pos += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& what) {
    const uint64_t n = read<uint64_t>(what + " (string length)");
    need(n, what + " (string of " + std::to_string(n) + " bytes)");
    std::string s((const char*)buf + pos, (size_t)n);
    pos += n;
    return s;
  }
};

size_t value_size(GGUFValueType t) {  // bytes of a fixed-size scalar, 0 for STRING/ARRAY/unknown
  switch (t) {
    case GGUFValueType::UINT8: case GGUFValueType::INT8: case GGUFValueType::BOOL: return 1;
    case GGUFValueType::UINT16: case GGUFValueType::INT16: return 2;
    case GGUFValueType::UINT32: case GGUFValueType::INT32: case GGUFValueType::FLOAT32: return 4;
    case GGUFValueType::UINT64: case GGUFValueType::INT64: case GGUFValueType::FLOAT64: return 8;
    default: return 0;
  }
}

bool known_value_type(uint32_t t) { return t <= (uint32_t)GGUFValueType::FLOAT64; }

// Reads one scalar of type t; integers into *i (and *u), floats into *f, bool into *b.
void read_scalar(Cursor& c, GGUFValueType t, const std::string& what, int64_t* i, uint64_t* u, double* f, bool* b) {
  switch (t) {
    case GGUFValueType::UINT8: *u = c.read<uint8_t>(what); *i = (int64_t)*u; break;
    case GGUFValueType::INT8: *i = c.read<int8_t>(what); *u = (uint64_t)*i; break;
    case GGUFValueType::UINT16: *u = c.read<uint16_t>(what); *i = (int64_t)*u; break;
    case GGUFValueType::INT16: *i = c.read<int16_t>(what); *u = (uint64_t)*i; break;
    case GGUFValueType::UINT32: *u = c.read<uint32_t>(what); *i = (int64_t)*u; break;
    case GGUFValueType::INT32: *i = c.read<int32_t>(what); *u = (uint64_t)*i; break;
    case GGUFValueType::UINT64: *u = c.read<uint64_t>(what); *i = (int64_t)*u; break;
    case GGUFValueType::INT64: *i = c.read<int64_t>(what); *u = (uint64_t)*i; break;
    case GGUFValueType::FLOAT32: *f = c.read<float>(what); break;
    case GGUFValueType::FLOAT64: *f = c.read<double>(what); break;
    case GGUFValueType::BOOL: {
      const uint8_t v = c.read<uint8_t>(what);
      if (v > 1) fail(c.path, ": ", what, ": BOOL value ", (int)v, " is neither 0 nor 1");
      *b = v != 0;
      *i = v;
      break;
    }
    default: fail(c.path, ": ", what, ": internal: not a scalar type");
  }
}

}  // namespace

void GGUFFile::parse(const uint8_t* buf, size_t size) {
  Cursor c{buf, size, 0, path_};
  if (size < 4 || std::memcmp(buf, "GGUF", 4) != 0) {
    std::string got;
    for (size_t k = 0; k < std::min<size_t>(4, size); ++k) got += str(std::hex, (int)buf[k], " ");
    fail(path_, ": not a GGUF file (bad magic: expected 47 47 55 46 \"GGUF\", got ", got.empty() ? "nothing" : got, ")");
  }
  c.pos = 4;
  version_ = c.read<uint32_t>("header version");
  if (version_ == 1) fail(path_, ": GGUF version 1 is not supported (versions 2 and 3 are)");
  if ((version_ & 0xFFFF) == 0 && version_ != 0)
    fail(path_, ": GGUF version field ", version_, " looks byte-swapped: big-endian GGUF files are not supported");
  if (version_ != 2 && version_ != 3) fail(path_, ": unsupported GGUF version ", version_, " (supported: 2, 3)");
  const uint64_t n_tensors = c.read<uint64_t>("header tensor count");
  const uint64_t n_kv = c.read<uint64_t>("header metadata count");
  // Each key-value takes at least 8+4+1 bytes and each tensor info 8+4+4+8 bytes: reject counts
  // the file cannot hold before reserving anything.
  if (n_kv > size / 13) fail(path_, ": header metadata count ", n_kv, " cannot fit in a file of ", size, " bytes");
  if (n_tensors > size / 24) fail(path_, ": header tensor count ", n_tensors, " cannot fit in a file of ", size, " bytes");

  // ---- metadata ----
  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string key = c.read_string(str("metadata key #", k));
    const std::string what = "metadata key '" + key + "'";
    if (kv_.count(key)) fail(path_, ": duplicate ", what);
    const uint32_t t = c.read<uint32_t>(what + " (type)");
    if (!known_value_type(t)) fail(path_, ": ", what, " has unknown value type ", t);
    GGUFValue v;
    v.type = (GGUFValueType)t;
    if (v.type == GGUFValueType::STRING) {
      v.s = c.read_string(what);
    } else if (v.type == GGUFValueType::ARRAY) {
      const uint32_t at = c.read<uint32_t>(what + " (array item type)");
      if (!known_value_type(at)) fail(path_, ": ", what, " has unknown array item type ", at);
      v.array_type = (GGUFValueType)at;
      if (v.array_type == GGUFValueType::ARRAY) fail(path_, ": ", what, ": nested arrays are not supported");
      const uint64_t n = c.read<uint64_t>(what + " (array length)");
      const size_t item = v.array_type == GGUFValueType::STRING ? 8 : value_size(v.array_type);
      if (n > (size - c.pos) / item)
        fail(path_, ": truncated GGUF file: ", what, " declares ", n, " items of ", gguf_value_type_name(v.array_type),
             " but only ", size - c.pos, " bytes remain");
      v.n = (size_t)n;
      if (v.array_type == GGUFValueType::STRING) {
        v.as.reserve(v.n);
        for (size_t j = 0; j < v.n; ++j) v.as.push_back(c.read_string(str(what, " item ", j)));
      } else if (v.array_type == GGUFValueType::FLOAT32 || v.array_type == GGUFValueType::FLOAT64) {
        v.af.resize(v.n);
        for (size_t j = 0; j < v.n; ++j) {
          int64_t i; uint64_t u; bool b;
          read_scalar(c, v.array_type, what, &i, &u, &v.af[j], &b);
        }
      } else {
        v.ai.resize(v.n);
        for (size_t j = 0; j < v.n; ++j) {
          uint64_t u; double f; bool b;
          read_scalar(c, v.array_type, what, &v.ai[j], &u, &f, &b);
        }
      }
    } else {
      read_scalar(c, v.type, what, &v.i, &v.u, &v.f, &v.b);
    }
    key_order_.push_back(key);
    kv_.emplace(key, std::move(v));
  }

  // general.alignment: UINT32, a non-zero power of two (ggml's rule).
  if (const GGUFValue* a = find("general.alignment")) {
    if (a->type != GGUFValueType::UINT32)
      fail(path_, ": metadata key 'general.alignment' must be UINT32, got ", gguf_value_type_name(a->type));
    if (a->u == 0 || (a->u & (a->u - 1)) != 0)
      fail(path_, ": metadata key 'general.alignment' = ", a->u, " is not a power of two");
    alignment_ = (size_t)a->u;
  }

  // ---- tensor infos ----
  tensors_.reserve((size_t)n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GGUFTensorInfo ti;
    ti.name = c.read_string(str("tensor info #", k, " name"));
    const std::string what = "tensor '" + ti.name + "'";
    if (ti.name.size() >= kMaxName) fail(path_, ": ", what, ": name is longer than ", kMaxName - 1, " bytes");
    if (tensor_index_.count(ti.name)) fail(path_, ": duplicate ", what);
    const uint32_t nd = c.read<uint32_t>(what + " (n_dims)");
    if (nd > kMaxDims) fail(path_, ": ", what, " has ", nd, " dimensions (at most ", kMaxDims, ")");
    int64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const int64_t ne = c.read<int64_t>(what + " (dimension)");
      if (ne < 0) fail(path_, ": ", what, " has negative dimension ", ne);
      if (ne > 0 && numel > INT64_MAX / ne) fail(path_, ": ", what, ": element count overflows");
      numel *= ne;
      ti.ne.push_back(ne);
    }
    ti.type = c.read<uint32_t>(what + " (type)");
    const GGMLTypeTraits tr = ggml_type_traits(ti.type);
    if (tr.block_size == 0) fail(path_, ": ", what, " has unknown ggml type ", ti.type);
    const int64_t ne0 = ti.ne.empty() ? 1 : ti.ne[0];
    if (ne0 % tr.block_size != 0)
      fail(path_, ": ", what, " of type ", tr.name, ": row length ", ne0, " is not a multiple of the block size ",
           tr.block_size);
    if (numel / tr.block_size > INT64_MAX / tr.type_size) fail(path_, ": ", what, ": byte size overflows");
    ti.nbytes = (size_t)(numel / tr.block_size * tr.type_size);
    ti.offset = c.read<uint64_t>(what + " (data offset)");
    if (ti.offset % alignment_ != 0)
      fail(path_, ": ", what, " data offset ", ti.offset, " is not a multiple of the alignment ", alignment_);
    tensor_index_[ti.name] = tensors_.size();
    tensors_.push_back(std::move(ti));
  }

  // ---- data section: starts at the next multiple of the alignment ----
  data_start_ = (c.pos + alignment_ - 1) / alignment_ * alignment_;
  if (!tensors_.empty() && data_start_ > size)
    fail(path_, ": truncated GGUF file: data section would start at ", data_start_, " past the end (", size, " bytes)");
  std::vector<const GGUFTensorInfo*> by_off;
  for (GGUFTensorInfo& ti : tensors_) {
    const size_t avail = size >= data_start_ ? size - data_start_ : 0;
    if (ti.offset > avail || ti.nbytes > avail - ti.offset)
      fail(path_, ": tensor '", ti.name, "' data [", data_start_ + ti.offset, ", ", data_start_ + ti.offset + ti.nbytes,
           ") lies past the end of the file (", size, " bytes)");
    ti.data = buf + data_start_ + ti.offset;
    by_off.push_back(&ti);
  }
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_off.size(); ++k)
    if (by_off[k - 1]->offset + by_off[k - 1]->nbytes > by_off[k]->offset)
      fail(path_, ": tensors '", by_off[k - 1]->name, "' and '", by_off[k]->name, "' overlap in the data section");
}

GGUFFile::GGUFFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(e));
  }
  size_ = (size_t)st.st_size;
  if (size_ > 0) {
    map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int e = errno;
    ::close(fd);
    if (map_ == MAP_FAILED) {
      map_ = nullptr;
      fail(path, ": mmap failed: ", std::strerror(e));
    }
  } else {
    ::close(fd);
  }
  static const uint8_t empty = 0;
  try {
    parse(map_ ? (const uint8_t*)map_ : &empty, size_);
  } catch (...) {
    if (map_) ::munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

GGUFFile::~GGUFFile() {
  if (map_) ::munmap(map_, size_);
}

// ---- lookups ------------------------------------------------------------------------------------
const GGUFValue* GGUFFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const GGUFValue& GGUFFile::get(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) fail(path_, ": metadata key '", key, "' is missing");
  return *v;
}

int64_t GGUFFile::get_int(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (!v.is_integer())
    fail(path_, ": metadata key '", key, "' must be an integer, got ", gguf_value_type_name(v.type));
  if (v.type == GGUFValueType::UINT64 && v.u > (uint64_t)INT64_MAX)
    fail(path_, ": metadata key '", key, "' = ", v.u, " is out of range");
  return v.i;
}

double GGUFFile::get_float(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (v.is_float()) return v.f;
  if (v.is_integer()) return (double)v.i;
  fail(path_, ": metadata key '", key, "' must be a number, got ", gguf_value_type_name(v.type));
}

bool GGUFFile::get_bool(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (v.type != GGUFValueType::BOOL)
    fail(path_, ": metadata key '", key, "' must be BOOL, got ", gguf_value_type_name(v.type));
  return v.b;
}

const std::string& GGUFFile::get_string(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (v.type != GGUFValueType::STRING)
    fail(path_, ": metadata key '", key, "' must be STRING, got ", gguf_value_type_name(v.type));
  return v.s;
}

const std::vector<std::string>& GGUFFile::get_string_array(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (v.type != GGUFValueType::ARRAY || v.array_type != GGUFValueType::STRING)
    fail(path_, ": metadata key '", key, "' must be an ARRAY of STRING");
  return v.as;
}

const std::vector<int64_t>& GGUFFile::get_int_array(const std::string& key) const {
  const GGUFValue& v = get(key);
  const bool ok = v.type == GGUFValueType::ARRAY && v.array_type != GGUFValueType::STRING &&
                  v.array_type != GGUFValueType::FLOAT32 && v.array_type != GGUFValueType::FLOAT64;
  if (!ok) fail(path_, ": metadata key '", key, "' must be an ARRAY of integers");
  return v.ai;
}

std::vector<double> GGUFFile::get_float_array(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (v.type != GGUFValueType::ARRAY || v.array_type == GGUFValueType::STRING)
    fail(path_, ": metadata key '", key, "' must be an ARRAY of numbers");
  if (!v.af.empty() || v.n == 0) return v.af;
  return std::vector<double>(v.ai.begin(), v.ai.end());
}

const GGUFTensorInfo* GGUFFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GGUFTensorInfo& GGUFFile::tensor(const std::string& name) const {
  const GGUFTensorInfo* t = find_tensor(name);
  if (!t) fail(path_, ": tensor '", name, "' is missing");
  return *t;
}

}  // namespace frugal
