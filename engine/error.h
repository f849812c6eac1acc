// The one error type inside Octet's C++ code. The C API turns it into an error code + message.
#pragma once
#include <stdexcept>
#include <string>

namespace octet {

enum class ErrorCode {
  InvalidArgument = 1,  // a caller passed something unusable
  Io = 2,               // a file could not be opened, read, written or mapped
  Format = 3,           // a file is truncated, corrupt, hostile or of an unknown version
  Unsupported = 4,      // a valid input Octet does not handle (architecture, dtype, feature)
  OutOfMemory = 5,
  Cancelled = 6,        // a callback asked to stop
  Internal = 7,
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

[[noreturn]] inline void fail(ErrorCode code, const std::string& message) { throw Error(code, message); }

}  // namespace octet
