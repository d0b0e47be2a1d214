/// Calibration windows drawn as the reference code draws them (DESIGN.md §4): the WikiText-2 train text tokenized
/// once without BOS, then `nsamples` windows of `seqlen` tokens whose starts come from CPython's
/// `random.seed(seed)` + `random.randint(0, n_tokens - seqlen - 1)`. Windows may overlap.
///
/// Reproducing the starts bit for bit needs CPython's generator itself (MT19937 seeded with `init_by_array`),
/// which is why this file has its own generator rather than the project's SeededGenerator.

public struct CalibrationError: Error, CustomStringConvertible {
    public let description: String
}

public func calibrationWindows(ids: [Int], nsamples: Int, seqlen: Int, seed: UInt32 = 0) throws -> [[Int]] {
    guard nsamples > 0, seqlen > 0 else { throw CalibrationError(description: "nsamples and seqlen must be positive") }
    guard ids.count > seqlen + 1 else {
        throw CalibrationError(description: "calibration text has \(ids.count) tokens, too few for one window of \(seqlen) (need more than \(seqlen + 1))")
    }
    var random = PythonRandom(seed: seed)
    return (0..<nsamples).map { _ in
        let i = random.randint(0, ids.count - seqlen - 1)
        return Array(ids[i..<(i + seqlen)])
    }
}

/// CPython's `random.Random`: MT19937, `seed(int)` → `init_by_array` of the integer's 32-bit words,
/// `getrandbits(k)`, `randint(a, b)` by rejection sampling (`_randbelow`).
public struct PythonRandom {
    private var mt = [UInt32](repeating: 0, count: 624)
    private var index = 624

    public init(seed: UInt32) {
        initGenrand(19_650_218)
        // init_by_array with key = [seed] (CPython passes abs(seed) as 32-bit words; one word for seeds < 2³²).
        let key: [UInt32] = [seed]
        var i = 1, j = 0
        for _ in 0..<max(624, key.count) {
            mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) &* 1_664_525)) &+ key[j] &+ UInt32(j)
            i += 1; j += 1
            if i >= 624 { mt[0] = mt[623]; i = 1 }
            if j >= key.count { j = 0 }
        }
        for _ in 0..<623 {
            mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) &* 1_566_083_941)) &- UInt32(i)
            i += 1
            if i >= 624 { mt[0] = mt[623]; i = 1 }
        }
        mt[0] = 0x8000_0000
        index = 624
    }

    private mutating func initGenrand(_ s: UInt32) {
        mt[0] = s
        for i in 1..<624 { mt[i] = 1_812_433_253 &* (mt[i - 1] ^ (mt[i - 1] >> 30)) &+ UInt32(i) }
    }

    private mutating func twist() {
        for i in 0..<624 {
            let y = (mt[i] & 0x8000_0000) | (mt[(i + 1) % 624] & 0x7FFF_FFFF)
            mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (y & 1 == 0 ? 0 : 0x9908_B0DF)
        }
        index = 0
    }

    public mutating func next32() -> UInt32 {
        if index >= 624 { twist() }
        var y = mt[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }

    /// `getrandbits(k)` for 1 ≤ k ≤ 64: 32-bit words, least significant first, the last one shifted down.
    public mutating func getrandbits(_ k: Int) -> UInt64 {
        precondition(k >= 1 && k <= 64)
        if k <= 32 { return UInt64(next32() >> (32 - k)) }
        let low = UInt64(next32())
        return low | (UInt64(next32() >> (64 - k)) << 32)
    }

    /// Uniform integer in [a, b], as `random.randint`.
    public mutating func randint(_ a: Int, _ b: Int) -> Int {
        precondition(b >= a)
        let n = UInt64(b - a + 1)
        let k = 64 - n.leadingZeroBitCount
        var r = getrandbits(k)
        while r >= n { r = getrandbits(k) }
        return a + Int(r)
    }
}
