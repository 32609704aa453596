// dsx::safetensors — reading and writing the safetensors format (HF checkpoints, golden data, dsx
// checkpoints).
//
// Layout of a file: an 8-byte little-endian unsigned header length N, N bytes of UTF-8 JSON, then the
// data section. The header is an object mapping each tensor name to
// {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]} (byte offsets relative to the
// data section, elements row-major and little-endian), plus an optional "__metadata__" object of
// string values. The tensors cover the data section exactly: no overlaps and no holes.
//
// The reader maps the file and validates the whole header against it before serving anything, so a
// tensor_info it hands out always describes bytes that exist. The writer assembles a file in memory
// and replaces the target atomically.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is read in place; big-endian hosts are not supported");

// Writes `pieces` one after another to `target` so that readers see either the old file or the whole
// new one: a temporary file in the same folder is written, flushed to disk, renamed over the target,
// and the folder is flushed so the rename itself survives a crash.
inline void write_file_atomic(const std::filesystem::path& target, std::span<const std::span<const std::byte>> pieces) {
  const std::string where = target.string();
  require(!target.filename().empty(), "cannot write '" + where + "': the path names no file");
  const std::filesystem::path folder = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  static std::atomic<unsigned> counter{0};
  const std::filesystem::path tmp =
      folder / ("." + target.filename().string() + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++));
  const auto fail = [&](const std::string& what) {
    const std::string reason = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw error("cannot write '" + where + "': " + what + ": " + reason);
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw error("cannot write '" + where + "': creating '" + tmp.string() + "': " + std::strerror(errno));
  for (const auto& piece : pieces) {
    std::size_t done = 0;
    while (done < piece.size()) {
      const ssize_t n = ::write(fd, piece.data() + done, piece.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) { ::close(fd); fail("writing '" + tmp.string() + "'"); }
      done += std::size_t(n);
    }
  }
  if (::fsync(fd) != 0) { ::close(fd); fail("flushing '" + tmp.string() + "'"); }
  if (::close(fd) != 0) fail("closing '" + tmp.string() + "'");
  if (::rename(tmp.c_str(), target.c_str()) != 0) fail("renaming '" + tmp.string() + "' over it");
  const int dir_fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) throw error("cannot flush the folder of '" + where + "': " + std::strerror(errno));
  const int synced = ::fsync(dir_fd);
  const int sync_errno = errno;
  ::close(dir_fd);
  if (synced != 0) throw error("cannot flush the folder of '" + where + "': " + std::strerror(sync_errno));
}

namespace safetensors {

// Header lengths above this are refused before parsing (the format's reference implementation uses
// the same bound), so a corrupt length cannot make the reader allocate gigabytes.
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

inline constexpr dtype known_dtypes[] = {dtype::f64, dtype::f32, dtype::f16, dtype::bf16, dtype::fp8_e4m3, dtype::fp8_e5m2,
                                         dtype::i64, dtype::i32, dtype::i16,  dtype::i8,   dtype::u8,       dtype::boolean};

// The dtype a safetensors header names ("F32", "BF16", ...), or nullopt for one dsx does not know.
inline std::optional<dtype> dtype_from_name(std::string_view name) {
  for (dtype t : known_dtypes)
    if (safetensors_name(t) == name) return t;
  return std::nullopt;
}

// The dtype a C++ element type is stored as.
template <class T>
constexpr dtype dtype_of() {
  if constexpr (std::is_same_v<T, double>) return dtype::f64;
  else if constexpr (std::is_same_v<T, float>) return dtype::f32;
  else if constexpr (std::is_same_v<T, f16>) return dtype::f16;
  else if constexpr (std::is_same_v<T, bf16>) return dtype::bf16;
  else if constexpr (std::is_same_v<T, fp8_e4m3>) return dtype::fp8_e4m3;
  else if constexpr (std::is_same_v<T, std::int64_t>) return dtype::i64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return dtype::i32;
  else if constexpr (std::is_same_v<T, std::int16_t>) return dtype::i16;
  else if constexpr (std::is_same_v<T, std::int8_t>) return dtype::i8;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return dtype::u8;
  else if constexpr (std::is_same_v<T, bool>) return dtype::boolean;
  else static_assert(!sizeof(T), "no safetensors dtype for this element type");
}
static_assert(sizeof(bool) == 1, "BOOL tensors are one byte per element");
static_assert(dtype_of<bf16>() == dtype::bf16 && dtype_of<std::int64_t>() == dtype::i64);

// Element types reader::read_into converts to.
template <class T>
concept readable = std::is_same_v<T, double> || std::is_same_v<T, float> || std::is_same_v<T, f16> ||
                   std::is_same_v<T, bf16> || std::is_same_v<T, std::int64_t> || std::is_same_v<T, std::int32_t>;

inline std::string shape_string(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct tensor_info {
  std::string name;
  dtype type = dtype::f32;
  std::vector<std::int64_t> shape;  // empty for a 0-d (scalar) tensor
  std::uint64_t begin = 0, end = 0;  // byte offsets within the data section
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;
    return n;
  }
  std::uint64_t byte_size() const { return end - begin; }
};

namespace detail {

// A read-only private mapping of a whole file; move-only.
class mapped_file {
 public:
  mapped_file() = default;
  explicit mapped_file(const std::filesystem::path& p) {
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw error("cannot open '" + p.string() + "': " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const std::string reason = std::strerror(errno);
      ::close(fd);
      throw error("cannot stat '" + p.string() + "': " + reason);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw error("'" + p.string() + "' is not a regular file");
    }
    size_ = std::size_t(st.st_size);
    if (size_ > 0) {
      void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (m == MAP_FAILED) {
        const std::string reason = std::strerror(errno);
        ::close(fd);
        throw error("cannot map '" + p.string() + "': " + reason);
      }
      data_ = static_cast<const std::byte*>(m);
    }
    ::close(fd);  // the mapping keeps the file alive
  }
  mapped_file(mapped_file&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  mapped_file& operator=(mapped_file&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file() {
    if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
  }
  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// Source element types that have no dsx storage type of their own.
struct e5m2_byte {  // float8 E5M2: the top byte of an IEEE half
  std::uint8_t bits;
  explicit operator float() const {
    f16 h;
    h.bits = std::uint16_t(bits) << 8;
    return float(h);
  }
};
struct bool_byte {
  std::uint8_t value;
};

template <class S> constexpr bool is_floating_source =
    std::is_same_v<S, double> || std::is_same_v<S, float> || std::is_same_v<S, f16> || std::is_same_v<S, bf16> ||
    std::is_same_v<S, fp8_e4m3> || std::is_same_v<S, e5m2_byte>;

// One value to a target element type; bf16 and f16 are reached through float.
template <class T, class V>
T to_target(V v) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>)
    return T(float(v));
  else
    return T(v);
}

// Converts `n` little-endian elements of type S at `src` (any alignment) to T. Floating targets take
// every source: narrowing rounds to nearest even (an F64 read as bf16/f16 rounds through float).
// Integer targets take integer and BOOL sources and refuse values out of their range.
template <class S, class T>
void convert_elements(const std::byte* src, std::int64_t n, T* dst, const std::string& where, const tensor_info& t) {
  constexpr bool float_target = !std::is_integral_v<T>;
  if constexpr (!float_target && is_floating_source<S>) {
    throw error(where + ": tensor '" + t.name + "' is " + std::string(safetensors_name(t.type)) +
                "; reading it into an integer buffer needs an integer or BOOL tensor");
  } else {
    for (std::int64_t i = 0; i < n; ++i) {
      S s;
      std::memcpy(&s, src + std::size_t(i) * sizeof(S), sizeof(S));
      if constexpr (std::is_same_v<S, bool_byte>) {
        dst[i] = to_target<T>(s.value != 0 ? 1 : 0);
      } else if constexpr (std::is_same_v<S, double> || std::is_same_v<S, float>) {
        dst[i] = to_target<T>(s);
      } else if constexpr (is_floating_source<S>) {  // the 16- and 8-bit formats widen exactly to float
        dst[i] = to_target<T>(float(s));
      } else if constexpr (float_target) {
        dst[i] = to_target<T>(s);
      } else {
        if (!std::in_range<T>(s))
          throw error(where + ": tensor '" + t.name + "' element " + std::to_string(i) + " = " + std::to_string(s) +
                      " does not fit the " + std::to_string(8 * sizeof(T)) + "-bit integer it is read into");
        dst[i] = T(s);
      }
    }
  }
}

}  // namespace detail

class reader {
 public:
  // Maps the file and validates its header: the length fits the file, the header is a JSON object,
  // every entry has a known dtype, a shape of non-negative integers and data_offsets [begin, end] with
  // end − begin = numel · element size inside the data section, and the tensors tile the data section
  // exactly. Throws dsx::error naming the file and the problem. The file stays mapped for the
  // reader's lifetime and must not be truncated meanwhile (reading a vanished page is a SIGBUS).
  explicit reader(const std::filesystem::path& p) : path_(p), file_(p) {
    const std::string where = p.string();
    const std::size_t size = file_.size();
    if (size < 8)
      throw error(where + ": file is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
    std::uint64_t n = 0;
    std::memcpy(&n, file_.data(), 8);
    if (n > max_header_bytes)
      throw error(where + ": header length " + std::to_string(n) + " exceeds the limit of " +
                  std::to_string(max_header_bytes) + " bytes (not a safetensors file?)");
    if (n > size - 8)
      throw error(where + ": header length " + std::to_string(n) + " exceeds the " + std::to_string(size - 8) +
                  " bytes after the length field (file truncated or not safetensors)");
    data_offset_ = 8 + n;
    data_size_ = size - data_offset_;
    parse_header(where, reinterpret_cast<const char*>(file_.data() + 8), std::size_t(n));
  }

  const std::vector<tensor_info>& tensors() const { return tensors_; }  // in header order
  const tensor_info* find(std::string_view name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  const tensor_info& at(std::string_view name) const {
    const tensor_info* t = find(name);
    if (!t) throw error(path_.string() + ": no tensor named '" + std::string(name) + "'");
    return *t;
  }
  // The tensor's raw little-endian bytes; `t` must come from this reader.
  std::span<const std::byte> bytes(const tensor_info& t) const {
    return {file_.data() + data_offset_ + t.begin, std::size_t(t.byte_size())};
  }
  // Writes the tensor's numel() elements to dst, converted to T (see detail::convert_elements).
  template <readable T>
  void read_into(const tensor_info& t, T* dst) const {
    const std::byte* src = file_.data() + data_offset_ + t.begin;
    const std::int64_t n = t.numel();
    const std::string where = path_.string();
    if (t.type == dtype_of<T>()) {
      if (n > 0) std::memcpy(dst, src, std::size_t(n) * sizeof(T));
      return;
    }
    switch (t.type) {
      case dtype::f64: return detail::convert_elements<double>(src, n, dst, where, t);
      case dtype::f32: return detail::convert_elements<float>(src, n, dst, where, t);
      case dtype::f16: return detail::convert_elements<f16>(src, n, dst, where, t);
      case dtype::bf16: return detail::convert_elements<bf16>(src, n, dst, where, t);
      case dtype::fp8_e4m3: return detail::convert_elements<fp8_e4m3>(src, n, dst, where, t);
      case dtype::fp8_e5m2: return detail::convert_elements<detail::e5m2_byte>(src, n, dst, where, t);
      case dtype::i64: return detail::convert_elements<std::int64_t>(src, n, dst, where, t);
      case dtype::i32: return detail::convert_elements<std::int32_t>(src, n, dst, where, t);
      case dtype::i16: return detail::convert_elements<std::int16_t>(src, n, dst, where, t);
      case dtype::i8: return detail::convert_elements<std::int8_t>(src, n, dst, where, t);
      case dtype::u8: return detail::convert_elements<std::uint8_t>(src, n, dst, where, t);
      case dtype::boolean: return detail::convert_elements<detail::bool_byte>(src, n, dst, where, t);
    }
    throw error(where + ": tensor '" + t.name + "' has a dtype the reader cannot convert");
  }
  template <readable T>
  std::vector<T> read(std::string_view name) const {
    const tensor_info& t = at(name);
    std::vector<T> out(std::size_t(t.numel()));
    read_into(t, out.data());
    return out;
  }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void parse_header(const std::string& where, const char* text, std::size_t n) {
    using json = nlohmann::ordered_json;
    std::optional<std::string> duplicate;
    std::set<std::string, std::less<>> seen;
    // nlohmann keeps one of two equal keys silently; the callback sees every top-level key.
    const json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
      if (event == json::parse_event_t::key && depth == 1 && parsed.is_string() &&
          !seen.insert(parsed.get<std::string>()).second && !duplicate)
        duplicate = parsed.get<std::string>();
      return true;
    };
    json header;
    try {
      header = json::parse(text, text + n, on_event);
    } catch (const json::exception& e) {
      throw error(where + ": header is not valid JSON: " + e.what());
    }
    if (!header.is_object())
      throw error(where + ": header must be a JSON object, found " + std::string(header.type_name()));
    if (duplicate) throw error(where + ": header names '" + *duplicate + "' twice");

    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object())
          throw error(where + ": __metadata__ must be an object of strings, found " + std::string(entry.type_name()));
        for (const auto& [key, value] : entry.items()) {
          if (!value.is_string())
            throw error(where + ": __metadata__ '" + key + "' must be a string, found " + std::string(value.type_name()));
          metadata_[key] = value.get<std::string>();
        }
        continue;
      }
      tensors_.push_back(parse_entry(where, name, entry));
      index_.emplace(name, tensors_.size() - 1);
    }
    check_tiling(where);
  }

  tensor_info parse_entry(const std::string& where, const std::string& name, const nlohmann::ordered_json& entry) const {
    const std::string tensor = where + ": tensor '" + name + "': ";
    if (!entry.is_object()) throw error(tensor + "entry must be an object, found " + std::string(entry.type_name()));
    const auto field = [&](const char* key) -> const nlohmann::ordered_json& {
      const auto it = entry.find(key);
      if (it == entry.end()) throw error(tensor + "missing \"" + key + "\"");
      return *it;
    };
    tensor_info t;
    t.name = name;

    const auto& type = field("dtype");
    if (!type.is_string()) throw error(tensor + "dtype must be a string, found " + std::string(type.type_name()));
    const auto parsed = dtype_from_name(type.get<std::string>());
    if (!parsed) {
      std::string known;
      for (dtype k : known_dtypes) known += (known.empty() ? "" : ", ") + std::string(safetensors_name(k));
      throw error(tensor + "unknown dtype \"" + type.get<std::string>() + "\" (known: " + known + ")");
    }
    t.type = *parsed;

    const auto& shape = field("shape");
    if (!shape.is_array()) throw error(tensor + "shape must be an array, found " + std::string(shape.type_name()));
    std::int64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned() || d.get<std::uint64_t>() > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
        throw error(tensor + "shape " + shape.dump() + " must hold non-negative integers");
      const auto dim = d.get<std::int64_t>();
      if (dim > 0 && numel > std::numeric_limits<std::int64_t>::max() / dim)
        throw error(tensor + "shape " + shape.dump() + " has more elements than fit in 64 bits");
      numel *= dim;
      t.shape.push_back(dim);
    }

    const auto& offsets = field("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      throw error(tensor + "data_offsets must be two non-negative integers [begin, end], found " + offsets.dump());
    t.begin = offsets[0].get<std::uint64_t>();
    t.end = offsets[1].get<std::uint64_t>();
    const std::string range = "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
    if (t.end < t.begin) throw error(tensor + range + " end before begin");
    const std::uint64_t elem = size_of(t.type);
    const std::uint64_t need = std::uint64_t(numel) * elem;
    if (std::uint64_t(numel) > std::numeric_limits<std::uint64_t>::max() / elem || t.end - t.begin != need)
      throw error(tensor + range + " hold " + std::to_string(t.end - t.begin) + " bytes, but shape " +
                  shape_string(t.shape) + " of " + std::string(safetensors_name(t.type)) + " needs " +
                  std::to_string(need));
    if (t.end > data_size_)
      throw error(tensor + range + " exceed the data section of " + std::to_string(data_size_) +
                  " bytes (out of range: file truncated?)");
    return t;
  }

  // The format requires the tensors to tile the data section: sorted by offset, each starts where the
  // previous one ended, and the last ends at the end of the file.
  void check_tiling(const std::string& where) const {
    std::vector<std::size_t> order(tensors_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return std::pair(tensors_[a].begin, tensors_[a].end) < std::pair(tensors_[b].begin, tensors_[b].end);
    });
    const auto describe = [&](const tensor_info& t) {
      return "'" + t.name + "' [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
    };
    std::uint64_t pos = 0;
    const tensor_info* previous = nullptr;
    for (std::size_t i : order) {
      const tensor_info& t = tensors_[i];
      if (t.begin < pos)
        throw error(where + ": tensors " + describe(*previous) + " and " + describe(t) + " overlap in the data section");
      if (t.begin > pos)
        throw error(where + ": hole in the data section: bytes [" + std::to_string(pos) + ", " +
                    std::to_string(t.begin) + ") belong to no tensor (before " + describe(t) + ")");
      pos = t.end;
      previous = &t;
    }
    if (pos != data_size_)
      throw error(where + ": hole in the data section: its last " + std::to_string(data_size_ - pos) +
                  " bytes [" + std::to_string(pos) + ", " + std::to_string(data_size_) + ") belong to no tensor");
  }

  std::filesystem::path path_;
  detail::mapped_file file_;
  std::uint64_t data_offset_ = 0;  // 8 + header length
  std::uint64_t data_size_ = 0;
  std::vector<tensor_info> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name → position in tensors_
  std::map<std::string, std::string> metadata_;
};

class writer {
 public:
  // Adds a tensor (the bytes are copied). Names must be unique, non-empty and not "__metadata__";
  // data must hold exactly numel · size_of(type) bytes.
  void add(std::string name, dtype type, std::vector<std::int64_t> shape, std::span<const std::byte> data) {
    const std::string tensor = "safetensors writer: tensor '" + name + "': ";
    require(!name.empty() && name != "__metadata__", tensor + "name must be non-empty and not __metadata__");
    require(!names_.contains(name), tensor + "added twice");
    std::uint64_t numel = 1;
    for (std::int64_t d : shape) {
      require(d >= 0, tensor + "shape " + shape_string(shape) + " has a negative dimension");
      numel *= std::uint64_t(d);
    }
    const std::uint64_t need = numel * size_of(type);
    require(data.size() == need, tensor + "shape " + shape_string(shape) + " of " + std::string(safetensors_name(type)) +
                                     " needs " + std::to_string(need) + " bytes, got " + std::to_string(data.size()));
    names_.insert(name);
    entries_.push_back({std::move(name), type, std::move(shape), std::vector<std::byte>(data.begin(), data.end())});
  }
  template <class T>
  void add(std::string name, std::span<const T> data, std::vector<std::int64_t> shape) {
    add(std::move(name), dtype_of<T>(), std::move(shape), std::as_bytes(data));
  }
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

  // Header: "__metadata__" first (when set), then the tensors in insertion order, padded with spaces to
  // a multiple of 8 bytes so the data section starts aligned. The file is replaced atomically.
  void write(const std::filesystem::path& p) const {
    using json = nlohmann::ordered_json;
    json header = json::object();
    if (!metadata_.empty()) {
      json& m = header["__metadata__"];
      for (const auto& [k, v] : metadata_) m[k] = v;
    }
    std::uint64_t offset = 0;
    for (const auto& e : entries_) {
      const std::uint64_t end = offset + e.data.size();
      header[e.name] = json{{"dtype", std::string(safetensors_name(e.type))}, {"shape", e.shape}, {"data_offsets", json::array({offset, end})}};
      offset = end;
    }
    std::string text;
    try {
      text = header.dump(-1, ' ', false, json::error_handler_t::strict);
    } catch (const json::exception& e) {
      throw error("cannot write '" + p.string() + "': a tensor name or metadata string is not valid UTF-8: " + e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');
    const std::uint64_t n = text.size();
    std::byte length[8];
    std::memcpy(length, &n, 8);
    std::vector<std::span<const std::byte>> pieces{std::span<const std::byte>(length, 8), std::as_bytes(std::span(text))};
    for (const auto& e : entries_) pieces.emplace_back(e.data);
    write_file_atomic(p, pieces);
  }

 private:
  struct entry {
    std::string name;
    dtype type;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> data;
  };
  std::vector<entry> entries_;
  std::set<std::string, std::less<>> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace safetensors
}  // namespace dsx
