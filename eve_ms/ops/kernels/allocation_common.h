// Shared by the CPU and CUDA allocation kernels: attribute names, strategy codes, and the
// integer sort key that encodes "priority descending, token index ascending" exactly.
//
// Keep in sync with eve_ms/ops/token_allocation.py (STRATEGY_CODES), eve_ms/ops/kernels/__init__.py and with
// ascend_kernels/img_gbpr (the AscendC op uses the same attribute names and codes).
#ifndef EVE_MS_OPS_KERNELS_ALLOCATION_COMMON_H_
#define EVE_MS_OPS_KERNELS_ALLOCATION_COMMON_H_

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define EVE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define EVE_HOST_DEVICE inline
#endif

namespace eve_alloc {

enum Strategy : int64_t { kRandom = 0, kGbpr = 1, kImgGbpr = 2 };

// Op signature: 4 inputs, 3 outputs.
constexpr int kNumInputs = 4;   // probs [T,2] f32, is_image [T] bool, valid [T] bool, noise [T] f32
constexpr int kNumOutputs = 3;  // expert [T] i32, slot [T] i32, counts [4] i32
constexpr int kNumCounts = 4;   // kept0, kept1, dropped, redistributed

// Attribute names as set by the Python side (ops.Custom reg_info).
constexpr const char *kAttrCapacity = "capacity";
constexpr const char *kAttrStrategy = "strategy";
constexpr const char *kAttrBeta = "beta";
constexpr const char *kAttrRatio = "redistribute_ratio";

struct Params {
  int64_t capacity;
  int64_t strategy;
  float beta;
  float ratio;
};

// Monotone map float32 -> uint32 (a < b  <=>  key(a) < key(b) for non-NaN values), with
// -0.0 and +0.0 mapped to the same key: the reference compares floats with `<`, under
// which they are equal, so they must tie (and fall back to the token index).
EVE_HOST_DEVICE uint32_t OrderedBits(float value) {
  uint32_t bits;
#ifdef __CUDA_ARCH__
  bits = __float_as_uint(value);
#else
  std::memcpy(&bits, &value, sizeof(bits));
#endif
  if (bits == 0x80000000u) bits = 0u;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Descending priority first, then ascending index: sorting these keys ascending gives the
// reference's order (np.lexsort((idx, -priority))). `index_bits` low bits hold the index.
EVE_HOST_DEVICE uint64_t PriorityKey(float priority, uint32_t index, int index_bits) {
  return (static_cast<uint64_t>(~OrderedBits(priority)) << index_bits) | index;
}

// Preferred expert and its priority for one valid token, in float32 as the reference does:
// S = P + prior (img_gbpr only), argmax with ties to expert 0.
struct Preference {
  int expert;
  float s0;
  float s1;
  float priority;
};

EVE_HOST_DEVICE Preference Prefer(float p0, float p1, bool is_image, float noise, const Params &params) {
  Preference pref;
  pref.s0 = p0;
  pref.s1 = p1;
  if (params.strategy == kImgGbpr) {
    // prior [0, beta] for image tokens, [beta, 0] for text tokens; adding 0 is exact.
    if (is_image) {
      pref.s1 = p1 + params.beta;
    } else {
      pref.s0 = p0 + params.beta;
    }
  }
  pref.expert = pref.s1 > pref.s0 ? 1 : 0;
  if (params.strategy == kRandom) {
    pref.priority = noise;
  } else {
    pref.priority = pref.expert == 1 ? pref.s1 : pref.s0;
  }
  return pref;
}

}  // namespace eve_alloc

#endif  // EVE_MS_OPS_KERNELS_ALLOCATION_COMMON_H_
