// ggml's 32-value block formats written from codes a solver already chose: the inverse of `dequantizeBlocks` for the
// types a CoQuant grid maps onto exactly. Nothing here rounds a value; d and m are the grid's fp16 parameters.
//
//   type  bytes  layout                                                         value of code q
//   Q4_0  18     fp16 d, qs[16]: byte j = q_j | q_{j+16} << 4                   d·(q − 8)
//   Q4_1  20     fp16 d, fp16 m, qs[16] as Q4_0                                 d·q + m
//   Q5_0  22     fp16 d, u32 qh (bit j = bit 4 of q_j), qs[16] low nibbles      d·(q − 16)
//   Q8_0  34     fp16 d, int8 qs[32] = q − 128                                  d·(q − 128)
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

    /// Bits of a code in this block type, for the types `encodeBlock` writes.
    public var codeBits: Int? {
        switch self {
        case .q4_0, .q4_1: return 4
        case .q5_0: return 5
        case .q8_0: return 8
        default: return nil
        }
    }
}

/// Writes one block of `type` (`typeSize` bytes at `out`) from 32 codes. `m` is used by Q4_1 only.
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
    case .q5_0:
        var qh: UInt32 = 0
        for j in 0..<32 { qh |= UInt32((q[j] >> 4) & 1) << UInt32(j) }
        for k in 0..<4 { out[2 + k] = UInt8(truncatingIfNeeded: qh >> UInt32(8 * k)) }
        nibbles(at: 6)
    case .q8_0:
        for j in 0..<32 { out[2 + j] = q[j] ^ 0x80 }      // q − 128 as a two's-complement byte
    default:
        preconditionFailure("encodeBlock: \(type.name) is not a 32-value code block")
    }
}
