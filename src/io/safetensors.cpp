// safetensors.cpp: the safetensors reader (mmap + validation in the reference reader's order),
// F32/BF16/F16 conversions, the writer (reference layout, temp file + rename) and sharding.
#include "src/io/safetensors.h"

#include "src/io/atomic_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace frugal {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- dtypes --------------------------------------------------------------------------------
namespace {
struct DTypeInfo {
  DType dt;
  const char* name;
  int bits;
};
const DTypeInfo kDTypes[] = {
    {DType::BOOL, "BOOL", 8},       {DType::F4, "F4", 4},
    {DType::F6_E2M3, "F6_E2M3", 6}, {DType::F6_E3M2, "F6_E3M2", 6},
    {DType::U8, "U8", 8},           {DType::I8, "I8", 8},
    {DType::F8_E5M2, "F8_E5M2", 8}, {DType::F8_E4M3, "F8_E4M3", 8},
    {DType::F8_E8M0, "F8_E8M0", 8}, {DType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {DType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
    {DType::I16, "I16", 16},        {DType::U16, "U16", 16},
    {DType::F16, "F16", 16},        {DType::BF16, "BF16", 16},
    {DType::I32, "I32", 32},        {DType::U32, "U32", 32},
    {DType::F32, "F32", 32},        {DType::C64, "C64", 64},
    {DType::F64, "F64", 64},        {DType::I64, "I64", 64},
    {DType::U64, "U64", 64},
};
const DTypeInfo& info(DType dt) {
  for (const auto& d : kDTypes)
    if (d.dt == dt) return d;
  fail("safetensors: invalid DType value ", (int)dt);
}
}  // namespace

const char* dtype_name(DType dt) { return info(dt).name; }
int dtype_bits(DType dt) { return info(dt).bits; }
bool dtype_from_name(const std::string& s, DType* out) {
  for (const auto& d : kDTypes)
    if (s == d.name) {
      *out = d.dt;
      return true;
    }
  return false;
}

int64_t TensorView::numel() const {
  return shape_numel(shape);
}

// ---- parsing -------------------------------------------------------------------------------
namespace {

// Strict UTF-8 check (what Rust's str::from_utf8 accepts): no overlongs, no surrogates,
// nothing above U+10FFFF. Returns the offset of the first bad byte, or -1.
int64_t utf8_error_at(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    int len;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return (int64_t)i;
    }
    if (i + len > n) return (int64_t)i;
    if (s[i + 1] < lo || s[i + 1] > hi) return (int64_t)i;
    for (int k = 2; k < len; k++)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return (int64_t)i;
    i += len;
  }
  return -1;
}


// A non-negative JSON integer (what serde's usize accepts).
bool as_usize(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = (uint64_t)j.get<int64_t>();
    return true;
  }
  return false;
}

struct RawEntry {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  uint64_t begin, end;
};

}  // namespace

void parse_safetensors(const uint8_t* buf, size_t size, const std::string& path,
                       std::vector<TensorView>* tensors, std::map<std::string, std::string>* metadata,
                       size_t* header_n) {
  const std::string& P = path;
  // 1. at least the 8-byte length
  if (size < 8) fail(P, ": file is ", size, " bytes, too small for the 8-byte header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; i++) n |= (uint64_t)buf[i] << (8 * i);
  // 2. header size limit
  const uint64_t kMaxHeader = 100'000'000ull;
  if (n > kMaxHeader) fail(P, ": header length ", n, " exceeds the 100000000-byte limit (header too large)");
  // 3. 8 + N within the file (n <= 1e8, so no overflow here)
  if (n + 8 > size)
    fail(P, ": header length ", n, " runs past end of file (8 + ", n, " > file size ", size,
         "; truncated file?)");
  // 4. UTF-8
  const uint8_t* h = buf + 8;
  int64_t bad = utf8_error_at(h, (size_t)n);
  if (bad >= 0) fail(P, ": header is not valid UTF-8 (bad byte 0x", std::hex, (int)h[bad], std::dec, " at header offset ", bad, ")");
  // 5. JSON + schema. A raw NUL byte is never valid JSON (nlohmann would take it as the end of
  // input and ignore what follows), so reject it here.
  if (const void* z = std::memchr(h, 0, (size_t)n))
    fail(P, ": header is not valid JSON: NUL byte at header offset ", (const uint8_t*)z - h);
  if (n >= 3 && h[0] == 0xEF && h[1] == 0xBB && h[2] == 0xBF)  // nlohmann skips a BOM, serde does not
    fail(P, ": header is not valid JSON: it starts with a UTF-8 byte order mark");
  // The parser callback rejects duplicate keys and absurd nesting.
  std::vector<std::set<std::string>> keys_at_depth;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) -> bool {
    if (depth > 64) fail(P, ": header JSON nested deeper than 64 levels");
    if (ev == json::parse_event_t::object_start) {
      if ((int)keys_at_depth.size() < depth + 2) keys_at_depth.resize(depth + 2);
      keys_at_depth[depth + 1].clear();
    } else if (ev == json::parse_event_t::key) {
      if ((int)keys_at_depth.size() < depth + 1) keys_at_depth.resize(depth + 1);
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys_at_depth[depth].insert(k).second)
        fail(P, ": header JSON has duplicate key '", k, "'");
    }
    return true;
  };
  json j;
  try {
    j = json::parse(reinterpret_cast<const char*>(h), reinterpret_cast<const char*>(h) + n, cb);
  } catch (const json::exception& e) {
    fail(P, ": header is not valid JSON: ", e.what());
  }
  if (!j.is_object()) fail(P, ": header JSON is not an object");
  std::vector<RawEntry> raw;
  metadata->clear();
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (v.is_null()) continue;
      if (!v.is_object()) fail(P, ": __metadata__ is not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(P, ": __metadata__ key '", m.key(), "' is not a string (", m.value().type_name(), ")");
        (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string T = str(P, ": tensor '", name, "': ");
    if (!v.is_object()) fail(T, "header entry is not an object");
    RawEntry e;
    e.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end()) fail(T, "missing key 'dtype'");
    if (!dt->is_string()) fail(T, "'dtype' is not a string");
    if (!dtype_from_name(dt->get<std::string>(), &e.dtype))
      fail(T, "unknown dtype '", dt->get<std::string>(), "'");
    auto sh = v.find("shape");
    if (sh == v.end()) fail(T, "missing key 'shape'");
    if (!sh->is_array()) fail(T, "'shape' is not an array");
    for (const json& d : *sh) {
      uint64_t u;
      if (!as_usize(d, &u)) fail(T, "shape entry ", d.dump(), " is not a non-negative integer");
      if (u > (uint64_t)INT64_MAX) fail(T, "shape entry ", u, " does not fit in int64");
      e.shape.push_back(u);
    }
    auto off = v.find("data_offsets");
    if (off == v.end()) fail(T, "missing key 'data_offsets'");
    if (!off->is_array() || off->size() != 2) fail(T, "'data_offsets' is not an array of 2 integers");
    if (!as_usize((*off)[0], &e.begin) || !as_usize((*off)[1], &e.end))
      fail(T, "'data_offsets' ", off->dump(), " are not non-negative integers");
    raw.push_back(std::move(e));
  }
  // 6. offsets: sorted by (BEGIN, END) they must tile [0, end) with no gaps or overlaps.
  std::stable_sort(raw.begin(), raw.end(), [](const RawEntry& a, const RawEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t start = 0;
  for (size_t i = 0; i < raw.size(); i++) {
    const RawEntry& e = raw[i];
    const std::string T = str(P, ": tensor '", e.name, "': data_offsets [", e.begin, ", ", e.end, "]");
    if (e.end < e.begin) fail(T, " have END < BEGIN");
    if (e.begin != start) {
      if (i == 0) fail(T, " do not start at 0 (the first tensor's data must begin the data buffer)");
      if (e.begin > start) fail(T, " leave a gap: previous tensor '", raw[i - 1].name, "' ends at ", start);
      fail(T, " overlap previous tensor '", raw[i - 1].name, "' which ends at ", start);
    }
    start = e.end;
    uint64_t numel = 1;
    bool overflow = false;
    for (uint64_t d : e.shape) overflow |= __builtin_mul_overflow(numel, d, &numel);
    uint64_t nbits = 0;
    if (!overflow) overflow = __builtin_mul_overflow(numel, (uint64_t)dtype_bits(e.dtype), &nbits);
    if (overflow) fail(T, ": shape ", shape_str(e.shape), " of ", dtype_name(e.dtype), " overflows the element/bit count");
    if (nbits % 8 != 0)
      fail(T, ": shape ", shape_str(e.shape), " of ", dtype_name(e.dtype), " is ", nbits,
           " bits, not a whole number of bytes");
    if (e.end - e.begin != nbits / 8)
      fail(T, " hold ", e.end - e.begin, " bytes but shape ", shape_str(e.shape), " of ",
           dtype_name(e.dtype), " needs ", nbits / 8);
  }
  // 7. the data buffer must be covered exactly.
  uint64_t data_size = size - 8 - n;
  if (start != data_size) {
    if (start < data_size)
      fail(P, ": data buffer is ", data_size, " bytes but the tensors cover ", start, " (", data_size - start,
           " trailing bytes)");
    fail(P, ": tensors need ", start, " bytes of data but the data buffer holds only ", data_size,
         " (truncated file?)");
  }
  tensors->clear();
  for (const RawEntry& e : raw) {
    TensorView t;
    t.name = e.name;
    t.dtype = e.dtype;
    t.shape.assign(e.shape.begin(), e.shape.end());
    t.data = buf + 8 + n + e.begin;
    t.nbytes = (size_t)(e.end - e.begin);
    t.file = path;
    tensors->push_back(std::move(t));
  }
  *header_n = (size_t)n;
}

// ---- SafetensorsFile -----------------------------------------------------------------------
SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file");
  }
  size_ = (size_t)st.st_size;
  static const uint8_t kEmpty[1] = {0};
  const uint8_t* base = kEmpty;
  if (size_ > 0) {
    map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map_ == MAP_FAILED) {
      int err = errno;
      map_ = nullptr;
      ::close(fd);
      fail(path, ": mmap of ", size_, " bytes failed: ", std::strerror(err));
    }
    base = static_cast<const uint8_t*>(map_);
  }
  ::close(fd);  // the mapping stays valid
  try {
    parse_safetensors(base, size_, path_, &tensors_, &metadata_, &header_n_);
  } catch (...) {
    if (map_) ::munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
  for (size_t i = 0; i < tensors_.size(); i++) index_[tensors_[i].name] = i;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---- SafetensorsModel ----------------------------------------------------------------------
SafetensorsModel::SafetensorsModel(const std::string& dir_or_file) : path_(dir_or_file) {
  std::error_code ec;
  fs::path p(dir_or_file);
  fs::path index;
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "model.safetensors.index.json", ec)) {
      index = p / "model.safetensors.index.json";
    } else if (fs::exists(p / "model.safetensors", ec)) {
      files_.push_back(std::make_unique<SafetensorsFile>((p / "model.safetensors").string()));
    } else {
      fail(dir_or_file, ": no model.safetensors or model.safetensors.index.json in this directory");
    }
  } else if (p.filename().string().size() > 5 &&
             p.filename().string().substr(p.filename().string().size() - 5) == ".json") {
    index = p;
  } else {
    files_.push_back(std::make_unique<SafetensorsFile>(dir_or_file));
  }

  std::map<std::string, std::string> weight_map;  // tensor -> shard file name
  if (!index.empty()) {
    const std::string I = index.string();
    std::ifstream in(index);
    if (!in) fail(I, ": cannot open");
    json j;
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      fail(I, ": not valid JSON: ", e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail(I, ": missing object 'weight_map'");
    std::set<std::string> shard_names;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) fail(I, ": weight_map entry for tensor '", it.key(), "' is not a string");
      std::string f = it.value().get<std::string>();
      fs::path fp(f);
      if (f.empty() || fp.is_absolute() || f.find("..") != std::string::npos)
        fail(I, ": weight_map entry for tensor '", it.key(), "' names an invalid shard file '", f, "'");
      weight_map[it.key()] = f;
      shard_names.insert(f);
    }
    for (const std::string& f : shard_names)
      files_.push_back(std::make_unique<SafetensorsFile>((index.parent_path() / f).string()));
  }

  for (const auto& f : files_) {
    for (const TensorView& t : f->tensors()) {
      auto [it, inserted] = by_name_.emplace(t.name, &t);
      if (!inserted)
        fail(dir_or_file, ": tensor '", t.name, "' appears in both ", it->second->file, " and ", t.file);
    }
  }
  for (const auto& [name, file] : weight_map) {
    auto it = by_name_.find(name);
    std::string expect = (index.parent_path() / file).string();
    if (it == by_name_.end() || it->second->file != expect)
      fail(index.string(), ": weight_map says tensor '", name, "' is in ", file, " but that shard does not hold it");
  }
}

bool SafetensorsModel::has(const std::string& name) const { return by_name_.count(name) != 0; }

const TensorView& SafetensorsModel::get(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) fail(path_, ": no tensor named '", name, "'");
  return *it->second;
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> r;
  for (const auto& kv : by_name_) r.push_back(kv.first);
  return r;
}

// ---- conversions ---------------------------------------------------------------------------
// Element loads go through memcpy: a tensor's data need not be aligned in a foreign file.
void to_float(const TensorView& t, float* out) {
  const int64_t n = t.numel();
  if (n == 0) return;  // an empty tensor: out may be null, and memcpy(null, ..., 0) is undefined
  const uint8_t* src = t.data;
  switch (t.dtype) {
    case DType::F32:
      std::memcpy(out, src, (size_t)n * 4);
      return;
    case DType::BF16:
#pragma omp parallel for schedule(static) if (n > (1 << 16))
      for (int64_t i = 0; i < n; i++) {
        uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        out[i] = fm::bf16_bits_to_float(b);
      }
      return;
    case DType::F16:
#pragma omp parallel for schedule(static) if (n > (1 << 16))
      for (int64_t i = 0; i < n; i++) {
        uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        out[i] = fm::f16_bits_to_float(b);
      }
      return;
    default:
      fail("unsupported dtype ", dtype_name(t.dtype), " for tensor '", t.name, "' in ", t.file,
           " (to_float reads F32, BF16, F16)");
  }
}

namespace {
// true where the element's exponent bits are all ones: Inf or NaN in F32, BF16 and F16 alike
bool nonfinite_at(const uint8_t* src, DType dt, int64_t i) {
  if (dt == DType::F32) {
    uint32_t b;
    std::memcpy(&b, src + 4 * i, 4);
    return (b & 0x7F800000u) == 0x7F800000u;
  }
  uint16_t b;
  std::memcpy(&b, src + 2 * i, 2);
  return dt == DType::BF16 ? (b & 0x7F80u) == 0x7F80u : (b & 0x7C00u) == 0x7C00u;
}
}  // namespace

void check_finite(const TensorView& t) {
  if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16) return;
  const int64_t n = t.numel();
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (n > (1 << 16))
  for (int64_t i = 0; i < n; i++) bad |= nonfinite_at(t.data, t.dtype, i) ? 1 : 0;
  if (!bad) return;
  int64_t first = 0;  // the error path only: find the first one to name it
  while (!nonfinite_at(t.data, t.dtype, first)) first++;
  fail("tensor ", t.name, " in ", t.file, " has a non-finite value (NaN or Inf) at element ", first,
       "; the weights are corrupt or were saved after a diverged run");
}

void to_bf16(const TensorView& t, bf16* out) {
  const int64_t n = t.numel();
  const uint8_t* src = t.data;
  switch (t.dtype) {
    case DType::BF16:
      std::memcpy(out, src, (size_t)n * 2);
      return;
    case DType::F32:
#pragma omp parallel for schedule(static) if (n > (1 << 16))
      for (int64_t i = 0; i < n; i++) {
        float f;
        std::memcpy(&f, src + 4 * i, 4);
        out[i].bits = fm::float_to_bf16_bits(f);
      }
      return;
    case DType::F16:
#pragma omp parallel for schedule(static) if (n > (1 << 16))
      for (int64_t i = 0; i < n; i++) {
        uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        out[i].bits = fm::float_to_bf16_bits(fm::f16_bits_to_float(b));
      }
      return;
    default:
      fail("unsupported dtype ", dtype_name(t.dtype), " for tensor '", t.name, "' in ", t.file,
           " (to_bf16 reads F32, BF16, F16)");
  }
}

// ---- writer --------------------------------------------------------------------------------
namespace {
// JSON string exactly as serde_json writes it (compact; non-ASCII kept as UTF-8).
void json_string(std::string& o, const std::string& s) {
  o += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\b': o += "\\b"; break;
      case '\f': o += "\\f"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += (char)c;
        }
    }
  }
  o += '"';
}

}  // namespace

void SafetensorsWriter::add(const std::string& name, DType dt, std::vector<int64_t> shape, const void* data,
                            size_t nbytes) {
  if (name == "__metadata__") fail("safetensors writer: '__metadata__' cannot be a tensor name");
  if (utf8_error_at(reinterpret_cast<const uint8_t*>(name.data()), name.size()) >= 0)
    fail("safetensors writer: tensor name '", name, "' is not valid UTF-8");
  for (const Entry& e : entries_)
    if (e.name == name) fail("safetensors writer: tensor '", name, "' added twice");
  uint64_t numel = 1;
  bool overflow = false;
  for (int64_t d : shape) {
    if (d < 0) fail("safetensors writer: tensor '", name, "' has a negative dimension ", d);
    overflow |= __builtin_mul_overflow(numel, (uint64_t)d, &numel);
  }
  uint64_t nbits = 0;
  if (!overflow) overflow = __builtin_mul_overflow(numel, (uint64_t)dtype_bits(dt), &nbits);
  if (overflow || nbits % 8 != 0 || nbits / 8 != nbytes)
    fail("safetensors writer: tensor '", name, "': ", nbytes, " bytes given but ", dtype_name(dt),
         " with ", numel, " elements needs ", (double)nbits / 8);
  if (nbytes && !data) fail("safetensors writer: tensor '", name, "' has no data");
  entries_.push_back(Entry{name, dt, std::move(shape), data, nbytes});
}

std::vector<const SafetensorsWriter::Entry*> SafetensorsWriter::sorted() const {
  std::vector<const Entry*> r;
  for (const Entry& e : entries_) r.push_back(&e);
  std::sort(r.begin(), r.end(), [](const Entry* a, const Entry* b) {
    if (a->dtype != b->dtype) return (int)a->dtype > (int)b->dtype;
    return a->name < b->name;  // byte-wise, like Rust's String ordering
  });
  return r;
}

size_t SafetensorsWriter::total_bytes() const {
  size_t s = 0;
  for (const Entry& e : entries_) s += e.nbytes;
  return s;
}

std::string SafetensorsWriter::header(const std::vector<const Entry*>& entries) const {
  std::string o = "{";
  bool first = true;
  if (!metadata_.empty()) {
    o += "\"__metadata__\":{";
    bool f2 = true;
    for (const auto& [k, v] : metadata_) {
      if (!f2) o += ',';
      f2 = false;
      json_string(o, k);
      o += ':';
      json_string(o, v);
    }
    o += '}';
    first = false;
  }
  size_t off = 0;
  for (const Entry* e : entries) {
    if (!first) o += ',';
    first = false;
    json_string(o, e->name);
    o += ":{\"dtype\":\"";
    o += dtype_name(e->dtype);
    o += "\",\"shape\":[";
    for (size_t i = 0; i < e->shape.size(); i++) {
      if (i) o += ',';
      o += std::to_string(e->shape[i]);
    }
    o += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + e->nbytes) + "]}";
    off += e->nbytes;
  }
  o += '}';
  o.append((8 - o.size() % 8) % 8, ' ');
  return o;
}

namespace {
void write_u64_le(AtomicFile& f, uint64_t n) {
  uint8_t le[8];
  for (int i = 0; i < 8; i++) le[i] = (uint8_t)(n >> (8 * i));
  f.write(le, 8);
}

// Greedy fill in file order; a tensor larger than the limit gets a shard of its own.
std::vector<std::vector<const SafetensorsWriter::Entry*>> plan_shards(const SafetensorsWriter& w, size_t max_shard_bytes) {
  std::vector<std::vector<const SafetensorsWriter::Entry*>> shards;
  if (w.total_bytes() <= max_shard_bytes) {
    shards.push_back(w.sorted());
    return shards;
  }
  size_t cur = 0;
  for (const auto* e : w.sorted()) {
    if (shards.empty() || (cur + e->nbytes > max_shard_bytes && cur > 0)) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(e);
    cur += e->nbytes;
  }
  return shards;
}

bool is_weight_file(const std::string& fn) {
  return fn == "model.safetensors.index.json" ||
         (fn.rfind("model", 0) == 0 && fn.size() > 12 && fn.substr(fn.size() - 12) == ".safetensors");
}
}  // namespace

void release_mapped_pages(const void* data, size_t nbytes) {
  if (!nbytes) return;
  const uintptr_t page = (uintptr_t)::sysconf(_SC_PAGESIZE);
  const uintptr_t lo = (uintptr_t)data / page * page, hi = ((uintptr_t)data + nbytes + page - 1) / page * page;
  ::madvise((void*)lo, hi - lo, MADV_DONTNEED);
}

void SafetensorsWriter::write(const std::string& path) const {
  const auto entries = sorted();
  const std::string hdr = header(entries);
  AtomicFile f(path);
  write_u64_le(f, hdr.size());
  f.write(hdr.data(), hdr.size());
  for (const auto* e : entries) f.write(e->data, e->nbytes);
  f.commit();
}

std::vector<std::string> stream_model_files(
    const std::string& dir, const SafetensorsWriter& layout, size_t max_shard_bytes,
    const std::function<void(const SafetensorsWriter::Entry&, const TensorSink&)>& write_tensor) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir)) fail(dir, ": cannot create directory");
  const fs::path d(dir);
  const auto shards = plan_shards(layout, max_shard_bytes);
  const size_t ns = shards.size();
  if (ns > 99999) fail(dir, ": ", ns, " shards exceed the 5-digit shard naming");
  std::vector<std::string> written;
  json weight_map = json::object();
  for (size_t k = 0; k < ns; k++) {
    char name[64];
    if (ns == 1)
      std::snprintf(name, sizeof name, "model.safetensors");
    else
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k + 1, ns);
    const std::string hdr = layout.header(shards[k]);
    AtomicFile f((d / name).string());
    write_u64_le(f, hdr.size());
    f.write(hdr.data(), hdr.size());
    for (const auto* e : shards[k]) {
      size_t got = 0;
      const TensorSink sink = [&](const void* data, size_t n) {
        got += n;
        if (got > e->nbytes) fail(f.path(), ": tensor '", e->name, "' produced more than its ", e->nbytes, " bytes");
        f.write(data, n);
      };
      write_tensor(*e, sink);
      if (got != e->nbytes) fail(f.path(), ": tensor '", e->name, "' produced ", got, " of its ", e->nbytes, " bytes");
      weight_map[e->name] = name;
    }
    f.commit();
    written.push_back(name);
  }
  if (ns > 1) {
    json index = {{"metadata", {{"total_size", layout.total_bytes()}}}, {"weight_map", weight_map}};
    write_file_atomic((d / "model.safetensors.index.json").string(), index.dump(2) + "\n");  // sorted keys, like transformers
    written.push_back("model.safetensors.index.json");
  }
  for (const auto& de : fs::directory_iterator(d)) {
    const std::string fn = de.path().filename().string();
    if (is_weight_file(fn) && std::find(written.begin(), written.end(), fn) == written.end()) fs::remove(de.path(), ec);
  }
  return written;
}

void write_sharded(const std::string& dir, const SafetensorsWriter& w, size_t max_shard_bytes) {
  stream_model_files(dir, w, max_shard_bytes,
                     [](const SafetensorsWriter::Entry& e, const TensorSink& sink) { sink(e.data, e.nbytes); });
}

}  // namespace frugal
