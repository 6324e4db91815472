// Kernel side of ImgGbprAllocation: the eve-ms token allocation on every vector core of an AI Core.
//
// Semantics are those of eve_ms/ops/token_allocation.py::allocate_reference, bit for bit (and of the
// CPU/CUDA kernels in eve_ms/ops/kernels): float32 scores S = P + prior, argmax ties to expert 0,
// "priority descending, token index ascending" orders, redistribution of overflow with noise < W
// (img_gbpr) by S[x, other]; a valid token whose probability row holds a NaN or inf is dropped
// (counted, never offered) and every other token allocates as if it were padding.
//
// Work split. Core c owns the tokens [c * rangeLen, (c + 1) * rangeLen). It reads them with DataCopyPad
// in tiles, computes scores, preferences, masks and 32-bit keys with vector instructions (the key of
// a priority is monotone descending in the float and maps -0.0 and +0.0 to the same value), and
// collects its competing tokens, in token order, as 8-byte records (key, group << 31 | token).
//
// Sort. A stable LSD radix sort on 8-bit digits over all cores orders the records by (group, key),
// i.e. by expert, then priority descending, then token index. Every pass: each core counts its
// records per (group, digit) bucket, writes that row to the workspace, SyncAll, reads every core's
// row, and from the totals and the rows of the cores before it knows where each of its buckets
// lands; it reorders its records in UB (each bucket starting 32-byte aligned) and moves each bucket
// to global memory with one DataCopyPad. No core ever writes single values to global memory. Digits
// equal across a group (found from the keys' OR/AND, exchanged in the first pass) are skipped. The
// last pass does not write the sorted array: it turns positions into ranks inside the expert and
// routes (rank, token) records to the core that owns the token (a second exchange, same scheme).
// The owner sets expert and slot (rank < capacity) or marks the overflow; for img_gbpr the offered
// overflow (noise < W) is sorted the same way by S[x, other] and accepted by rank into the room
// left. Each core finally writes its range of expert/slot once; core 0 writes the counts.
//
// Synchronisation: the kernel type is AIV-only (KERNEL_TYPE_AIV_ONLY), where the hardware SyncAll is
// not available, so SyncAll is the software one on a zeroed workspace area (each core zeroes it
// before its first SyncAll, as CANN documents). Data moving between pipes is ordered with
// SetFlag/WaitFlag; consecutive vector instructions rely on the compiler's automatic PIPE_V barriers.
// host_check/ runs this file on the host with every core modelled (see there).
#include "kernel_operator.h"

using namespace AscendC;

namespace {
constexpr int64_t kRandom = 0;
constexpr int64_t kImgGbpr = 2;
constexpr uint32_t kDigitBits = 8;
constexpr uint32_t kDigitMask = 0xFFu;
constexpr uint32_t kKeyDigits = 4;          // 32-bit keys
constexpr uint32_t kBuckets = 512;          // (group, digit)
constexpr uint32_t kRowWords = 576;         // one exchanged row: kBuckets counts + extras, 9 x 256 bytes
constexpr uint32_t kExtraOr = 512;          // + 2 * group: OR of the keys of the group
constexpr uint32_t kExtraAnd = 513;         // + 2 * group: AND of the keys of the group
constexpr uint32_t kExtraValid = 516;       // valid tokens (first pass of the preference sort)
constexpr uint32_t kGroupShift = 31;
constexpr uint32_t kTokenMask = 0x7FFFFFFFu;
constexpr uint32_t kRecordsPerBlock = 4;    // 8-byte records per 32-byte block
constexpr uint32_t kVecTokens = 128;        // vector instructions run on multiples of 128 tokens
constexpr uint32_t kGatherRepeatFloats = 64;  // 256 bytes per vector repeat
constexpr uint32_t kSyncWordsPerBlock = 8;  // SyncAll: 32 bytes per core
constexpr uint32_t kOwnerShift = 40;        // owner = token * ownerMul >> 40 (exact for T < 2^24)
constexpr uint32_t kOwnerWordsAlign = 64;   // owner exchanges send whole 256-byte repeats
constexpr int32_t kOverflowSlot = -2;       // slot of an overflowed token until redistribution decides
constexpr uint32_t kPositiveInf = 0x7F800000u;

__aicore__ inline uint32_t RoundUp(uint32_t value, uint32_t align) { return (value + align - 1) / align * align; }
__aicore__ inline uint32_t MinU(uint32_t a, uint32_t b) { return a < b ? a : b; }
__aicore__ inline uint32_t BitsBytes(uint32_t tokens) { return RoundUp(tokens / 8, 32); }

__aicore__ inline float FloatFromBits(uint32_t bits)
{
    union {
        uint32_t u;
        float f;
    } pun;
    pun.u = bits;
    return pun.f;
}

// Everything the source pipe of `event` (A in A_B) issued so far completes before pipe B goes on.
template <HardEvent event>
__aicore__ inline void WaitPipe()
{
    const event_t id = static_cast<event_t>(GetTPipePtr()->FetchEventID(event));
    SetFlag<event>(id);
    WaitFlag<event>(id);
}

// Unified Buffer plan; op_host/img_gbpr_allocation.cpp computes the same sizes for the tiling.
struct UbPlan {
    uint32_t expert, slot, otherKey, prefBits, offerBits, row, chunk, sync, counts, records, arena;
};

__aicore__ inline uint32_t PrepareArenaBytes(uint32_t tile)
{
    // probs (8), p0 p1 s0 s1 prio scratchA scratchB key (8 x 4), half (2), noise (4): 46 bytes a token,
    // then is_image, valid and two bit masks
    return 46 * tile + 2 * RoundUp(tile, 32) + 2 * BitsBytes(tile);
}

__aicore__ inline UbPlan PlanUb(uint32_t rangeLen, uint32_t tileLen, uint32_t blockNum, uint32_t chunkRows,
                                bool imgGbpr)
{
    UbPlan plan;
    plan.expert = 4 * rangeLen;
    plan.slot = 4 * rangeLen;
    plan.otherKey = imgGbpr ? 4 * rangeLen : 32;
    plan.prefBits = BitsBytes(rangeLen);
    plan.offerBits = imgGbpr ? BitsBytes(rangeLen) : 32;
    plan.row = kRowWords * 4;
    plan.chunk = chunkRows * kRowWords * 4;
    plan.sync = RoundUp(blockNum * kSyncWordsPerBlock * 4, 32);
    plan.counts = 32;
    plan.records = 8 * rangeLen;
    const uint32_t sorted = 8 * rangeLen + 3 * 8 * kBuckets;  // each bucket run starts 32-byte aligned
    const uint32_t prepare = PrepareArenaBytes(tileLen);
    plan.arena = sorted > prepare ? sorted : prepare;
    return plan;
}

class ImgGbprAllocationKernel {
public:
    __aicore__ inline ImgGbprAllocationKernel() {}

    // Tiling: the struct GET_TILING_DATA yields (fields of op_host/img_gbpr_allocation_tiling.h).
    template <typename Tiling>
    __aicore__ inline void Init(GM_ADDR probs, GM_ADDR isImage, GM_ADDR valid, GM_ADDR noise, GM_ADDR expert,
                                GM_ADDR slot, GM_ADDR counts, GM_ADDR userWorkspace, const Tiling &tiling, TPipe *pipe)
    {
        numTokens_ = static_cast<uint32_t>(tiling.numTokens);
        capacity_ = static_cast<uint32_t>(tiling.capacity);
        strategy_ = tiling.strategy;
        beta_ = tiling.beta;
        ratio_ = tiling.ratio;
        blockNum_ = static_cast<uint32_t>(GetBlockNum());
        blockIdx_ = static_cast<uint32_t>(GetBlockIdx());
        rangeLen_ = tiling.rangeLen;
        tileLen_ = tiling.tileLen;
        chunkRows_ = tiling.chunkRows;
        rangeBegin_ = blockIdx_ * rangeLen_;
        rangeCount_ = rangeBegin_ < numTokens_ ? MinU(rangeLen_, numTokens_ - rangeBegin_) : 0;
        ownerMul_ = (1ULL << kOwnerShift) / rangeLen_ + 1;
        imgGbpr_ = strategy_ == kImgGbpr;

        probsGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(probs), 2 * numTokens_);
        isImageGm_.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t *>(isImage), numTokens_);
        validGm_.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t *>(valid), numTokens_);
        noiseGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(noise), numTokens_);
        expertGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(expert), numTokens_);
        slotGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(slot), numTokens_);
        countsGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(counts), 4);
        syncGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(userWorkspace + tiling.syncOffset),
                                blockNum_ * kSyncWordsPerBlock);
        histGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(userWorkspace + tiling.histOffset),
                                2 * blockNum_ * kRowWords);
        recordsGm_[0].SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t *>(userWorkspace + tiling.recordOffsetA),
                                      2 * numTokens_);
        recordsGm_[1].SetGlobalBuffer(reinterpret_cast<__gm__ uint32_t *>(userWorkspace + tiling.recordOffsetB),
                                      2 * numTokens_);

        const UbPlan plan = PlanUb(rangeLen_, tileLen_, blockNum_, chunkRows_, imgGbpr_);
        pipe->InitBuffer(expertBuf_, plan.expert);
        pipe->InitBuffer(slotBuf_, plan.slot);
        pipe->InitBuffer(otherKeyBuf_, plan.otherKey);
        pipe->InitBuffer(prefBitsBuf_, plan.prefBits);
        pipe->InitBuffer(offerBitsBuf_, plan.offerBits);
        pipe->InitBuffer(rowBuf_, plan.row);
        pipe->InitBuffer(totalBuf_, plan.row);
        pipe->InitBuffer(beforeBuf_, plan.row);
        pipe->InitBuffer(cursorBuf_, plan.row);
        pipe->InitBuffer(chunkBuf_, plan.chunk);
        pipe->InitBuffer(syncBuf_, plan.sync);
        pipe->InitBuffer(countsBuf_, plan.counts);
        pipe->InitBuffer(recordsBuf_, plan.records);
        pipe->InitBuffer(arenaBuf_, plan.arena);
        expert_ = expertBuf_.Get<int32_t>();
        slot_ = slotBuf_.Get<int32_t>();
        otherKey_ = otherKeyBuf_.Get<uint32_t>();
        prefBits_ = prefBitsBuf_.Get<uint8_t>();
        offerBits_ = offerBitsBuf_.Get<uint8_t>();
        row_ = rowBuf_.Get<int32_t>();
        total_ = totalBuf_.Get<int32_t>();
        before_ = beforeBuf_.Get<int32_t>();
        cursor_ = cursorBuf_.Get<int32_t>();
        chunk_ = chunkBuf_.Get<int32_t>();
        syncUb_ = syncBuf_.Get<int32_t>();
        countsUb_ = countsBuf_.Get<int32_t>();
        records_ = recordsBuf_.Get<uint32_t>();
        arena_ = arenaBuf_.Get<uint8_t>();
        sorted_ = arena_.ReinterpretCast<uint32_t>();
    }

    __aicore__ inline void Process()
    {
        ZeroSyncFlags();
        Duplicate(expert_, static_cast<int32_t>(-1), static_cast<int32_t>(rangeLen_));
        Duplicate(slot_, static_cast<int32_t>(-1), static_cast<int32_t>(rangeLen_));
        WaitPipe<HardEvent::V_S>();

        // 1. Each expert keeps its top-capacity tokens by priority, slots in that order.
        uint32_t routed = Sort(CollectPreferences());
        const uint32_t numValid = validTotal_;
        const uint32_t preferred[2] = {groupTotal_[0], groupTotal_[1]};
        const uint32_t used[2] = {MinU(preferred[0], capacity_), MinU(preferred[1], capacity_)};
        const uint32_t room[2] = {capacity_ - used[0], capacity_ - used[1]};
        // Redistribution can only place tokens where one expert overflowed and the other has room.
        const bool redistribute =
            imgGbpr_ && ((room[0] > 0 && preferred[1] > capacity_) || (room[1] > 0 && preferred[0] > capacity_));
        KeepTopCapacity(routed, redistribute);

        // 2. img_gbpr: offered overflow (noise < W) is accepted by S[x, target] into the room left.
        uint32_t accepted[2] = {0, 0};
        if (redistribute) {
            routed = Sort(CollectOffers());
            AcceptOffers(routed, used, room);
            accepted[0] = MinU(groupTotal_[0], room[0]);
            accepted[1] = MinU(groupTotal_[1], room[1]);
            WaitPipe<HardEvent::S_V>();
            Maxs(slot_, slot_, static_cast<int32_t>(-1), static_cast<int32_t>(rangeLen_));  // unplaced overflow: -1
        }
        WriteOutputs(used, accepted, numValid);
    }

private:
    // The software SyncAll counts on zeroed flags; every core zeroes all of them before its first SyncAll.
    __aicore__ inline void ZeroSyncFlags()
    {
        Duplicate(syncUb_, static_cast<int32_t>(0), static_cast<int32_t>(blockNum_ * kSyncWordsPerBlock));
        WaitPipe<HardEvent::V_MTE3>();
        DataCopy(syncGm_, syncUb_, blockNum_ * kSyncWordsPerBlock);
    }

    __aicore__ inline void AllCoresReach()
    {
        PipeBarrier<PIPE_ALL>();  // this core's global-memory writes are complete
        SyncAll<true>(syncGm_, syncUb_);
    }

    // ---- keys and preferences (vector) --------------------------------------------------------------

    // dst = key of src, ascending key = descending priority, -0.0 and +0.0 equal; src is overwritten.
    // key = bits ^ (sign ? 0 : 0x7FFFFFFF), computed with 16-bit logic on the 32-bit words.
    __aicore__ inline void DescendingKey(const LocalTensor<uint32_t> &dst, const LocalTensor<float> &src,
                                         const LocalTensor<uint32_t> &scratchA, const LocalTensor<uint32_t> &scratchB,
                                         uint32_t count)
    {
        const int32_t n = static_cast<int32_t>(count);
        const int32_t halves = static_cast<int32_t>(2 * count);
        Adds(src, src, 0.0f, n);  // -0.0 + 0.0 = +0.0; every other value unchanged
        LocalTensor<int32_t> sign = scratchA.ReinterpretCast<int32_t>();
        ShiftRight(sign, src.ReinterpretCast<int32_t>(), static_cast<int32_t>(31), n);  // 0 or -1
        LocalTensor<uint16_t> mask16 = scratchB.ReinterpretCast<uint16_t>();
        Not(mask16, sign.ReinterpretCast<uint16_t>(), halves);
        ShiftRight(scratchB, scratchB, static_cast<uint32_t>(1), n);  // 0x7FFFFFFF or 0
        LocalTensor<uint16_t> bits16 = src.ReinterpretCast<uint16_t>();
        LocalTensor<uint16_t> both16 = scratchA.ReinterpretCast<uint16_t>();
        And(both16, bits16, mask16, halves);
        Not(both16, both16, halves);
        LocalTensor<uint16_t> dst16 = dst.ReinterpretCast<uint16_t>();
        Or(dst16, bits16, mask16, halves);
        And(dst16, dst16, both16, halves);  // (bits | mask) & ~(bits & mask) = bits ^ mask
    }

    // Reads tokens [begin, begin + count) of this core's range and leaves, for the tile: keys of the
    // priorities, the competing bits (valid and finite), the valid bytes; preference bits (and for
    // img_gbpr the other expert's key and the offer bits) go to the range-wide arrays.
    __aicore__ inline void PrepareTile(uint32_t begin, uint32_t count)
    {
        const uint32_t vec = RoundUp(count, kVecTokens);
        const uint32_t L = tileLen_;
        LocalTensor<float> probs = arena_.ReinterpretCast<float>();
        LocalTensor<float> p0 = arena_[8 * L].ReinterpretCast<float>();
        LocalTensor<float> p1 = arena_[12 * L].ReinterpretCast<float>();
        LocalTensor<float> s0 = arena_[16 * L].ReinterpretCast<float>();
        LocalTensor<float> s1 = arena_[20 * L].ReinterpretCast<float>();
        LocalTensor<float> prio = arena_[24 * L].ReinterpretCast<float>();
        LocalTensor<uint32_t> scratchA = arena_[28 * L].ReinterpretCast<uint32_t>();
        LocalTensor<uint32_t> scratchB = arena_[32 * L].ReinterpretCast<uint32_t>();
        LocalTensor<uint32_t> key = arena_[36 * L].ReinterpretCast<uint32_t>();
        LocalTensor<half> halfTmp = arena_[40 * L].ReinterpretCast<half>();
        LocalTensor<float> noise = arena_[42 * L].ReinterpretCast<float>();
        LocalTensor<uint8_t> image = arena_[46 * L];
        LocalTensor<uint8_t> valid = arena_[46 * L + RoundUp(L, 32)];
        LocalTensor<uint8_t> compete = arena_[46 * L + 2 * RoundUp(L, 32)];
        LocalTensor<uint8_t> finite = arena_[46 * L + 2 * RoundUp(L, 32) + BitsBytes(L)];
        LocalTensor<float> scratchF = scratchA.ReinterpretCast<float>();
        LocalTensor<uint8_t> pref = prefBits_[begin / 8];

        // The previous tile's scalar and vector reads of the arena are done before it is refilled.
        WaitPipe<HardEvent::S_MTE2>();
        WaitPipe<HardEvent::V_MTE2>();
        WaitPipe<HardEvent::S_V>();
        const uint32_t token = rangeBegin_ + begin;
        const DataCopyPadExtParams<float> noPadF{false, 0, 0, 0.0f};
        const DataCopyPadExtParams<uint8_t> noPadU8{false, 0, 0, 0};
        DataCopyPad(probs, probsGm_[2 * token], DataCopyExtParams{1, 8 * count, 0, 0, 0}, noPadF);
        DataCopyPad(image, isImageGm_[token], DataCopyExtParams{1, count, 0, 0, 0}, noPadU8);
        DataCopyPad(valid, validGm_[token], DataCopyExtParams{1, count, 0, 0, 0}, noPadU8);
        DataCopyPad(noise, noiseGm_[token], DataCopyExtParams{1, 4 * count, 0, 0, 0}, noPadF);
        WaitPipe<HardEvent::MTE2_V>();

        // P[:, 0] and P[:, 1] out of the interleaved rows (even / odd elements of each 256-byte repeat)
        uint64_t gathered = 0;
        const GatherMaskParams rows{1, static_cast<uint16_t>(2 * vec / kGatherRepeatFloats), 8, 0};
        GatherMask(p0, probs, static_cast<uint8_t>(1), false, 0, rows, gathered);
        GatherMask(p1, probs, static_cast<uint8_t>(2), false, 0, rows, gathered);

        // competing = valid and both probabilities finite (|p| < inf is false for NaN and inf)
        const int32_t n = static_cast<int32_t>(vec);
        const int32_t maskHalves = static_cast<int32_t>(vec / 16);
        const float inf = FloatFromBits(kPositiveInf);
        const LocalTensor<uint16_t> competeBits = compete.ReinterpretCast<uint16_t>();
        const LocalTensor<uint16_t> finiteBits = finite.ReinterpretCast<uint16_t>();
        Cast(halfTmp, valid, RoundMode::CAST_NONE, vec);
        Compares(compete, halfTmp, static_cast<half>(0.5f), CMPMODE::GT, vec);
        Abs(scratchF, p0, n);
        Compares(finite, scratchF, inf, CMPMODE::LT, vec);
        And(competeBits, competeBits, finiteBits, maskHalves);
        Abs(scratchF, p1, n);
        Compares(finite, scratchF, inf, CMPMODE::LT, vec);
        And(competeBits, competeBits, finiteBits, maskHalves);

        // S = P + prior: [beta * (1 - image), beta * image], each one float32 addition as in the reference
        LocalTensor<float> score0 = p0;
        LocalTensor<float> score1 = p1;
        if (imgGbpr_) {
            Cast(halfTmp, image, RoundMode::CAST_NONE, vec);
            Cast(scratchF, halfTmp, RoundMode::CAST_NONE, vec);  // 1.0 for image tokens, 0.0 for text
            Muls(s1, scratchF, beta_, n);
            Add(s1, p1, s1, n);
            Muls(s0, scratchF, -beta_, n);
            Adds(s0, s0, beta_, n);
            Add(s0, p0, s0, n);
            score0 = s0;
            score1 = s1;
        }
        // preferred expert: S1 > S0 (ties to expert 0); priority: noise (random) or S[pref]
        Compare(pref, score1, score0, CMPMODE::GT, vec);
        LocalTensor<float> priority = noise;
        if (strategy_ != kRandom) {
            Select(prio, pref, score1, score0, SELMODE::VSEL_TENSOR_TENSOR_MODE, vec);
            priority = prio;
        }
        if (imgGbpr_) {
            // S of the other expert and the offer mask, kept for redistribution
            Select(scratchF, pref, score0, score1, SELMODE::VSEL_TENSOR_TENSOR_MODE, vec);
            LocalTensor<float> other = s0;  // s0/s1 are no longer needed
            Adds(other, scratchF, 0.0f, n);
            Compares(offerBits_[begin / 8], noise, ratio_, CMPMODE::LT, vec);
            DescendingKey(otherKey_[begin], other, scratchA, scratchB, vec);
        }
        if (strategy_ == kRandom) {
            Adds(prio, noise, 0.0f, n);  // keep the noise: DescendingKey overwrites its source
            priority = prio;
        }
        DescendingKey(key, priority, scratchA, scratchB, vec);
        WaitPipe<HardEvent::V_S>();
    }

    // Records (key, preferred << 31 | token) of this core's competing tokens in token order, their
    // first-digit histogram, key OR/AND per group and the valid count in row_. Returns the count.
    __aicore__ inline uint32_t CollectPreferences()
    {
        ResetRow();
        uint32_t count = 0;
        uint32_t numValid = 0;
        uint32_t orKeys[2] = {0u, 0u};
        uint32_t andKeys[2] = {0xFFFFFFFFu, 0xFFFFFFFFu};
        const uint32_t L = tileLen_;
        LocalTensor<uint32_t> key = arena_[36 * L].ReinterpretCast<uint32_t>();
        LocalTensor<uint8_t> valid = arena_[46 * L + RoundUp(L, 32)];
        LocalTensor<uint8_t> compete = arena_[46 * L + 2 * RoundUp(L, 32)];
        for (uint32_t begin = 0; begin < rangeCount_; begin += L) {
            const uint32_t tile = MinU(L, rangeCount_ - begin);
            PrepareTile(begin, tile);
            WaitPipe<HardEvent::MTE2_S>();
            for (uint32_t t = 0; t < tile; ++t) {
                numValid += valid.GetValue(t) != 0 ? 1u : 0u;
                if (!Bit(compete, t)) {
                    continue;
                }
                const uint32_t k = key.GetValue(t);
                const uint32_t group = Bit(prefBits_, begin + t) ? 1u : 0u;
                const uint32_t payload = (group << kGroupShift) | (rangeBegin_ + begin + t);
                records_.SetValue(2 * count, k);
                records_.SetValue(2 * count + 1, payload);
                ++count;
                CountRecord(k, payload, 0);
                orKeys[group] |= k;
                andKeys[group] &= k;
            }
        }
        SetExtras(orKeys, andKeys, numValid);
        return count;
    }

    // Records (key of S[x, target], target << 31 | token) of this core's offered overflow, in token order.
    __aicore__ inline uint32_t CollectOffers()
    {
        ResetRow();
        uint32_t count = 0;
        uint32_t orKeys[2] = {0u, 0u};
        uint32_t andKeys[2] = {0xFFFFFFFFu, 0xFFFFFFFFu};
        for (uint32_t t = 0; t < rangeCount_; ++t) {
            if (slot_.GetValue(t) != kOverflowSlot || !Bit(offerBits_, t)) {
                continue;
            }
            const uint32_t target = Bit(prefBits_, t) ? 0u : 1u;
            const uint32_t k = otherKey_.GetValue(t);
            const uint32_t payload = (target << kGroupShift) | (rangeBegin_ + t);
            records_.SetValue(2 * count, k);
            records_.SetValue(2 * count + 1, payload);
            ++count;
            CountRecord(k, payload, 0);
            orKeys[target] |= k;
            andKeys[target] &= k;
        }
        SetExtras(orKeys, andKeys, 0);
        return count;
    }

    // ---- multi-core sort ------------------------------------------------------------------------------

    // Sorts every core's records (records_[0, count), row_ holding their first-digit histogram) by
    // (group, key) over all cores and routes (rank inside the group, payload) to the owning cores.
    // Returns how many records this core received (in records_); groupTotal_ holds the group sizes.
    __aicore__ inline uint32_t Sort(uint32_t count)
    {
        Exchange(kRowWords);
        validTotal_ = static_cast<uint32_t>(total_.GetValue(kExtraValid));
        groupTotal_[0] = 0;
        groupTotal_[1] = 0;
        for (uint32_t b = 0; b < kBuckets; ++b) {
            groupTotal_[b >> kDigitBits] += static_cast<uint32_t>(total_.GetValue(b));
        }
        const uint32_t records = groupTotal_[0] + groupTotal_[1];
        if (records == 0) {
            return 0;
        }
        uint32_t digits[kKeyDigits] = {0, 0, 0, 0};
        uint32_t passes = 1;  // the first digit always runs: it gathers the records into global memory
        for (uint32_t d = 1; d < kKeyDigits; ++d) {
            bool differs = false;
            for (uint32_t g = 0; g < 2; ++g) {
                const uint32_t varying = (orKeys_[g] ^ andKeys_[g]) >> (kDigitBits * d);  // bits not equal in all keys
                differs = differs || (groupTotal_[g] > 0 && (varying & kDigitMask) != 0);
            }
            if (differs) {
                digits[passes++] = d;
            }
        }
        uint32_t src = 0;
        for (uint32_t p = 0; p < passes; ++p) {
            const uint32_t shift = kDigitBits * digits[p];
            if (p > 0) {
                AllCoresReach();  // the previous pass's runs are in global memory
                count = LoadSegment(recordsGm_[src], records);
                ResetRow();
                for (uint32_t i = 0; i < count; ++i) {
                    CountRecord(records_.GetValue(2 * i), records_.GetValue(2 * i + 1), shift);
                }
                Exchange(kRowWords);
            }
            const uint32_t dst = p == 0 ? 0 : 1 - src;
            if (p + 1 < passes) {
                Scatter(count, shift, recordsGm_[dst]);
                src = dst;
            } else {
                GlobalOffsets(kBuckets);
                return Route(count, shift, recordsGm_[dst]);
            }
        }
        return 0;
    }

    // The records [c * seg, (c + 1) * seg) of a sorted array of `records`, seg = ceil(records / cores).
    __aicore__ inline uint32_t LoadSegment(const GlobalTensor<uint32_t> &src, uint32_t records)
    {
        const uint32_t seg = (records + blockNum_ - 1) / blockNum_;
        const uint32_t begin = blockIdx_ * seg;
        const uint32_t count = begin < records ? MinU(seg, records - begin) : 0;
        WaitPipe<HardEvent::S_MTE2>();  // records_ was read by the scalar unit
        if (count > 0) {
            DataCopyPad(records_, src[2 * begin], DataCopyExtParams{1, 8 * count, 0, 0, 0},
                        DataCopyPadExtParams<uint32_t>{false, 0, 0, 0});
        }
        WaitPipe<HardEvent::MTE2_S>();
        return count;
    }

    // Publishes the first `words` of row_, waits for every core, and leaves in total_ the sum of all rows
    // and in before_ the sum of the rows of the cores before this one; with the extras (all kRowWords),
    // the OR/AND of the keys per group. Owner exchanges send only ceil(cores / 64) * 64 words.
    __aicore__ inline void Exchange(uint32_t words)
    {
        WaitPipe<HardEvent::S_MTE3>();
        WaitPipe<HardEvent::V_MTE3>();
        const uint32_t base = parity_ * blockNum_ * kRowWords;
        DataCopy(histGm_[base + blockIdx_ * kRowWords], row_, words);
        AllCoresReach();
        WaitPipe<HardEvent::S_V>();  // total_/before_ were last read by the scalar unit
        Duplicate(total_, static_cast<int32_t>(0), static_cast<int32_t>(words));
        Duplicate(before_, static_cast<int32_t>(0), static_cast<int32_t>(words));
        const bool extras = words == kRowWords;
        orKeys_[0] = orKeys_[1] = 0u;
        andKeys_[0] = andKeys_[1] = 0xFFFFFFFFu;
        for (uint32_t first = 0; first < blockNum_; first += chunkRows_) {
            const uint32_t rows = MinU(chunkRows_, blockNum_ - first);
            WaitPipe<HardEvent::V_MTE2>();  // the previous chunk was read by the vector unit
            WaitPipe<HardEvent::S_MTE2>();  // ... and by the scalar unit
            // rows of `words` out of rows of kRowWords, packed in UB
            DataCopyPad(chunk_, histGm_[base + first * kRowWords],
                        DataCopyExtParams{static_cast<uint16_t>(rows), 4 * words, 4 * (kRowWords - words), 0, 0},
                        DataCopyPadExtParams<int32_t>{false, 0, 0, 0});
            WaitPipe<HardEvent::MTE2_V>();
            WaitPipe<HardEvent::MTE2_S>();
            for (uint32_t r = 0; r < rows; ++r) {
                const LocalTensor<int32_t> row = chunk_[r * words];
                Add(total_, total_, row, static_cast<int32_t>(words));
                if (first + r < blockIdx_) {
                    Add(before_, before_, row, static_cast<int32_t>(words));
                }
                for (uint32_t g = 0; extras && g < 2; ++g) {
                    orKeys_[g] |= static_cast<uint32_t>(row.GetValue(kExtraOr + 2 * g));
                    andKeys_[g] &= static_cast<uint32_t>(row.GetValue(kExtraAnd + 2 * g));
                }
            }
        }
        WaitPipe<HardEvent::V_S>();
        parity_ ^= 1u;
    }

    // before_[b] becomes the global position where this core's bucket b starts (buckets it holds records of).
    __aicore__ inline void GlobalOffsets(uint32_t buckets)
    {
        int32_t running = 0;
        for (uint32_t b = 0; b < buckets; ++b) {
            if (row_.GetValue(b) != 0) {
                before_.SetValue(b, running + before_.GetValue(b));
            }
            running += total_.GetValue(b);
        }
    }

    // Local stable counting sort by bucket into sorted_ (each bucket from a 32-byte boundary), then one
    // DataCopyPad per non-empty bucket to its global position.
    __aicore__ inline void Scatter(uint32_t count, uint32_t shift, const GlobalTensor<uint32_t> &dst)
    {
        AlignedStarts(kBuckets);
        for (uint32_t i = 0; i < count; ++i) {
            const uint32_t k = records_.GetValue(2 * i);
            const uint32_t payload = records_.GetValue(2 * i + 1);
            const uint32_t b = Bucket(k, payload, shift);
            const int32_t pos = cursor_.GetValue(b);
            cursor_.SetValue(b, pos + 1);
            sorted_.SetValue(2 * pos, k);
            sorted_.SetValue(2 * pos + 1, payload);
        }
        WriteRuns(kBuckets, dst);
    }

    // Last pass: rank of each record inside its group, then (rank, payload) to the core owning the token.
    __aicore__ inline uint32_t Route(uint32_t count, uint32_t shift, const GlobalTensor<uint32_t> &dst)
    {
        const uint32_t groupStart[2] = {0u, groupTotal_[0]};
        ResetRow();
        for (uint32_t i = 0; i < count; ++i) {
            const uint32_t payload = records_.GetValue(2 * i + 1);
            const uint32_t b = Bucket(records_.GetValue(2 * i), payload, shift);
            const int32_t pos = before_.GetValue(b);
            before_.SetValue(b, pos + 1);
            records_.SetValue(2 * i, static_cast<uint32_t>(pos) - groupStart[payload >> kGroupShift]);
            const uint32_t owner = Owner(payload);
            row_.SetValue(owner, row_.GetValue(owner) + 1);
        }
        Exchange(RoundUp(blockNum_, kOwnerWordsAlign));
        uint32_t regionStart = 0;
        for (uint32_t o = 0; o < blockIdx_; ++o) {
            regionStart += static_cast<uint32_t>(total_.GetValue(o));
        }
        const uint32_t regionCount = static_cast<uint32_t>(total_.GetValue(blockIdx_));
        AlignedStarts(blockNum_);
        for (uint32_t i = 0; i < count; ++i) {
            const uint32_t payload = records_.GetValue(2 * i + 1);
            const uint32_t owner = Owner(payload);
            const int32_t pos = cursor_.GetValue(owner);
            cursor_.SetValue(owner, pos + 1);
            sorted_.SetValue(2 * pos, records_.GetValue(2 * i));
            sorted_.SetValue(2 * pos + 1, payload);
        }
        WriteRuns(blockNum_, dst);
        AllCoresReach();  // every core's records are in their owners' regions
        if (regionCount > 0) {
            DataCopyPad(records_, dst[2 * regionStart], DataCopyExtParams{1, 8 * regionCount, 0, 0, 0},
                        DataCopyPadExtParams<uint32_t>{false, 0, 0, 0});
        }
        WaitPipe<HardEvent::MTE2_S>();
        return regionCount;
    }

    // cursor_[b] = start of bucket b in sorted_, buckets in order, each rounded up to 4 records.
    __aicore__ inline void AlignedStarts(uint32_t buckets)
    {
        int32_t pos = 0;
        for (uint32_t b = 0; b < buckets; ++b) {
            cursor_.SetValue(b, pos);
            pos += static_cast<int32_t>(RoundUp(static_cast<uint32_t>(row_.GetValue(b)), kRecordsPerBlock));
        }
    }

    // One DataCopyPad per non-empty bucket: its sorted_ run goes to the bucket's global position, the
    // records of all buckets before it (totals) plus those of the cores before this one (before_).
    __aicore__ inline void WriteRuns(uint32_t buckets, const GlobalTensor<uint32_t> &dst)
    {
        WaitPipe<HardEvent::S_MTE3>();
        uint32_t running = 0;
        for (uint32_t b = 0; b < buckets; ++b) {
            const uint32_t n = static_cast<uint32_t>(row_.GetValue(b));
            if (n != 0) {
                const uint32_t start = static_cast<uint32_t>(cursor_.GetValue(b)) - n;
                const uint32_t to = running + static_cast<uint32_t>(before_.GetValue(b));
                DataCopyPad(dst[2 * to], sorted_[2 * start], DataCopyExtParams{1, 8 * n, 0, 0, 0});
            }
            running += static_cast<uint32_t>(total_.GetValue(b));
        }
    }

    // ---- owners ---------------------------------------------------------------------------------------

    __aicore__ inline void KeepTopCapacity(uint32_t routed, bool markOverflow)
    {
        for (uint32_t i = 0; i < routed; ++i) {
            const uint32_t rank = records_.GetValue(2 * i);
            const uint32_t payload = records_.GetValue(2 * i + 1);
            const uint32_t t = (payload & kTokenMask) - rangeBegin_;
            if (rank < capacity_) {
                expert_.SetValue(t, static_cast<int32_t>(payload >> kGroupShift));
                slot_.SetValue(t, static_cast<int32_t>(rank));
            } else if (markOverflow) {
                slot_.SetValue(t, kOverflowSlot);
            }
        }
    }

    __aicore__ inline void AcceptOffers(uint32_t routed, const uint32_t used[2], const uint32_t room[2])
    {
        for (uint32_t i = 0; i < routed; ++i) {
            const uint32_t rank = records_.GetValue(2 * i);
            const uint32_t payload = records_.GetValue(2 * i + 1);
            const uint32_t target = payload >> kGroupShift;
            if (rank < room[target]) {
                const uint32_t t = (payload & kTokenMask) - rangeBegin_;
                expert_.SetValue(t, static_cast<int32_t>(target));
                slot_.SetValue(t, static_cast<int32_t>(used[target] + rank));
            }
        }
    }

    __aicore__ inline void WriteOutputs(const uint32_t used[2], const uint32_t accepted[2], uint32_t numValid)
    {
        WaitPipe<HardEvent::S_MTE3>();
        WaitPipe<HardEvent::V_MTE3>();
        if (rangeCount_ > 0) {
            DataCopyPad(expertGm_[rangeBegin_], expert_, DataCopyExtParams{1, 4 * rangeCount_, 0, 0, 0});
            DataCopyPad(slotGm_[rangeBegin_], slot_, DataCopyExtParams{1, 4 * rangeCount_, 0, 0, 0});
        }
        if (blockIdx_ == 0) {
            const uint32_t kept0 = used[0] + accepted[0];
            const uint32_t kept1 = used[1] + accepted[1];
            countsUb_.SetValue(0, static_cast<int32_t>(kept0));
            countsUb_.SetValue(1, static_cast<int32_t>(kept1));
            countsUb_.SetValue(2, static_cast<int32_t>(numValid - kept0 - kept1));
            countsUb_.SetValue(3, static_cast<int32_t>(accepted[0] + accepted[1]));
            WaitPipe<HardEvent::S_MTE3>();
            DataCopyPad(countsGm_, countsUb_, DataCopyExtParams{1, 16, 0, 0, 0});
        }
    }

    // ---- small helpers --------------------------------------------------------------------------------

    __aicore__ inline void ResetRow()
    {
        WaitPipe<HardEvent::MTE3_V>();  // row_ may still be on its way to the previous exchange
        WaitPipe<HardEvent::S_V>();
        Duplicate(row_, static_cast<int32_t>(0), static_cast<int32_t>(kRowWords));
        WaitPipe<HardEvent::V_S>();
    }

    __aicore__ inline void SetExtras(const uint32_t orKeys[2], const uint32_t andKeys[2], uint32_t numValid)
    {
        for (uint32_t g = 0; g < 2; ++g) {
            row_.SetValue(kExtraOr + 2 * g, static_cast<int32_t>(orKeys[g]));
            row_.SetValue(kExtraAnd + 2 * g, static_cast<int32_t>(andKeys[g]));
        }
        row_.SetValue(kExtraValid, static_cast<int32_t>(numValid));
    }

    __aicore__ inline void CountRecord(uint32_t key, uint32_t payload, uint32_t shift)
    {
        const uint32_t b = Bucket(key, payload, shift);
        row_.SetValue(b, row_.GetValue(b) + 1);
    }

    __aicore__ inline uint32_t Bucket(uint32_t key, uint32_t payload, uint32_t shift) const
    {
        return ((payload >> kGroupShift) << kDigitBits) | ((key >> shift) & kDigitMask);
    }

    __aicore__ inline uint32_t Owner(uint32_t payload) const
    {
        return static_cast<uint32_t>((static_cast<uint64_t>(payload & kTokenMask) * ownerMul_) >> kOwnerShift);
    }

    __aicore__ inline bool Bit(const LocalTensor<uint8_t> &bits, uint32_t i) const
    {
        return ((bits.GetValue(i >> 3) >> (i & 7u)) & 1u) != 0;
    }

    GlobalTensor<float> probsGm_;
    GlobalTensor<uint8_t> isImageGm_;
    GlobalTensor<uint8_t> validGm_;
    GlobalTensor<float> noiseGm_;
    GlobalTensor<int32_t> expertGm_;
    GlobalTensor<int32_t> slotGm_;
    GlobalTensor<int32_t> countsGm_;
    GlobalTensor<int32_t> syncGm_;
    GlobalTensor<int32_t> histGm_;
    GlobalTensor<uint32_t> recordsGm_[2];

    TBuf<TPosition::VECCALC> expertBuf_, slotBuf_, otherKeyBuf_, prefBitsBuf_, offerBitsBuf_, rowBuf_, totalBuf_,
        beforeBuf_, cursorBuf_, chunkBuf_, syncBuf_, countsBuf_, recordsBuf_, arenaBuf_;
    LocalTensor<int32_t> expert_, slot_, row_, total_, before_, cursor_, chunk_, syncUb_, countsUb_;
    LocalTensor<uint32_t> otherKey_, records_, sorted_;
    LocalTensor<uint8_t> prefBits_, offerBits_, arena_;

    uint64_t ownerMul_ = 0;
    int64_t strategy_ = 0;
    float beta_ = 0.0f;
    float ratio_ = 0.0f;
    uint32_t numTokens_ = 0, capacity_ = 0, blockNum_ = 1, blockIdx_ = 0, rangeLen_ = 0, tileLen_ = 0,
             chunkRows_ = 1, rangeBegin_ = 0, rangeCount_ = 0, parity_ = 0;
    uint32_t groupTotal_[2] = {0, 0};
    uint32_t validTotal_ = 0;
    uint32_t orKeys_[2] = {0, 0};
    uint32_t andKeys_[2] = {0, 0};
    bool imgGbpr_ = false;
};
}  // namespace

extern "C" __global__ __aicore__ void img_gbpr_allocation(GM_ADDR probs, GM_ADDR is_image, GM_ADDR valid,
                                                          GM_ADDR noise, GM_ADDR expert, GM_ADDR slot, GM_ADDR counts,
                                                          GM_ADDR workspace, GM_ADDR tiling)
{
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    GET_TILING_DATA(tilingData, tiling);
    TPipe pipe;
    ImgGbprAllocationKernel op;
    op.Init(probs, is_image, valid, noise, expert, slot, counts, GetUserWorkspace(workspace), tilingData, &pipe);
    op.Process();
}
