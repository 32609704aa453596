// Files for the tests that read and write them: the test data folder, a temporary folder, and the message
// of an expected dsx::error.
#pragma once

#include <catch2/catch.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <unistd.h>

#include "dsx/core/error.hpp"

namespace dsx::test {

// tests/data: DSX_TEST_DATA when the build defines it, else found from this file's place.
inline std::filesystem::path data_dir() {
#ifdef DSX_TEST_DATA
  return DSX_TEST_DATA;
#else
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "data";
#endif
}

// A fresh folder under the system temporary directory, removed with everything in it at scope exit. The
// name holds the process id and a counter, so that test executables running at once never share one.
struct temp_dir {
  std::filesystem::path path;

  temp_dir() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("dsx-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;  // a destructor must not throw
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  std::filesystem::path operator/(const std::string& name) const { return path / name; }

  // Writes `content` to the file `name` in the folder; returns its path.
  std::filesystem::path write(const std::string& name, const std::string& content) const {
    std::ofstream(path / name, std::ios::binary) << content;
    return path / name;
  }
};

// The message of the dsx::error that `f` throws; fails the test when it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const error& e) {
    return e.what();
  }
  FAIL("expected a dsx::error");
  return {};
}

}  // namespace dsx::test
