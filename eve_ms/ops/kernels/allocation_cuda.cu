// CUDA kernel of the token allocation (DESIGN section 3) for ops.Custom(func_type="aot") on GPU.
//
// Same semantics as eve_ms/ops/token_allocation.py::allocate_reference, bit for bit. Every
// token gets one 64-bit key  [group:2 | ~ordered(priority):32 | token index:ib]  (ib = bits
// needed for T), so one CUB radix sort yields, per group, "priority descending, index
// ascending" with no comparator and no ties (keys are unique):
//   pass 1: group = preferred expert (0/1), 3 for padding and for a valid token whose probability
//           row holds a NaN or inf (dropped: counted as valid, never kept, never offered); a token's
//           rank inside its group is its sorted position minus the group start; rank < capacity
//           keeps it, slot = rank.
//   pass 2 (img_gbpr only): group = target expert of an offered overflow token, priority
//           S[x, target]; rank < remaining room accepts it, slot = used + rank.
// Counts are derived from per-group totals, so no per-token atomics on the outputs.
// Limits: T < 2^30 tokens (index bits); the sort runs over 34 + ib bits. Workspace (set in
// Init): two key buffers (16 B/token), 8 counters, CUB temporary storage.
//
// Entry points: EveAllocationCudaInit (attributes + workspace size) and EveAllocationCuda for
// MindSpore's ops.Custom(func_type="aot"); EveAllocationCudaRawWorkspaceBytes and EveAllocationCudaRaw,
// the same computation on raw device pointers and a stream, for callers without MindSpore (the GPU
// parity path calls them through ctypes on PyTorch CUDA tensors, tools/cuda_raw.py).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cub/cub.cuh>
#include <vector>

#include "aot_extra.h"
#include "allocation_common.h"

namespace {

using eve_alloc::Params;

constexpr int kThreads = 256;
constexpr int kNumCounters = 8;
enum Counter { kPreferred0 = 0, kPreferred1 = 1, kValid = 2, kOffered0 = 3, kOffered1 = 4 };
constexpr uint64_t kPaddingGroup = 3;
constexpr size_t kAlign = 256;

class AllocationAttrs : public AotKernelData {
 public:
  Params params{};
  int64_t num_tokens = 0;
  int index_bits = 1;
  size_t cub_bytes = 0;
};

int IndexBits(int64_t num_tokens) {
  int bits = 1;
  while ((int64_t{1} << bits) < num_tokens) ++bits;
  return bits;
}

size_t AlignUp(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

struct Workspace {
  uint64_t *keys_a;
  uint64_t *keys_b;
  int32_t *counters;
  void *cub_temp;
};

size_t WorkspaceBytes(int64_t num_tokens, size_t cub_bytes) {
  return 2 * AlignUp(num_tokens * sizeof(uint64_t)) + AlignUp(kNumCounters * sizeof(int32_t)) + AlignUp(cub_bytes);
}

Workspace CarveWorkspace(void *base, int64_t num_tokens) {
  auto *bytes = static_cast<uint8_t *>(base);
  Workspace ws;
  ws.keys_a = reinterpret_cast<uint64_t *>(bytes);
  bytes += AlignUp(num_tokens * sizeof(uint64_t));
  ws.keys_b = reinterpret_cast<uint64_t *>(bytes);
  bytes += AlignUp(num_tokens * sizeof(uint64_t));
  ws.counters = reinterpret_cast<int32_t *>(bytes);
  bytes += AlignUp(kNumCounters * sizeof(int32_t));
  ws.cub_temp = bytes;
  return ws;
}

__device__ __forceinline__ uint64_t GroupKey(uint64_t group, float priority, uint32_t token, int index_bits) {
  return (group << (32 + index_bits)) | eve_alloc::PriorityKey(priority, token, index_bits);
}

__device__ __forceinline__ uint64_t PaddingKey(uint32_t token, int index_bits) {
  return (kPaddingGroup << (32 + index_bits)) | token;
}

__global__ void PrepareKeys(int64_t num_tokens, const float *probs, const bool *is_image, const bool *valid,
                            const float *noise, Params params, int index_bits, uint64_t *keys, int32_t *expert,
                            int32_t *slot, int32_t *counters) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= num_tokens) return;
  expert[t] = -1;
  slot[t] = -1;
  const uint32_t token = static_cast<uint32_t>(t);
  if (!valid[t]) {
    keys[t] = PaddingKey(token, index_bits);
    return;
  }
  atomicAdd(&counters[kValid], 1);
  const float p0 = probs[2 * t];
  const float p1 = probs[2 * t + 1];
  if (!isfinite(p0) || !isfinite(p1)) {  // non-finite router row: dropped, sorts with the padding
    keys[t] = PaddingKey(token, index_bits);
    return;
  }
  const auto pref = eve_alloc::Prefer(p0, p1, is_image[t], noise[t], params);
  atomicAdd(&counters[pref.expert == 0 ? kPreferred0 : kPreferred1], 1);
  keys[t] = GroupKey(static_cast<uint64_t>(pref.expert), pref.priority, token, index_bits);
}

// Pass 1 result: keep rank < capacity; for img_gbpr also build the pass-2 keys of offered overflow.
__global__ void KeepTopCapacity(int64_t num_tokens, const uint64_t *sorted, const float *probs, const bool *is_image,
                                const float *noise, Params params, int index_bits, int32_t *counters,
                                int32_t *expert, int32_t *slot, uint64_t *offered_keys) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_tokens) return;
  const uint64_t key = sorted[i];
  const uint64_t group = key >> (32 + index_bits);
  const uint32_t token = static_cast<uint32_t>(key & ((uint64_t{1} << index_bits) - 1));
  const bool redistribute = params.strategy == eve_alloc::kImgGbpr;
  if (redistribute) offered_keys[i] = PaddingKey(token, index_bits);
  if (group > 1) return;
  const int64_t rank = i - (group == 0 ? 0 : counters[kPreferred0]);
  if (rank < params.capacity) {
    expert[token] = static_cast<int32_t>(group);
    slot[token] = static_cast<int32_t>(rank);
    return;
  }
  if (!redistribute || !(noise[token] < params.ratio)) return;
  const int target = 1 - static_cast<int>(group);
  const auto pref = eve_alloc::Prefer(probs[2 * token], probs[2 * token + 1], is_image[token], noise[token], params);
  offered_keys[i] = GroupKey(static_cast<uint64_t>(target), target == 1 ? pref.s1 : pref.s0, token, index_bits);
  atomicAdd(&counters[target == 0 ? kOffered0 : kOffered1], 1);
}

// Pass 2 result: the target expert accepts offers by rank into its remaining room.
__global__ void AcceptOffers(int64_t num_tokens, const uint64_t *sorted, Params params, int index_bits,
                             const int32_t *counters, int32_t *expert, int32_t *slot) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_tokens) return;
  const uint64_t key = sorted[i];
  const uint64_t target = key >> (32 + index_bits);
  if (target > 1) return;
  const uint32_t token = static_cast<uint32_t>(key & ((uint64_t{1} << index_bits) - 1));
  const int64_t rank = i - (target == 0 ? 0 : counters[kOffered0]);
  const int64_t preferred = counters[target == 0 ? kPreferred0 : kPreferred1];
  const int64_t used = preferred < params.capacity ? preferred : params.capacity;
  if (rank < params.capacity - used) {
    expert[token] = static_cast<int32_t>(target);
    slot[token] = static_cast<int32_t>(used + rank);
  }
}

__global__ void WriteCounts(Params params, const int32_t *counters, int32_t *counts) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t kept[2];
  int64_t accepted[2] = {0, 0};
  for (int e = 0; e < 2; ++e) {
    const int64_t preferred = counters[e == 0 ? kPreferred0 : kPreferred1];
    kept[e] = preferred < params.capacity ? preferred : params.capacity;
  }
  if (params.strategy == eve_alloc::kImgGbpr) {
    for (int e = 0; e < 2; ++e) {
      const int64_t offered = counters[e == 0 ? kOffered0 : kOffered1];
      const int64_t room = params.capacity - kept[e];
      accepted[e] = offered < room ? offered : room;
    }
  }
  counts[0] = static_cast<int32_t>(kept[0] + accepted[0]);
  counts[1] = static_cast<int32_t>(kept[1] + accepted[1]);
  counts[2] = counters[kValid] - counts[0] - counts[1];
  counts[3] = static_cast<int32_t>(accepted[0] + accepted[1]);
}

cudaError_t CubBytes(int64_t num_tokens, size_t *bytes) {
  return cub::DeviceRadixSort::SortKeys(nullptr, *bytes, static_cast<const uint64_t *>(nullptr),
                                        static_cast<uint64_t *>(nullptr), static_cast<int>(num_tokens), 0,
                                        34 + IndexBits(num_tokens));
}

int Fail(int code, const char *why) {
  std::fprintf(stderr, "EveAllocationCuda: %s\n", why);
  return code;
}

int CheckLaunch(const char *stage) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return 0;
  std::fprintf(stderr, "EveAllocationCuda: %s failed: %s\n", stage, cudaGetErrorString(err));
  return 4;
}

// The whole allocation on `cu_stream`: keys, sort, keep, (img_gbpr) offers, sort, accept, counts.
int Launch(int64_t num_tokens, const float *probs, const bool *is_image, const bool *valid, const float *noise,
           const Params &p, int index_bits, int32_t *expert, int32_t *slot, int32_t *counts, void *workspace,
           size_t cub_bytes, cudaStream_t cu_stream) {
  Workspace ws = CarveWorkspace(workspace, num_tokens);
  const int ib = index_bits;
  const int end_bit = 34 + ib;
  const unsigned blocks = static_cast<unsigned>((num_tokens + kThreads - 1) / kThreads);

  if (cudaMemsetAsync(ws.counters, 0, kNumCounters * sizeof(int32_t), cu_stream) != cudaSuccess) {
    return Fail(4, "clearing counters failed");
  }
  PrepareKeys<<<blocks, kThreads, 0, cu_stream>>>(num_tokens, probs, is_image, valid, noise, p, ib, ws.keys_a, expert,
                                                  slot, ws.counters);
  if (int code = CheckLaunch("PrepareKeys")) return code;
  if (cub::DeviceRadixSort::SortKeys(ws.cub_temp, cub_bytes, ws.keys_a, ws.keys_b, static_cast<int>(num_tokens), 0,
                                     end_bit, cu_stream) != cudaSuccess) {
    return Fail(4, "radix sort (pass 1) failed");
  }
  KeepTopCapacity<<<blocks, kThreads, 0, cu_stream>>>(num_tokens, ws.keys_b, probs, is_image, noise, p, ib,
                                                      ws.counters, expert, slot, ws.keys_a);
  if (int code = CheckLaunch("KeepTopCapacity")) return code;
  if (p.strategy == eve_alloc::kImgGbpr) {
    if (cub::DeviceRadixSort::SortKeys(ws.cub_temp, cub_bytes, ws.keys_a, ws.keys_b, static_cast<int>(num_tokens),
                                       0, end_bit, cu_stream) != cudaSuccess) {
      return Fail(4, "radix sort (pass 2) failed");
    }
    AcceptOffers<<<blocks, kThreads, 0, cu_stream>>>(num_tokens, ws.keys_b, p, ib, ws.counters, expert, slot);
    if (int code = CheckLaunch("AcceptOffers")) return code;
  }
  WriteCounts<<<1, 1, 0, cu_stream>>>(p, ws.counters, counts);
  return CheckLaunch("WriteCounts");
}

}  // namespace

extern "C" int EveAllocationCudaInit(int *ndims, int64_t **shapes, const char **dtypes, AotExtra *extra) {
  (void)dtypes;
  if (extra == nullptr) return Fail(1, "no attribute data (AotExtra is null)");
  const char *names[] = {eve_alloc::kAttrCapacity, eve_alloc::kAttrStrategy, eve_alloc::kAttrBeta,
                         eve_alloc::kAttrRatio};
  for (const char *name : names) {
    if (!extra->HasAttr(name)) {
      std::fprintf(stderr, "EveAllocationCuda: missing attribute '%s'\n", name);
      return 1;
    }
  }
  if (ndims[0] != 2 || shapes[0][0] < 1 || shapes[0][0] >= (int64_t{1} << 30)) {
    return Fail(2, "probs must have shape [T, 2] with 1 <= T < 2^30");
  }
  auto *attrs = new AllocationAttrs;
  attrs->params.capacity = extra->GetAttrInt(eve_alloc::kAttrCapacity);
  attrs->params.strategy = extra->GetAttrInt(eve_alloc::kAttrStrategy);
  attrs->params.beta = extra->GetAttrFloat(eve_alloc::kAttrBeta);
  attrs->params.ratio = extra->GetAttrFloat(eve_alloc::kAttrRatio);
  attrs->num_tokens = shapes[0][0];
  attrs->index_bits = IndexBits(attrs->num_tokens);
  size_t cub_bytes = 0;
  if (CubBytes(attrs->num_tokens, &cub_bytes) != cudaSuccess) {
    delete attrs;
    return Fail(4, "querying the CUB radix sort workspace failed");
  }
  attrs->cub_bytes = cub_bytes;
  extra->SetWorkSpace({WorkspaceBytes(attrs->num_tokens, cub_bytes)});
  extra->DestructKernelData();  // Init runs again when shapes change
  extra->SetKernelData(attrs);
  return 0;
}

extern "C" int EveAllocationCuda(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
  constexpr int kTensors = eve_alloc::kNumInputs + eve_alloc::kNumOutputs;
  if (nparam != kTensors + 1) return Fail(1, "expected 4 inputs, 3 outputs and 1 workspace");
  const char *expected[kTensors] = {"float32", "bool", "bool", "float32", "int32", "int32", "int32"};
  for (int i = 0; i < kTensors; ++i) {
    if (std::strcmp(dtypes[i], expected[i]) != 0) return Fail(2, "unexpected dtype (probs/noise float32, masks bool)");
  }
  auto *aot_extra = static_cast<AotExtra *>(extra);
  const auto *attrs = aot_extra == nullptr ? nullptr : dynamic_cast<const AllocationAttrs *>(aot_extra->KernelData());
  if (attrs == nullptr) return Fail(1, "attributes were not initialised (EveAllocationCudaInit did not run)");
  const int64_t num_tokens = shapes[0][0];
  if (num_tokens != attrs->num_tokens || ndims[6] != 1 || shapes[6][0] != eve_alloc::kNumCounts) {
    return Fail(2, "shapes differ from those the kernel was initialised with");
  }
  const Params p = attrs->params;
  if (p.capacity < 0 || p.strategy < eve_alloc::kRandom || p.strategy > eve_alloc::kImgGbpr) {
    return Fail(3, "invalid attributes (capacity < 0 or unknown strategy code)");
  }
  return Launch(num_tokens, static_cast<const float *>(params[0]), static_cast<const bool *>(params[1]),
                static_cast<const bool *>(params[2]), static_cast<const float *>(params[3]), p, attrs->index_bits,
                static_cast<int32_t *>(params[4]), static_cast<int32_t *>(params[5]), static_cast<int32_t *>(params[6]),
                params[7], attrs->cub_bytes, static_cast<cudaStream_t>(stream));
}

extern "C" size_t EveAllocationCudaRawWorkspaceBytes(int64_t num_tokens) {
  if (num_tokens < 1 || num_tokens >= (int64_t{1} << 30)) return 0;
  size_t cub_bytes = 0;
  if (CubBytes(num_tokens, &cub_bytes) != cudaSuccess) return 0;
  return WorkspaceBytes(num_tokens, cub_bytes);
}

// Inputs and outputs are device pointers (probs [T, 2] float32, masks [T] bool, noise [T] float32; expert,
// slot [T] int32, counts [4] int32); `workspace` holds EveAllocationCudaRawWorkspaceBytes(T) bytes;
// `stream` is a cudaStream_t (0: the default stream). Returns 0, or the codes of EveAllocationCuda.
extern "C" int EveAllocationCudaRaw(int64_t num_tokens, const float *probs, const bool *is_image, const bool *valid,
                                    const float *noise, int64_t capacity, int64_t strategy, float beta, float ratio,
                                    int32_t *expert, int32_t *slot, int32_t *counts, void *workspace,
                                    size_t workspace_bytes, void *stream) {
  if (num_tokens < 1 || num_tokens >= (int64_t{1} << 30)) return Fail(2, "T must be in [1, 2^30)");
  if (capacity < 0 || capacity > num_tokens || strategy < eve_alloc::kRandom || strategy > eve_alloc::kImgGbpr) {
    return Fail(3, "invalid attributes (capacity outside [0, T] or unknown strategy code)");
  }
  size_t cub_bytes = 0;
  if (CubBytes(num_tokens, &cub_bytes) != cudaSuccess) return Fail(4, "querying the CUB radix sort workspace failed");
  if (workspace == nullptr || workspace_bytes < WorkspaceBytes(num_tokens, cub_bytes)) {
    return Fail(2, "workspace smaller than EveAllocationCudaRawWorkspaceBytes(T)");
  }
  const Params p{capacity, strategy, beta, ratio};
  return Launch(num_tokens, probs, is_image, valid, noise, p, IndexBits(num_tokens), expert, slot, counts, workspace,
                cub_bytes, static_cast<cudaStream_t>(stream));
}
