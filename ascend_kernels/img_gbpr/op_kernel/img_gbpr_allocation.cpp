// Kernel side of ImgGbprAllocation: the eve-ms token allocation on one AI Core.
//
// Semantics are those of eve_ms/ops/token_allocation.py::allocate_reference, bit for bit
// (and of the CPU/CUDA kernels in eve_ms/ops/kernels): float32 scores S = P + prior,
// argmax ties to expert 0, "priority descending, token index ascending" orders,
// redistribution of overflow with noise < W (img_gbpr) by S[x, other].
//
// Algorithm (scalar unit, O(T)): candidates are gathered in token order with a 32-bit key
// that is monotone in the float32 priority (-0 and +0 equal), and sorted by a stable LSD
// radix sort (8-bit digits), so equal priorities keep the lower token index first without
// any comparator. Work arrays (5 x T uint32) live in the Unified Buffer when they fit
// (about 9k tokens on Atlas A2), else in the GM user workspace; the host tiling decides.
// The allocation is one global decision over all T tokens, so it runs on a single core;
// its cost is small next to the FFNs it feeds.
#include "kernel_operator.h"

using namespace AscendC;

namespace {
constexpr int64_t kRandom = 0;
constexpr int64_t kImgGbpr = 2;
constexpr uint32_t kPadding = 0xFFu;       // state of a padding token
constexpr uint32_t kOverflow = 0x100u;     // state bit: overflowed its preferred expert
constexpr uint32_t kExpertMask = 0xFFu;
constexpr int64_t kAlignElems = 8;
constexpr uint32_t kBuckets = 256;
constexpr uint32_t kHistElems = 264;       // kBuckets + 1, rounded up to 32 bytes

__aicore__ inline uint32_t FloatBits(float value)
{
    union {
        float f;
        uint32_t u;
    } pun;
    pun.f = value;
    return pun.u;
}

// Ascending key order == descending priority; -0.0 and +0.0 map to the same key.
__aicore__ inline uint32_t DescendingKey(float priority)
{
    uint32_t bits = FloatBits(priority);
    if (bits == 0x80000000u) {
        bits = 0u;
    }
    const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return ~ordered;
}

struct Preference {
    uint32_t expert;
    float s0;
    float s1;
    float priority;
};

template <typename WorkArray>  // LocalTensor<uint32_t> (UB) or GlobalTensor<uint32_t> (GM)
class TokenAllocator {
public:
    __aicore__ inline TokenAllocator() {}

    __aicore__ inline void Init(GM_ADDR probs, GM_ADDR isImage, GM_ADDR valid, GM_ADDR noise, GM_ADDR expert,
                                GM_ADDR slot, GM_ADDR counts, const WorkArray &work,
                                const LocalTensor<uint32_t> &hist, int64_t numTokens, int64_t capacity,
                                int64_t strategy, float beta, float ratio)
    {
        numTokens_ = numTokens;
        capacity_ = capacity;
        strategy_ = strategy;
        beta_ = beta;
        ratio_ = ratio;
        probsGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(probs), 2 * numTokens);
        isImageGm_.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t *>(isImage), numTokens);
        validGm_.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t *>(valid), numTokens);
        noiseGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(noise), numTokens);
        expertGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(expert), numTokens);
        slotGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(slot), numTokens);
        countsGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(counts), 4);
        const int64_t stride = (numTokens + kAlignElems - 1) / kAlignElems * kAlignElems;
        key_ = work;
        token_ = work[stride];
        keyTmp_ = work[2 * stride];
        tokenTmp_ = work[3 * stride];
        state_ = work[4 * stride];
        hist_ = hist;
    }

    __aicore__ inline void Process()
    {
        // The scalar unit reads GM through its data cache: drop lines older than the inputs.
        DataCacheCleanAndInvalid<float, CacheLine::ENTIRE_DATA_CACHE, DcciDst::CACHELINE_OUT>(probsGm_);
        // Preferences, padding, and the number of candidates of each expert.
        int64_t preferred[2] = {0, 0};
        int64_t numValid = 0;
        for (int64_t t = 0; t < numTokens_; ++t) {
            expertGm_.SetValue(t, -1);
            slotGm_.SetValue(t, -1);
            if (validGm_.GetValue(t) == 0) {
                state_.SetValue(t, kPadding);
                continue;
            }
            const Preference pref = Prefer(t);
            state_.SetValue(t, pref.expert);
            ++preferred[pref.expert];
            ++numValid;
        }

        // 1. Candidates of expert 0 in [0, n0), of expert 1 in [n0, n0 + n1), in token order;
        //    each expert keeps its top-capacity by priority, slots in that order.
        int64_t fill[2] = {0, preferred[0]};
        for (int64_t t = 0; t < numTokens_; ++t) {
            const uint32_t state = state_.GetValue(t);
            if (state == kPadding) {
                continue;
            }
            const Preference pref = Prefer(t);
            key_.SetValue(fill[state], DescendingKey(pref.priority));
            token_.SetValue(fill[state], static_cast<uint32_t>(t));
            ++fill[state];
        }
        int64_t used[2] = {0, 0};
        for (uint32_t e = 0; e < 2; ++e) {
            const int64_t begin = e == 0 ? 0 : preferred[0];
            SortSegment(begin, preferred[e]);
            const int64_t kept = preferred[e] < capacity_ ? preferred[e] : capacity_;
            for (int64_t r = 0; r < preferred[e]; ++r) {
                const uint32_t t = token_.GetValue(begin + r);
                if (r < kept) {
                    expertGm_.SetValue(t, static_cast<int32_t>(e));
                    slotGm_.SetValue(t, static_cast<int32_t>(r));
                } else {
                    state_.SetValue(t, e | kOverflow);
                }
            }
            used[e] = kept;
        }

        // 2. img_gbpr: overflow with noise < W is offered to the other expert, which accepts
        //    by S[x, target] (ties to the lower index) into its remaining slots.
        int64_t accepted[2] = {0, 0};
        if (strategy_ == kImgGbpr) {
            for (uint32_t target = 0; target < 2; ++target) {
                const int64_t room = capacity_ - used[target];
                if (room <= 0) {
                    continue;
                }
                int64_t offered = 0;
                for (int64_t t = 0; t < numTokens_; ++t) {
                    const uint32_t state = state_.GetValue(t);
                    if (state == kPadding || (state & kOverflow) == 0 || (state & kExpertMask) != 1 - target ||
                        !(noiseGm_.GetValue(t) < ratio_)) {
                        continue;
                    }
                    const Preference pref = Prefer(t);
                    key_.SetValue(offered, DescendingKey(target == 1 ? pref.s1 : pref.s0));
                    token_.SetValue(offered, static_cast<uint32_t>(t));
                    ++offered;
                }
                SortSegment(0, offered);
                accepted[target] = offered < room ? offered : room;
                for (int64_t r = 0; r < accepted[target]; ++r) {
                    const uint32_t t = token_.GetValue(r);
                    expertGm_.SetValue(t, static_cast<int32_t>(target));
                    slotGm_.SetValue(t, static_cast<int32_t>(used[target] + r));
                }
            }
        }

        const int64_t kept0 = used[0] + accepted[0];
        const int64_t kept1 = used[1] + accepted[1];
        countsGm_.SetValue(0, static_cast<int32_t>(kept0));
        countsGm_.SetValue(1, static_cast<int32_t>(kept1));
        countsGm_.SetValue(2, static_cast<int32_t>(numValid - kept0 - kept1));
        countsGm_.SetValue(3, static_cast<int32_t>(accepted[0] + accepted[1]));
        // Scalar stores sit in the data cache: write them out before the kernel ends.
        DataCacheCleanAndInvalid<int32_t, CacheLine::ENTIRE_DATA_CACHE, DcciDst::CACHELINE_OUT>(expertGm_);
    }

private:
    __aicore__ inline Preference Prefer(int64_t t)
    {
        Preference pref;
        pref.s0 = probsGm_.GetValue(2 * t);
        pref.s1 = probsGm_.GetValue(2 * t + 1);
        if (strategy_ == kImgGbpr) {
            // prior [0, beta] for image tokens, [beta, 0] for text tokens, added in float32
            if (isImageGm_.GetValue(t) != 0) {
                pref.s1 = pref.s1 + beta_;
            } else {
                pref.s0 = pref.s0 + beta_;
            }
        }
        pref.expert = pref.s1 > pref.s0 ? 1u : 0u;  // argmax, ties to expert 0
        if (strategy_ == kRandom) {
            pref.priority = noiseGm_.GetValue(t);
        } else {
            pref.priority = pref.expert == 1u ? pref.s1 : pref.s0;
        }
        return pref;
    }

    // Stable LSD radix sort of (key, token)[begin, begin + len) by key; result stays in key_/token_.
    __aicore__ inline void SortSegment(int64_t begin, int64_t len)
    {
        if (len < 2) {
            return;
        }
        bool inTmp = false;
        for (uint32_t shift = 0; shift < 32; shift += 8) {
            WorkArray &srcKey = inTmp ? keyTmp_ : key_;
            WorkArray &srcToken = inTmp ? tokenTmp_ : token_;
            WorkArray &dstKey = inTmp ? key_ : keyTmp_;
            WorkArray &dstToken = inTmp ? token_ : tokenTmp_;
            for (uint32_t d = 0; d <= kBuckets; ++d) {
                hist_.SetValue(d, 0);
            }
            for (int64_t i = begin; i < begin + len; ++i) {
                const uint32_t digit = (srcKey.GetValue(i) >> shift) & 0xFFu;
                hist_.SetValue(digit + 1, hist_.GetValue(digit + 1) + 1);
            }
            bool trivial = false;
            for (uint32_t d = 1; d <= kBuckets; ++d) {
                trivial = trivial || hist_.GetValue(d) == static_cast<uint32_t>(len);
            }
            if (trivial) {
                continue;  // every key has this digit: the pass would not move anything
            }
            for (uint32_t d = 0; d < kBuckets; ++d) {
                hist_.SetValue(d + 1, hist_.GetValue(d + 1) + hist_.GetValue(d));
            }
            for (int64_t i = begin; i < begin + len; ++i) {
                const uint32_t k = srcKey.GetValue(i);
                const uint32_t digit = (k >> shift) & 0xFFu;
                const uint32_t pos = hist_.GetValue(digit);
                hist_.SetValue(digit, pos + 1);
                dstKey.SetValue(begin + pos, k);
                dstToken.SetValue(begin + pos, srcToken.GetValue(i));
            }
            inTmp = !inTmp;
        }
        if (inTmp) {
            for (int64_t i = begin; i < begin + len; ++i) {
                key_.SetValue(i, keyTmp_.GetValue(i));
                token_.SetValue(i, tokenTmp_.GetValue(i));
            }
        }
    }

    GlobalTensor<float> probsGm_;
    GlobalTensor<uint8_t> isImageGm_;
    GlobalTensor<uint8_t> validGm_;
    GlobalTensor<float> noiseGm_;
    GlobalTensor<int32_t> expertGm_;
    GlobalTensor<int32_t> slotGm_;
    GlobalTensor<int32_t> countsGm_;
    WorkArray key_;
    WorkArray token_;
    WorkArray keyTmp_;
    WorkArray tokenTmp_;
    WorkArray state_;
    LocalTensor<uint32_t> hist_;
    int64_t numTokens_ = 0;
    int64_t capacity_ = 0;
    int64_t strategy_ = 0;
    float beta_ = 0.0f;
    float ratio_ = 0.0f;
};
}  // namespace

extern "C" __global__ __aicore__ void img_gbpr_allocation(GM_ADDR probs, GM_ADDR is_image, GM_ADDR valid,
                                                          GM_ADDR noise, GM_ADDR expert, GM_ADDR slot, GM_ADDR counts,
                                                          GM_ADDR workspace, GM_ADDR tiling)
{
    GET_TILING_DATA(tilingData, tiling);
    if (GetBlockIdx() != 0) {
        return;
    }
    TPipe pipe;
    TBuf<TPosition::VECCALC> histBuf;
    pipe.InitBuffer(histBuf, kHistElems * sizeof(uint32_t));
    LocalTensor<uint32_t> hist = histBuf.Get<uint32_t>();
    if (tilingData.workInUb != 0) {
        TBuf<TPosition::VECCALC> workBuf;
        pipe.InitBuffer(workBuf, static_cast<uint32_t>(tilingData.workBytes));
        TokenAllocator<LocalTensor<uint32_t>> op;
        op.Init(probs, is_image, valid, noise, expert, slot, counts, workBuf.Get<uint32_t>(), hist,
                tilingData.numTokens, tilingData.capacity, tilingData.strategy, tilingData.beta, tilingData.ratio);
        op.Process();
    } else {
        GlobalTensor<uint32_t> work;
        work.SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t *>(GetUserWorkspace(workspace)),
                             tilingData.workBytes / sizeof(uint32_t));
        TokenAllocator<GlobalTensor<uint32_t>> op;
        op.Init(probs, is_image, valid, noise, expert, slot, counts, work, hist, tilingData.numTokens,
                tilingData.capacity, tilingData.strategy, tilingData.beta, tilingData.ratio);
        op.Process();
    }
}
