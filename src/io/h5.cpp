// h5.cpp: HDF5 error reporting, RAII handles and the typed H5File helpers (see h5.h).
#include "src/io/h5.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>

namespace frugal::h5 {

// ---- errors ------------------------------------------------------------------------------

void init() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}
// Silence HDF5 before anyone's first call (h5.cpp is linked whenever H5_CHECK is used).
static const bool kInitAtLoad = (init(), true);

namespace {
struct StackEntry { std::string func, desc; };
herr_t walk_cb(unsigned, const H5E_error2_t* e, void* data) {
  auto* v = static_cast<std::vector<StackEntry>*>(data);
  v->push_back({e->func_name ? e->func_name : "?", e->desc ? e->desc : ""});
  return 0;
}
}  // namespace

std::string error_stack_message() {
  std::vector<StackEntry> st;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, &st);  // API call first, innermost last
  H5Eclear2(H5E_DEFAULT);
  if (st.empty()) return "";
  std::string s = st.front().func + "(): " + st.front().desc;
  if (st.size() > 1) s += " <- " + st.back().func + "(): " + st.back().desc;
  return s;
}

void fail_call(const char* stmt, const char* file, int line) {
  std::string msg = error_stack_message();
#ifdef FRUGAL_SOURCE_DIR
  const size_t root = std::strlen(FRUGAL_SOURCE_DIR);
  if (std::strncmp(file, FRUGAL_SOURCE_DIR, root) == 0 && file[root] == '/') file += root + 1;
#endif
  fail("HDF5 call failed: ", stmt, " at ", file, ":", line, msg.empty() ? "" : ": ", msg);
}

// Re-throw an error from inside a helper with the file and object it was about in front.
#define H5_CONTEXT(ctx_, ...)                                  \
  do {                                                         \
    try {                                                      \
      __VA_ARGS__;                                             \
    } catch (const ::frugal::Error& e_) {                      \
      ::frugal::fail(ctx_, ": ", e_.what());                   \
    }                                                          \
  } while (0)

// ---- handles -----------------------------------------------------------------------------

static herr_t close_id(hid_t id) {
  switch (H5Iget_type(id)) {
    case H5I_FILE: return H5Fclose(id);
    case H5I_GROUP: return H5Gclose(id);
    case H5I_DATATYPE: return H5Tclose(id);
    case H5I_DATASPACE: return H5Sclose(id);
    case H5I_DATASET: return H5Dclose(id);
    case H5I_ATTR: return H5Aclose(id);
    case H5I_GENPROP_LST: return H5Pclose(id);
    default: return -1;
  }
}

void Handle::reset() {
  if (id_ >= 0) {
    close_id(id_);
    H5Eclear2(H5E_DEFAULT);
  }
  id_ = -1;
}

herr_t Handle::close() {
  herr_t r = id_ >= 0 ? close_id(id_) : 0;
  id_ = -1;
  return r;
}

// ---- types -------------------------------------------------------------------------------

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::I32: return "int32";
    case Kind::I64: return "int64";
    case Kind::U8: return "uint8";
    case Kind::U64: return "uint64";
    case Kind::F32: return "float32";
    case Kind::F64: return "float64";
    default: return "other";
  }
}

int64_t DatasetInfo::numel() const {
  return shape_numel(shape);
}

namespace {
template <class T> hid_t mem_type();
template <> hid_t mem_type<int32_t>() { return H5T_NATIVE_INT32; }
template <> hid_t mem_type<int64_t>() { return H5T_NATIVE_INT64; }
template <> hid_t mem_type<uint8_t>() { return H5T_NATIVE_UINT8; }
template <> hid_t mem_type<uint64_t>() { return H5T_NATIVE_UINT64; }
template <> hid_t mem_type<float>() { return H5T_NATIVE_FLOAT; }
template <> hid_t mem_type<double>() { return H5T_NATIVE_DOUBLE; }
// Little-endian file types (what numpy/h5py write on every common machine).
template <class T> hid_t file_type();
template <> hid_t file_type<int32_t>() { return H5T_STD_I32LE; }
template <> hid_t file_type<int64_t>() { return H5T_STD_I64LE; }
template <> hid_t file_type<uint8_t>() { return H5T_STD_U8LE; }
template <> hid_t file_type<uint64_t>() { return H5T_STD_U64LE; }
template <> hid_t file_type<float>() { return H5T_IEEE_F32LE; }
template <> hid_t file_type<double>() { return H5T_IEEE_F64LE; }

// Kind and a readable description of a stored datatype.
void describe_type(hid_t t, Kind* kind, std::string* desc) {
  H5T_class_t cls = H5Tget_class(t);
  size_t size = H5Tget_size(t);
  *kind = Kind::OTHER;
  if (cls == H5T_INTEGER) {
    bool is_signed = H5Tget_sign(t) == H5T_SGN_2;
    *desc = str(is_signed ? "int" : "uint", size * 8);
    if (is_signed && size == 4) *kind = Kind::I32;
    if (is_signed && size == 8) *kind = Kind::I64;
    if (!is_signed && size == 1) *kind = Kind::U8;
    if (!is_signed && size == 8) *kind = Kind::U64;
  } else if (cls == H5T_FLOAT) {
    *desc = str("float", size * 8);
    if (size == 4) *kind = Kind::F32;
    if (size == 8) *kind = Kind::F64;
  } else if (cls == H5T_STRING) {
    *desc = "string";
  } else if (cls == H5T_COMPOUND) {
    *desc = "compound";
  } else if (cls == H5T_ENUM) {
    *desc = "enum (e.g. bool)";
  } else {
    *desc = str("HDF5 type class ", int(cls));
  }
  H5Eclear2(H5E_DEFAULT);
}

std::vector<int64_t> space_shape(hid_t space) {
  int rank = H5_CHECK(H5Sget_simple_extent_ndims(space));
  std::vector<hsize_t> dims(rank);
  if (rank > 0) H5_CHECK(H5Sget_simple_extent_dims(space, dims.data(), nullptr));
  return std::vector<int64_t>(dims.begin(), dims.end());
}

}  // namespace

// ---- files -------------------------------------------------------------------------------

H5File H5File::create(const std::string& path) {
  init();
  H5File f;
  f.path_ = path;
  H5_CONTEXT(path + ": cannot create HDF5 file", {
    Handle fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
    // 1.8 object format: readable by every HDF5 >= 1.8 / h5py, and large attributes (recipe
    // text) go to dense storage instead of hitting the 64 KiB object-header limit.
    H5_CHECK(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18));
    f.f_ = Handle(H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl)));
  });
  return f;
}

H5File H5File::open(const std::string& path, bool writable) {
  init();
  struct stat sb;
  if (stat(path.c_str(), &sb) != 0) fail(path, ": no such file");
  if (!S_ISREG(sb.st_mode)) fail(path, ": not a regular file");
  H5File f;
  f.path_ = path;
  H5_CONTEXT(path + ": cannot open as HDF5 (not an HDF5 file, truncated, or locked)", {
    f.f_ = Handle(H5_CHECK(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT)));
  });
  return f;
}

#ifdef H5_HAVE_PARALLEL
H5File H5File::create_parallel(const std::string& path, MPI_Comm comm) {
  init();
  H5File f;
  f.path_ = path;
  H5_CONTEXT(path + ": cannot create HDF5 file (MPI-IO)", {
    Handle fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
    H5_CHECK(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18));
    H5_CHECK(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL));
    f.f_ = Handle(H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl)));
  });
  return f;
}

H5File H5File::open_parallel(const std::string& path, MPI_Comm comm) {
  init();
  H5File f;
  f.path_ = path;
  H5_CONTEXT(path + ": cannot open as HDF5 with MPI-IO (not an HDF5 file, truncated, or locked)", {
    Handle fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
    H5_CHECK(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL));
    f.f_ = Handle(H5_CHECK(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl)));
  });
  return f;
}
#endif

Handle H5File::open_dataset(const std::string& name) const {
  if (!exists(name)) fail(where(name), ": missing dataset");
  Handle d;
  H5_CONTEXT(where(name) + ": opening dataset", d = Handle(H5_CHECK(H5Dopen2(f_, name.c_str(), H5P_DEFAULT))));
  return d;
}

template <class T>
Handle H5File::create_dataset(const std::string& name, const std::vector<int64_t>& shape) {
  Handle d;
  H5_CONTEXT(where(name) + ": creating dataset", {
    for (int64_t n : shape)
      if (n < 0) fail("negative dimension in shape ", shape_str(shape));
    std::vector<hsize_t> dims(shape.begin(), shape.end());
    Handle space(shape.empty() ? H5_CHECK(H5Screate(H5S_SCALAR))
                               : H5_CHECK(H5Screate_simple(int(dims.size()), dims.data(), nullptr)));
    Handle lcpl(H5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
    H5_CHECK(H5Pset_create_intermediate_group(lcpl, 1));
    // No fill: parallel HDF5 allocates datasets early and would otherwise write the fill value
    // over the whole dataset before the caller overwrites it.
    Handle dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
    H5_CHECK(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));
    d = Handle(H5_CHECK(H5Dcreate2(f_, name.c_str(), file_type<T>(), space, lcpl, dcpl, H5P_DEFAULT)));
  });
  return d;
}

void H5File::flush() {
  H5_CONTEXT(path_ + ": flush", H5_CHECK(H5Fflush(f_, H5F_SCOPE_GLOBAL)));
}

void H5File::close() {
  if (f_.get() < 0) return;
  H5_CONTEXT(path_ + ": close", H5_CHECK(f_.close()));
}

bool H5File::exists(const std::string& name) const {
  // H5Lexists fails (instead of returning false) when an intermediate group is missing: walk.
  std::string cur;
  size_t pos = 0;
  while (pos <= name.size()) {
    size_t slash = name.find('/', pos);
    if (slash == std::string::npos) slash = name.size();
    std::string comp = name.substr(pos, slash - pos);
    pos = slash + 1;
    if (comp.empty()) continue;
    cur += "/" + comp;
    htri_t e = H5Lexists(f_, cur.c_str(), H5P_DEFAULT);
    if (e < 0) { H5Eclear2(H5E_DEFAULT); return false; }
    if (e == 0) return false;
  }
  return true;
}

DatasetInfo H5File::info(const std::string& name) const {
  if (!exists(name)) fail(where(name), ": missing dataset");
  DatasetInfo di;
  H5_CONTEXT(where(name), {
    Handle d(H5_CHECK(H5Oopen(f_, name.c_str(), H5P_DEFAULT)));
    if (H5Iget_type(d) != H5I_DATASET) fail("is not a dataset (a group or named type)");
    Handle t(H5_CHECK(H5Dget_type(d)));
    Handle s(H5_CHECK(H5Dget_space(d)));
    describe_type(t, &di.kind, &di.type_desc);
    if (H5_CHECK(H5Sget_simple_extent_type(s)) == H5S_NULL) fail("has a null dataspace");
    di.shape = space_shape(s);
  });
  return di;
}

template <class T>
void H5File::write(const std::string& name, const T* data, const std::vector<int64_t>& shape) {
  H5_CONTEXT(where(name) + ": writing dataset", {
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d < 0) fail("negative dimension in shape ", shape_str(shape));
      n *= d;
    }
    std::vector<hsize_t> dims(shape.begin(), shape.end());
    Handle space(shape.empty() ? H5_CHECK(H5Screate(H5S_SCALAR))
                               : H5_CHECK(H5Screate_simple(int(dims.size()), dims.data(), nullptr)));
    Handle lcpl(H5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
    H5_CHECK(H5Pset_create_intermediate_group(lcpl, 1));
    Handle d(H5_CHECK(H5Dcreate2(f_, name.c_str(), file_type<T>(), space, lcpl, H5P_DEFAULT, H5P_DEFAULT)));
    if (n > 0) H5_CHECK(H5Dwrite(d, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
  });
}

template <class T>
std::vector<T> H5File::read(const std::string& name, std::vector<int64_t>* shape) const {
  DatasetInfo di = info(name);
  if (di.kind != kind_of<T>())
    fail(where(name), ": wrong dtype: expected ", kind_name(kind_of<T>()), ", found ", di.type_desc);
  std::vector<T> v(size_t(di.numel()));
  if (!v.empty()) {
    H5_CONTEXT(where(name) + ": reading dataset", {
      Handle d(H5_CHECK(H5Dopen2(f_, name.c_str(), H5P_DEFAULT)));
      H5_CHECK(H5Dread(d, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()));
    });
  }
  if (shape) *shape = di.shape;
  return v;
}

template <class T>
void H5File::read_into(const std::string& name, T* out, const std::vector<int64_t>& shape) const {
  DatasetInfo di = info(name);
  if (di.kind != kind_of<T>())
    fail(where(name), ": wrong dtype: expected ", kind_name(kind_of<T>()), ", found ", di.type_desc);
  if (di.shape != shape)
    fail(where(name), ": shape mismatch: expected ", shape_str(shape), ", found ", shape_str(di.shape));
  if (di.numel() == 0) return;
  H5_CONTEXT(where(name) + ": reading dataset", {
    Handle d(H5_CHECK(H5Dopen2(f_, name.c_str(), H5P_DEFAULT)));
    H5_CHECK(H5Dread(d, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out));
  });
}

#define FRUGAL_H5_INSTANTIATE(T)                                                              \
  template Handle H5File::create_dataset<T>(const std::string&, const std::vector<int64_t>&); \
  template void H5File::write<T>(const std::string&, const T*, const std::vector<int64_t>&); \
  template std::vector<T> H5File::read<T>(const std::string&, std::vector<int64_t>*) const;  \
  template void H5File::read_into<T>(const std::string&, T*, const std::vector<int64_t>&) const;
FRUGAL_H5_INSTANTIATE(int32_t)
FRUGAL_H5_INSTANTIATE(int64_t)
FRUGAL_H5_INSTANTIATE(uint8_t)
FRUGAL_H5_INSTANTIATE(uint64_t)
FRUGAL_H5_INSTANTIATE(float)
FRUGAL_H5_INSTANTIATE(double)

namespace {
herr_t list_cb(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}
}  // namespace

std::vector<std::string> H5File::list(const std::string& group) const {
  std::vector<std::string> names;
  if (!exists(group) && group != "/") fail(where(group), ": missing group");
  H5_CONTEXT(where(group) + ": listing group", {
    Handle g(H5_CHECK(H5Gopen2(f_, group.c_str(), H5P_DEFAULT)));
    hsize_t idx = 0;
    H5_CHECK(H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, list_cb, &names));
  });
  std::sort(names.begin(), names.end());
  return names;
}

// ---- attributes --------------------------------------------------------------------------

Handle H5File::open_object(const std::string& obj) const {
  if (obj != "/" && !exists(obj)) fail(where(obj), ": missing object");
  return Handle(H5_CHECK(H5Oopen(f_, obj.c_str(), H5P_DEFAULT)));
}

bool H5File::has_attr(const std::string& key, const std::string& obj) const {
  if (obj != "/" && !exists(obj)) return false;
  htri_t r = H5Aexists_by_name(f_, obj.c_str(), key.c_str(), H5P_DEFAULT);
  if (r < 0) { H5Eclear2(H5E_DEFAULT); return false; }
  return r > 0;
}

Handle H5File::open_attr(const std::string& key, const std::string& obj) const {
  if (!has_attr(key, obj)) fail(path_, ": missing attribute '", key, "' on '", obj, "'");
  return Handle(H5_CHECK(H5Aopen_by_name(f_, obj.c_str(), key.c_str(), H5P_DEFAULT, H5P_DEFAULT)));
}

static void write_attr(hid_t f, const std::string& key, const std::string& obj, hid_t ftype,
                       hid_t mtype, const void* data) {
  if (H5_CHECK(H5Aexists_by_name(f, obj.c_str(), key.c_str(), H5P_DEFAULT)) > 0)
    H5_CHECK(H5Adelete_by_name(f, obj.c_str(), key.c_str(), H5P_DEFAULT));
  Handle space(H5_CHECK(H5Screate(H5S_SCALAR)));
  Handle a(H5_CHECK(H5Acreate_by_name(f, obj.c_str(), key.c_str(), ftype, space, H5P_DEFAULT,
                                      H5P_DEFAULT, H5P_DEFAULT)));
  H5_CHECK(H5Awrite(a, mtype, data));
}

void H5File::set_attr(const std::string& key, int64_t v, const std::string& obj) {
  H5_CONTEXT(path_ + ": writing attribute '" + key + "'",
             write_attr(f_, key, obj, H5T_STD_I64LE, H5T_NATIVE_INT64, &v));
}
void H5File::set_attr(const std::string& key, uint64_t v, const std::string& obj) {
  H5_CONTEXT(path_ + ": writing attribute '" + key + "'",
             write_attr(f_, key, obj, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v));
}
void H5File::set_attr(const std::string& key, double v, const std::string& obj) {
  H5_CONTEXT(path_ + ": writing attribute '" + key + "'",
             write_attr(f_, key, obj, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v));
}
void H5File::set_attr(const std::string& key, const std::string& v, const std::string& obj) {
  // Variable-length UTF-8 string: what h5py writes for a Python str.
  H5_CONTEXT(path_ + ": writing attribute '" + key + "'", {
    Handle t(H5_CHECK(H5Tcopy(H5T_C_S1)));
    H5_CHECK(H5Tset_size(t, H5T_VARIABLE));
    H5_CHECK(H5Tset_cset(t, H5T_CSET_UTF8));
    const char* p = v.c_str();
    write_attr(f_, key, obj, t, t, &p);
  });
}

template <class T>
T H5File::read_scalar_attr(const std::string& key, const std::string& obj, hid_t mtype) const {
  T v{};
  Handle a = open_attr(key, obj);
  H5_CONTEXT(path_ + ": attribute '" + key + "'", {
    Handle s(H5_CHECK(H5Aget_space(a)));
    if (H5_CHECK(H5Sget_simple_extent_npoints(s)) != 1) fail("expected a scalar");
    H5_CHECK(H5Aread(a, mtype, &v));
  });
  return v;
}

int64_t H5File::attr_i64(const std::string& key, const std::string& obj) const {
  Handle a = open_attr(key, obj);
  Handle t(H5_CHECK(H5Aget_type(a)));
  Kind k;
  std::string desc;
  describe_type(t, &k, &desc);
  if (H5Tget_class(t) != H5T_INTEGER)
    fail(path_, ": attribute '", key, "': expected an integer, found ", desc);
  if (k == Kind::U64) {
    uint64_t u = read_scalar_attr<uint64_t>(key, obj, H5T_NATIVE_UINT64);
    if (u > uint64_t(std::numeric_limits<int64_t>::max()))
      fail(path_, ": attribute '", key, "': value ", u, " does not fit int64");
    return int64_t(u);
  }
  return read_scalar_attr<int64_t>(key, obj, H5T_NATIVE_INT64);
}

uint64_t H5File::attr_u64(const std::string& key, const std::string& obj) const {
  Handle a = open_attr(key, obj);
  Handle t(H5_CHECK(H5Aget_type(a)));
  Kind k;
  std::string desc;
  describe_type(t, &k, &desc);
  if (H5Tget_class(t) != H5T_INTEGER)
    fail(path_, ": attribute '", key, "': expected an integer, found ", desc);
  if (H5Tget_sign(t) == H5T_SGN_2) {
    int64_t i = read_scalar_attr<int64_t>(key, obj, H5T_NATIVE_INT64);
    if (i < 0) fail(path_, ": attribute '", key, "': negative value ", i, " for an unsigned field");
    return uint64_t(i);
  }
  return read_scalar_attr<uint64_t>(key, obj, H5T_NATIVE_UINT64);
}

double H5File::attr_f64(const std::string& key, const std::string& obj) const {
  Handle a = open_attr(key, obj);
  Handle t(H5_CHECK(H5Aget_type(a)));
  H5T_class_t cls = H5Tget_class(t);
  if (cls != H5T_INTEGER && cls != H5T_FLOAT) {
    Kind k;
    std::string desc;
    describe_type(t, &k, &desc);
    fail(path_, ": attribute '", key, "': expected a number, found ", desc);
  }
  return read_scalar_attr<double>(key, obj, H5T_NATIVE_DOUBLE);
}

std::string H5File::attr_str(const std::string& key, const std::string& obj) const {
  Handle a = open_attr(key, obj);
  std::string out;
  H5_CONTEXT(path_ + ": attribute '" + key + "'", {
    Handle t(H5_CHECK(H5Aget_type(a)));
    if (H5Tget_class(t) != H5T_STRING) fail("expected a string");
    Handle s(H5_CHECK(H5Aget_space(a)));
    if (H5_CHECK(H5Sget_simple_extent_npoints(s)) != 1) fail("expected a scalar string");
    Handle mt(H5_CHECK(H5Tcopy(H5T_C_S1)));
    H5_CHECK(H5Tset_cset(mt, H5Tget_cset(t)));
    if (H5_CHECK(H5Tis_variable_str(t)) > 0) {
      H5_CHECK(H5Tset_size(mt, H5T_VARIABLE));
      char* p = nullptr;
      H5_CHECK(H5Aread(a, mt, &p));
      out = p ? p : "";
      H5free_memory(p);
    } else {
      size_t n = H5Tget_size(t);
      H5_CHECK(H5Tset_size(mt, n));
      std::vector<char> buf(n + 1, '\0');
      H5_CHECK(H5Aread(a, mt, buf.data()));
      out.assign(buf.data(), strnlen(buf.data(), n));
      if (H5Tget_strpad(t) == H5T_STR_SPACEPAD)
        while (!out.empty() && out.back() == ' ') out.pop_back();
    }
  });
  return out;
}

}  // namespace frugal::h5
