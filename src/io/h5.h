// h5.h: thin HDF5 layer for datasets and checkpoints (serial API of the parallel HDF5 build).
// H5_CHECK(stmt) turns a negative hid_t/herr_t into frugal::Error carrying the statement,
// file:line and the HDF5 error stack (API-level message and its innermost cause, via H5Ewalk2);
// HDF5's own automatic stderr printing is switched off. H5File wraps one file with typed
// read/write helpers whose errors name the file and the dataset/attribute.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "src/common.h"

namespace frugal::h5 {

// Switch off HDF5's default error printing (idempotent; every H5File entry point calls it).
void init();

// "H5Fopen(): unable to open file <- H5FD_sec2_open(): ... file signature not found" or "".
// Clears the HDF5 error stack.
std::string error_stack_message();

[[noreturn]] void fail_call(const char* stmt, const char* file, int line);

template <class T>
inline T check(T v, const char* stmt, const char* file, int line) {
  if (v < 0) fail_call(stmt, file, line);
  return v;
}

}  // namespace frugal::h5

// H5_CHECK(stmt): evaluates stmt once; a negative result throws frugal::Error; else yields it.
//   hid_t f = H5_CHECK(H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT));
#define H5_CHECK(stmt) ::frugal::h5::check((stmt), #stmt, __FILE__, __LINE__)

namespace frugal::h5 {

// RAII owner of one HDF5 identifier (file, group, dataset, dataspace, datatype, attribute,
// property list); closes it with the matching H5?close. Never wrap predefined types.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  ~Handle() { reset(); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(o.id_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) { reset(); id_ = o.id_; o.id_ = -1; }
    return *this;
  }
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  void reset();      // close (errors ignored: destructors must not throw)
  herr_t close();    // close and report the status (for files: the final flush can fail)

 private:
  hid_t id_ = -1;
};

// Element types the helpers read and write; kind_of<T>() maps a C++ type to its Kind.
enum class Kind { I32, I64, U8, U64, F32, F64, OTHER };
const char* kind_name(Kind k);
template <class T> constexpr Kind kind_of();
template <> constexpr Kind kind_of<int32_t>() { return Kind::I32; }
template <> constexpr Kind kind_of<int64_t>() { return Kind::I64; }
template <> constexpr Kind kind_of<uint8_t>() { return Kind::U8; }
template <> constexpr Kind kind_of<uint64_t>() { return Kind::U64; }
template <> constexpr Kind kind_of<float>() { return Kind::F32; }
template <> constexpr Kind kind_of<double>() { return Kind::F64; }

struct DatasetInfo {
  Kind kind = Kind::OTHER;        // exact little/big-endian-agnostic class+size+sign match
  std::string type_desc;          // "int32", "float64", "string", "compound", ...
  std::vector<int64_t> shape;     // [] = scalar
  int64_t numel() const;
};

class H5File {
 public:
  static H5File create(const std::string& path);                 // truncates an existing file
  static H5File open(const std::string& path, bool writable = false);
  H5File() = default;
  H5File(H5File&&) = default;
  H5File& operator=(H5File&&) = default;

#ifdef H5_HAVE_PARALLEL
  // ---- addition: parallel files (MPI-IO driver). Collective over comm: every rank of comm calls
  // them, and every metadata operation afterwards (create_dataset, set_attr, close) must be made
  // by every rank in the same order with the same arguments (HDF5's parallel rules). Same 1.8
  // object format as create().
  static H5File create_parallel(const std::string& path, MPI_Comm comm);
  static H5File open_parallel(const std::string& path, MPI_Comm comm);
#endif
  // ---- addition: dataset handles for partial (hyperslab) I/O. create_dataset makes a contiguous
  // dataset of `shape` (intermediate groups created) WITHOUT writing a fill value: the caller
  // writes every element. open_dataset opens an existing one (error naming file and dataset).
  template <class T>
  Handle create_dataset(const std::string& name, const std::vector<int64_t>& shape);
  Handle open_dataset(const std::string& name) const;

  const std::string& path() const { return path_; }
  hid_t id() const { return f_.get(); }
  void flush();
  void close();  // flush + close, errors thrown (the destructor closes silently)

  // ---- datasets: name is an absolute or root-relative path; intermediate groups are created.
  template <class T>
  void write(const std::string& name, const T* data, const std::vector<int64_t>& shape);
  bool exists(const std::string& name) const;        // a link of that name (any object type)
  DatasetInfo info(const std::string& name) const;   // error if not a dataset
  // Reads the whole dataset; the stored type must be exactly T (else error naming both).
  template <class T>
  std::vector<T> read(const std::string& name, std::vector<int64_t>* shape = nullptr) const;
  // Reads into out[numel]; stored type must be T and shape exactly `shape`.
  template <class T>
  void read_into(const std::string& name, T* out, const std::vector<int64_t>& shape) const;
  std::vector<std::string> list(const std::string& group) const;  // link names, sorted

  // ---- attributes on an object (default: the root group) ----
  void set_attr(const std::string& key, int64_t v, const std::string& obj = "/");
  void set_attr(const std::string& key, uint64_t v, const std::string& obj = "/");
  void set_attr(const std::string& key, double v, const std::string& obj = "/");
  void set_attr(const std::string& key, const std::string& v, const std::string& obj = "/");
  void set_attr(const std::string& key, const char* v, const std::string& obj = "/") {
    set_attr(key, std::string(v), obj);
  }
  bool has_attr(const std::string& key, const std::string& obj = "/") const;
  // Integer attributes of any integer type are accepted when the value fits.
  int64_t attr_i64(const std::string& key, const std::string& obj = "/") const;
  uint64_t attr_u64(const std::string& key, const std::string& obj = "/") const;
  double attr_f64(const std::string& key, const std::string& obj = "/") const;  // int or float
  std::string attr_str(const std::string& key, const std::string& obj = "/") const;  // fixed or variable length

 private:
  std::string path_;
  Handle f_;
  std::string where(const std::string& name) const { return path_ + ": '" + name + "'"; }
  Handle open_object(const std::string& obj) const;
  Handle open_attr(const std::string& key, const std::string& obj) const;
  template <class T>
  T read_scalar_attr(const std::string& key, const std::string& obj, hid_t mem_type) const;
};

}  // namespace frugal::h5
