// ggml's 32-value block formats and 256-value K-quant super-blocks written from codes a solver already chose: the
// inverse of `dequantizeBlocks` for the types a CoQuant grid maps onto exactly. Nothing here rounds a value; d, m and
// the K-quant scales are the grid's stored parameters.
//
//   type  bytes  layout                                                         value of code q
//   Q4_0  18     fp16 d, qs[16]: byte j = q_j | q_{j+16} << 4                   d·(q − 8)
//   Q4_1  20     fp16 d, fp16 m, qs[16] as Q4_0                                 d·q + m
//   Q5_0  22     fp16 d, u32 qh (bit j = bit 4 of q_j), qs[16] low nibbles      d·(q − 16)
//   Q5_1  24     fp16 d, fp16 m, u32 qh, qs[16] as Q5_0                         d·q + m
//   Q8_0  34     fp16 d, int8 qs[32] = q − 128                                  d·(q − 128)
//
// K-quant super-blocks: 256 values in consecutive sub-blocks j (16 of 16 values, or 8 of 32 for Q4_K/Q5_K), each
// with its own integer scale (and min) under the fp16 super-block d (and dmin); e is a value's index in the block.
//
//   type  bytes  layout                                                         value of code q in sub-block j
//   Q2_K  84     scales[16]: sc_j | m_j << 4, qs[64], fp16 d, fp16 dmin         d·sc_j·q − dmin·m_j
//   Q3_K  110    hmask[32], qs[64], scales[12] (6-bit sc_j + 32), fp16 d        d·sc_j·(q − 4)
//   Q4_K  144    fp16 d, fp16 dmin, scales[12] (6-bit sc_j, m_j), qs[128]       d·sc_j·q − dmin·m_j
//   Q5_K  176    fp16 d, fp16 dmin, scales[12] as Q4_K, qh[32], qs[128]         d·sc_j·q − dmin·m_j
//   Q6_K  210    ql[128], qh[64], int8 scales[16], fp16 d                       d·sc_j·(q − 32)
//
//   Q2_K/Q3_K qs: bits 2k…2k+1 of qs[32h + l] hold the low 2 bits of value 128h + 32k + l (h < 2, k < 4, l < 32);
//                 Q3_K's third bit is bit e / 32 of hmask[e % 32].
//   Q3_K scales: sub-blocks j and j + 8 share the low and high nibble of byte j < 8; their top 2 bits are bits
//                2⌊j/4⌋… of byte 8 + j % 4.
//   Q4_K/Q5_K scales: sub-blocks 0–3 in the low 6 bits of bytes 0–3 (sc) and 4–7 (m); 4–7 in the nibbles of bytes
//                8–11 (sc low, m high), their top 2 bits in the spare top bits of bytes 0–3 (sc) and 4–7 (m).
//   Q4_K/Q5_K qs: sub-blocks 2c and 2c + 1 are the low and high nibbles of qs[32c…]; Q5_K's fifth bit of value l of
//                sub-block j is bit j of qh[l].
//   Q6_K: per half h, value 128h + 32k + l (l < 32) is the low (k = 0, 1) or high (k = 2, 3) nibble of
//                ql[64h + l + 32(k % 2)] with bits 2k, 2k+1 of qh[32h + l] on top.
//
// Codes are unsigned, 0 … 2^bits − 1, as every CoQuant grid stores them (x̂ = s·(q − z)): the fixed zero of the
// symmetric types (8, 16, 128) is the z of the grid that maps onto them.

extension GGMLType {
    /// The fixed zero point of a symmetric 32-block type (d·(q − z)); nil for the others.
    public var blockZero: Int? {
        switch self {
        case .q4_0: return 8
        case .q5_0: return 16
        case .q8_0: return 128
        default: return nil
        }
    }

    /// Bits of a code in this block type, for the types `encodeBlock` and `encodeKBlock` write.
    public var codeBits: Int? {
        switch self {
        case .q2_K: return 2
        case .q3_K: return 3
        case .q4_0, .q4_1, .q4_K: return 4
        case .q5_0, .q5_1, .q5_K: return 5
        case .q6_K: return 6
        case .q8_0: return 8
        default: return nil
        }
    }

    /// The block types `encodeBlock` and `encodeKBlock` write: the ones a CoQuant grid can be solved on.
    public static let codeTypes: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]

    /// Values sharing one scale (one group of a CoQuant grid), for the types `encodeBlock` and `encodeKBlock` write.
    public var subBlockSize: Int? {
        switch self {
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K: return 32
        case .q2_K, .q3_K, .q6_K: return 16
        default: return nil
        }
    }
}

/// One K-quant super-block's parameters as integers, exactly what the block stores.
public struct KBlockParameters {
    public var d: Float16          // super-block scale
    public var dmin: Float16       // super-block min scale (Q2_K, Q4_K, Q5_K; ignored by Q3_K, Q6_K)
    public var scales: [Int]       // per sub-block: Q4_K/Q5_K 8 values 0…63; Q2_K 16 values 0…15; Q3_K 16 values −32…31; Q6_K 16 values −128…127
    public var mins: [Int]         // per sub-block: Q4_K/Q5_K 8 values 0…63; Q2_K 16 values 0…15; empty for Q3_K/Q6_K

    public init(d: Float16, dmin: Float16 = 0, scales: [Int], mins: [Int] = []) {
        self.d = d
        self.dmin = dmin
        self.scales = scales
        self.mins = mins
    }
}

/// Writes one block of `type` (`typeSize` bytes at `out`) from 32 codes. `m` is used by Q4_1 and Q5_1 only.
public func encodeBlock(_ type: GGMLType, codes q: UnsafePointer<UInt8>, d: Float16, m: Float16 = 0,
                        into out: UnsafeMutablePointer<UInt8>) {
    func half(_ h: Float16, at offset: Int) {
        let bits = h.bitPattern.littleEndian
        out[offset] = UInt8(truncatingIfNeeded: bits)
        out[offset + 1] = UInt8(truncatingIfNeeded: bits >> 8)
    }
    func nibbles(at offset: Int) {
        for j in 0..<16 { out[offset + j] = (q[j] & 0x0F) | (q[j + 16] & 0x0F) << 4 }
    }
    half(d, at: 0)
    switch type {
    case .q4_0:
        nibbles(at: 2)
    case .q4_1:
        half(m, at: 2)
        nibbles(at: 4)
    case .q5_0, .q5_1:
        let base = type == .q5_1 ? 4 : 2
        if type == .q5_1 { half(m, at: 2) }
        var qh: UInt32 = 0
        for j in 0..<32 { qh |= UInt32((q[j] >> 4) & 1) << UInt32(j) }
        for k in 0..<4 { out[base + k] = UInt8(truncatingIfNeeded: qh >> UInt32(8 * k)) }
        nibbles(at: base + 4)
    case .q8_0:
        for j in 0..<32 { out[2 + j] = q[j] ^ 0x80 }      // q − 128 as a two's-complement byte
    default:
        preconditionFailure("encodeBlock: \(type.name) is not a 32-value code block")
    }
}

/// Writes one K-quant super-block (type.typeSize bytes at `out`) from 256 unsigned codes q (0…2^bits−1: Q2_K 0…3,
/// Q3_K 0…7, Q4_K 0…15, Q5_K 0…31, Q6_K 0…63) and its parameters. Value of code q in sub-block j:
///   Q2_K/Q4_K/Q5_K: d·scales[j]·q − dmin·mins[j];  Q3_K: d·scales[j]·(q − 4);  Q6_K: d·scales[j]·(q − 32)
/// Sub-blocks are consecutive: 32 values each for Q4_K/Q5_K (8 sub-blocks), 16 values each for Q2_K/Q3_K/Q6_K (16).
public func encodeKBlock(_ type: GGMLType, codes q: UnsafePointer<UInt8>, _ p: KBlockParameters,
                         into out: UnsafeMutablePointer<UInt8>) {
    let (scaleRange, minRange): (ClosedRange<Int>, ClosedRange<Int>?) = switch type {
    case .q2_K: (0...15, 0...15)
    case .q3_K: (-32...31, nil)
    case .q4_K, .q5_K: (0...63, 0...63)
    case .q6_K: (-128...127, nil)
    default: preconditionFailure("encodeKBlock: \(type.name) is not a K-quant super-block")
    }
    let groups = 256 / type.subBlockSize!, maxq = UInt8((1 << type.codeBits!) - 1)
    precondition(p.scales.count == groups && p.scales.allSatisfy(scaleRange.contains),
                 "encodeKBlock: \(type.name) needs \(groups) scales in \(scaleRange)")
    if let minRange {
        precondition(p.mins.count == groups && p.mins.allSatisfy(minRange.contains),
                     "encodeKBlock: \(type.name) needs \(groups) mins in \(minRange)")
    } else {
        precondition(p.mins.isEmpty, "encodeKBlock: \(type.name) has no mins")
    }
    for e in 0..<256 { precondition(q[e] <= maxq, "encodeKBlock: \(type.name) code \(q[e]) at \(e) exceeds \(maxq)") }

    func half(_ h: Float16, at offset: Int) {
        let bits = h.bitPattern.littleEndian
        out[offset] = UInt8(truncatingIfNeeded: bits)
        out[offset + 1] = UInt8(truncatingIfNeeded: bits >> 8)
    }
    // Q2_K / Q3_K low 2 bits: value e = 128h + 32k + l goes to bits 2k of qs[32h + l]
    func crumbs(at offset: Int) {
        for i in 0..<64 { out[offset + i] = 0 }
        for e in 0..<256 { out[offset + 32 * (e / 128) + e % 32] |= (q[e] & 3) << UInt8(2 * ((e % 128) / 32)) }
    }
    // Q4_K / Q5_K: sub-blocks 2c and 2c + 1 share qs[32c + l] as low and high nibble
    func nibbles(at offset: Int) {
        for c in 0..<4 {
            for l in 0..<32 { out[offset + 32 * c + l] = (q[64 * c + l] & 0x0F) | (q[64 * c + 32 + l] & 0x0F) << 4 }
        }
    }
    func scalesAndMins(at offset: Int) {
        let sc = p.scales.map(UInt8.init), m = p.mins.map(UInt8.init)
        for i in 0..<4 {
            out[offset + i] = sc[i] | (sc[i + 4] >> 4) << 6
            out[offset + 4 + i] = m[i] | (m[i + 4] >> 4) << 6
            out[offset + 8 + i] = (sc[i + 4] & 0x0F) | (m[i + 4] & 0x0F) << 4
        }
    }

    switch type {
    case .q2_K:
        for j in 0..<16 { out[j] = UInt8(p.scales[j]) | UInt8(p.mins[j]) << 4 }
        crumbs(at: 16)
        half(p.d, at: 80)
        half(p.dmin, at: 82)
    case .q3_K:
        // the decoder subtracts 4 where the hmask bit is *clear*, so the bit is the code's own third bit
        for l in 0..<32 {
            var h: UInt8 = 0
            for k in 0..<8 { h |= ((q[32 * k + l] >> 2) & 1) << UInt8(k) }
            out[l] = h
        }
        crumbs(at: 32)
        let s6 = p.scales.map { UInt8($0 + 32) }
        for j in 0..<8 { out[96 + j] = (s6[j] & 0x0F) | (s6[j + 8] & 0x0F) << 4 }
        for i in 0..<4 {
            var b: UInt8 = 0
            for t in 0..<4 { b |= (s6[4 * t + i] >> 4) << UInt8(2 * t) }
            out[104 + i] = b
        }
        half(p.d, at: 108)
    case .q4_K:
        half(p.d, at: 0)
        half(p.dmin, at: 2)
        scalesAndMins(at: 4)
        nibbles(at: 16)
    case .q5_K:
        half(p.d, at: 0)
        half(p.dmin, at: 2)
        scalesAndMins(at: 4)
        for l in 0..<32 {
            var h: UInt8 = 0
            for j in 0..<8 { h |= ((q[32 * j + l] >> 4) & 1) << UInt8(j) }
            out[16 + l] = h
        }
        nibbles(at: 48)
    case .q6_K:
        for h in 0..<2 {
            let v = q + 128 * h
            for l in 0..<32 {
                out[64 * h + l] = (v[l] & 0x0F) | (v[l + 64] & 0x0F) << 4
                out[64 * h + 32 + l] = (v[l + 32] & 0x0F) | (v[l + 96] & 0x0F) << 4
                out[128 + 32 * h + l] = v[l] >> 4 | (v[l + 32] >> 4) << 2 | (v[l + 64] >> 4) << 4 | (v[l + 96] >> 4) << 6
            }
        }
        for j in 0..<16 { out[192 + j] = UInt8(bitPattern: Int8(p.scales[j])) }
        half(p.d, at: 208)
    default:
        preconditionFailure("encodeKBlock: \(type.name) is not a K-quant super-block")
    }
}
