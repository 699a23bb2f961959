// Per-device autocast control that tch 0.24 does not expose: tch can only switch CUDA
// autocast on and off at its default dtype (fp16). bf16 autocast, and autocast on the CPU,
// need libtorch's device-aware calls, which this file forwards to C.
//
// The declarations below are copied from ATen/autocast_mode.h (libtorch 2.11). Declaring them
// instead of including ATen keeps this file a sub-second compile; a signature that drifted in
// a later libtorch would fail to link rather than misbehave.
#include <cstdint>

namespace c10 {
enum class DeviceType : int8_t;
enum class ScalarType : int8_t;
}  // namespace c10

namespace at::autocast {
bool is_autocast_enabled(c10::DeviceType device_type);
void set_autocast_enabled(c10::DeviceType device_type, bool enabled);
c10::ScalarType get_autocast_dtype(c10::DeviceType device_type);
void set_autocast_dtype(c10::DeviceType device_type, c10::ScalarType dtype);
void clear_cache();
int increment_nesting();
int decrement_nesting();
}  // namespace at::autocast

extern "C" {

// Enters an autocast region on `device_type` (c10::DeviceType: 0 CPU, 1 CUDA): sets enabled
// and, when `dtype` >= 0, the dtype (c10::ScalarType). Writes the previous state for
// lgaf_autocast_exit. Returns 0, or -1 if libtorch threw.
int lgaf_autocast_enter(int device_type, bool enabled, int dtype, bool* prev_enabled,
                        int* prev_dtype) {
  try {
    auto dev = static_cast<c10::DeviceType>(device_type);
    *prev_enabled = at::autocast::is_autocast_enabled(dev);
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
    at::autocast::set_autocast_enabled(dev, enabled);
    if (dtype >= 0) at::autocast::set_autocast_dtype(dev, static_cast<c10::ScalarType>(dtype));
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Leaves the region: restores the previous state, and drops the cache of casted weights when
// the outermost region ends (what torch.autocast's __exit__ does).
int lgaf_autocast_exit(int device_type, bool prev_enabled, int prev_dtype) {
  try {
    auto dev = static_cast<c10::DeviceType>(device_type);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dev, prev_enabled);
    at::autocast::set_autocast_dtype(dev, static_cast<c10::ScalarType>(prev_dtype));
    return 0;
  } catch (...) {
    return -1;
  }
}

// The autocast state of `device_type`: enabled flag and dtype (c10::ScalarType).
int lgaf_autocast_state(int device_type, bool* enabled, int* dtype) {
  try {
    auto dev = static_cast<c10::DeviceType>(device_type);
    *enabled = at::autocast::is_autocast_enabled(dev);
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
