// CPU kernel of the token allocation (DESIGN section 3) for ops.Custom(func_type="aot").
//
// Same semantics as eve_ms/ops/token_allocation.py::allocate_reference, bit for bit: every
// comparison is on float32 values, orders are "priority descending, token index ascending".
// Candidates are collected in token order and sorted by a stable LSD radix sort on a 32-bit
// key that is monotone in the float priority, so ties keep the lower index first: O(T) per
// call, no comparator, no float compare in the sort at all.
//
// Non-finite router probabilities (a NaN or inf in a valid token's row) follow the reference:
// the token is dropped and counted, takes no slot, is never offered for redistribution, and
// every other token allocates as if it were padding.
//
// Entry points (MindSpore AOT convention):
//   EveAllocationCpuInit  reads the attributes once per kernel (capacity, strategy, beta,
//                         redistribute_ratio) into AotKernelData.
//   EveAllocationCpu      inputs probs, is_image, valid, noise; outputs expert, slot, counts.
// EveAllocateRaw is the same computation on plain pointers, for benchmarks and debugging.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "aot_extra.h"
#include "allocation_common.h"

namespace {

using eve_alloc::Params;

class AllocationAttrs : public AotKernelData {
 public:
  Params params{};
};

// Tokens competing for one expert, in increasing token order; key = ~OrderedBits(priority),
// so ascending keys are descending priorities.
struct Candidates {
  std::vector<uint32_t> key;
  std::vector<uint32_t> token;
  void Clear() {
    key.clear();
    token.clear();
  }
  void Add(float priority, int64_t t) {
    key.push_back(~eve_alloc::OrderedBits(priority));
    token.push_back(static_cast<uint32_t>(t));
  }
};

// Stable LSD radix sort of `c` by key (8-bit digits). Stability keeps equal priorities in
// token order, which is the reference's tie rule. Passes whose digit is constant are skipped.
void StableSortByKey(Candidates *c, Candidates *scratch) {
  const size_t n = c->key.size();
  scratch->key.resize(n);
  scratch->token.resize(n);
  for (int shift = 0; shift < 32; shift += 8) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; ++i) ++count[((c->key[i] >> shift) & 0xFFu) + 1];
    bool trivial = false;
    for (int d = 1; d <= 256; ++d) trivial = trivial || count[d] == n;
    if (trivial) continue;
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (size_t i = 0; i < n; ++i) {
      const size_t pos = count[(c->key[i] >> shift) & 0xFFu]++;
      scratch->key[pos] = c->key[i];
      scratch->token[pos] = c->token[i];
    }
    c->key.swap(scratch->key);
    c->token.swap(scratch->token);
  }
}

int Allocate(int64_t num_tokens, const float *probs, const uint8_t *is_image, const uint8_t *valid,
             const float *noise, const Params &params, int32_t *expert, int32_t *slot, int32_t *counts) {
  if (params.capacity < 0 || params.strategy < eve_alloc::kRandom || params.strategy > eve_alloc::kImgGbpr) {
    return 3;
  }
  const bool redistribute = params.strategy == eve_alloc::kImgGbpr;
  const size_t capacity = static_cast<size_t>(params.capacity);
  // Reused between calls: the kernel runs once per EVF layer per step with the same T.
  thread_local Candidates candidates[2];
  thread_local Candidates scratch;
  thread_local std::vector<int8_t> preferred;
  thread_local std::vector<uint8_t> overflow;
  preferred.assign(num_tokens, -1);
  overflow.assign(redistribute ? num_tokens : 0, 0);
  candidates[0].Clear();
  candidates[1].Clear();

  int64_t num_valid = 0;
  for (int64_t t = 0; t < num_tokens; ++t) {
    expert[t] = -1;
    slot[t] = -1;
    if (!valid[t]) continue;
    ++num_valid;  // a non-finite row counts as valid and dropped
    if (!std::isfinite(probs[2 * t]) || !std::isfinite(probs[2 * t + 1])) continue;
    const auto pref = eve_alloc::Prefer(probs[2 * t], probs[2 * t + 1], is_image[t] != 0, noise[t], params);
    preferred[t] = static_cast<int8_t>(pref.expert);
    candidates[pref.expert].Add(pref.priority, t);
  }

  // 1. Each expert keeps its top-`capacity` candidates; slots follow the priority order.
  int32_t used[2] = {0, 0};
  for (int e = 0; e < 2; ++e) {
    Candidates &c = candidates[e];
    StableSortByKey(&c, &scratch);
    const size_t kept = std::min(capacity, c.token.size());
    for (size_t r = 0; r < kept; ++r) {
      expert[c.token[r]] = e;
      slot[c.token[r]] = static_cast<int32_t>(r);
    }
    used[e] = static_cast<int32_t>(kept);
    if (redistribute) {
      for (size_t r = kept; r < c.token.size(); ++r) overflow[c.token[r]] = 1;
    }
  }

  // 2. img_gbpr: overflow with noise < W is offered to the other expert, which accepts by
  //    S[x, other] (ties to the lower index) into its remaining slots, continuing its slots.
  int32_t accepted_into[2] = {0, 0};
  if (redistribute) {
    for (int target = 0; target < 2; ++target) {
      const size_t room = static_cast<size_t>(std::max<int64_t>(params.capacity - used[target], 0));
      if (room == 0) continue;
      Candidates &offered = candidates[0];  // step 1 is done with these buffers
      offered.Clear();
      for (int64_t t = 0; t < num_tokens; ++t) {
        if (!overflow[t] || preferred[t] != 1 - target || !(noise[t] < params.ratio)) continue;
        const auto pref = eve_alloc::Prefer(probs[2 * t], probs[2 * t + 1], is_image[t] != 0, noise[t], params);
        offered.Add(target == 1 ? pref.s1 : pref.s0, t);
      }
      StableSortByKey(&offered, &scratch);
      const size_t accepted = std::min(room, offered.token.size());
      for (size_t r = 0; r < accepted; ++r) {
        expert[offered.token[r]] = target;
        slot[offered.token[r]] = used[target] + static_cast<int32_t>(r);
      }
      accepted_into[target] = static_cast<int32_t>(accepted);
    }
  }

  const int32_t kept0 = used[0] + accepted_into[0];
  const int32_t kept1 = used[1] + accepted_into[1];
  counts[0] = kept0;
  counts[1] = kept1;
  counts[2] = static_cast<int32_t>(num_valid) - kept0 - kept1;
  counts[3] = accepted_into[0] + accepted_into[1];
  return 0;
}

int Fail(int code, const char *why) {
  std::fprintf(stderr, "EveAllocationCpu: %s\n", why);
  return code;
}

}  // namespace

extern "C" int EveAllocationCpuInit(int *ndims, int64_t **shapes, const char **dtypes, AotExtra *extra) {
  (void)ndims;
  (void)shapes;
  (void)dtypes;
  if (extra == nullptr) return Fail(1, "no attribute data (AotExtra is null)");
  const char *names[] = {eve_alloc::kAttrCapacity, eve_alloc::kAttrStrategy, eve_alloc::kAttrBeta,
                         eve_alloc::kAttrRatio};
  for (const char *name : names) {
    if (!extra->HasAttr(name)) {
      std::fprintf(stderr, "EveAllocationCpu: missing attribute '%s'\n", name);
      return 1;
    }
  }
  auto *attrs = new AllocationAttrs;
  attrs->params.capacity = extra->GetAttrInt(eve_alloc::kAttrCapacity);
  attrs->params.strategy = extra->GetAttrInt(eve_alloc::kAttrStrategy);
  attrs->params.beta = extra->GetAttrFloat(eve_alloc::kAttrBeta);
  attrs->params.ratio = extra->GetAttrFloat(eve_alloc::kAttrRatio);
  extra->DestructKernelData();  // Init runs again when shapes change
  extra->SetKernelData(attrs);
  return 0;
}

extern "C" int EveAllocationCpu(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  (void)stream;
  constexpr int kParams = eve_alloc::kNumInputs + eve_alloc::kNumOutputs;
  if (nparam != kParams) return Fail(1, "expected 4 inputs and 3 outputs");
  const char *expected[kParams] = {"float32", "bool", "bool", "float32", "int32", "int32", "int32"};
  for (int i = 0; i < kParams; ++i) {
    if (std::strcmp(dtypes[i], expected[i]) != 0) return Fail(2, "unexpected dtype (probs/noise float32, masks bool)");
  }
  const int64_t num_tokens = shapes[0][0];
  if (ndims[0] != 2 || shapes[0][1] != 2) return Fail(2, "probs must have shape [T, 2]");
  for (int i = 1; i < kParams - 1; ++i) {
    if (ndims[i] != 1 || shapes[i][0] != num_tokens) return Fail(2, "is_image/valid/noise/expert/slot must be [T]");
  }
  if (ndims[6] != 1 || shapes[6][0] != eve_alloc::kNumCounts) return Fail(2, "counts must have shape [4]");
  auto *aot_extra = static_cast<AotExtra *>(extra);
  const auto *attrs = aot_extra == nullptr ? nullptr : dynamic_cast<const AllocationAttrs *>(aot_extra->KernelData());
  if (attrs == nullptr) return Fail(1, "attributes were not initialised (EveAllocationCpuInit did not run)");
  const int code = Allocate(num_tokens, static_cast<const float *>(params[0]), static_cast<const uint8_t *>(params[1]),
                            static_cast<const uint8_t *>(params[2]), static_cast<const float *>(params[3]),
                            attrs->params, static_cast<int32_t *>(params[4]), static_cast<int32_t *>(params[5]),
                            static_cast<int32_t *>(params[6]));
  return code == 0 ? 0 : Fail(code, "invalid attributes (capacity < 0 or unknown strategy code)");
}

extern "C" int EveAllocateRaw(int64_t num_tokens, const float *probs, const uint8_t *is_image, const uint8_t *valid,
                              const float *noise, int64_t capacity, int64_t strategy, float beta, float ratio,
                              int32_t *expert, int32_t *slot, int32_t *counts) {
  const Params params{capacity, strategy, beta, ratio};
  return Allocate(num_tokens, probs, is_image, valid, noise, params, expert, slot, counts);
}
