// Block formats of ggml, dequantized to fp32 bit-identically to gguf-py's `gguf.dequantize` (numpy, float32).
// numpy never fuses: every `a * b + c` there is a rounded product followed by a rounded add, so products go into a
// `let` first and no expression below may be contracted into an FMA. Scale products (`d * sc`, `dmin * m`) are
// formed per sub-block in float32 before they meet the quants, in gguf-py's order.

extension GGMLType {
    var canDequantize: Bool {
        switch self {
        case .f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K: return true
        default: return false
        }
    }
}

@inline(__always)
private func f16(_ p: UnsafePointer<UInt8>, _ offset: Int) -> Float {
    Float(Float16(bitPattern: UnsafeRawPointer(p + offset).loadUnaligned(as: UInt16.self).littleEndian))
}

/// 6-bit scale and min of sub-block `j` (0..<8) from the 12 packed bytes of Q4_K / Q5_K: sub-blocks 0–3 keep theirs
/// in the low 6 bits of bytes 0–7; 4–7 split theirs between a nibble of bytes 8–11 and the spare top bits of bytes 0–7.
@inline(__always)
private func scaleMinK4(_ s: UnsafePointer<UInt8>, _ j: Int) -> (Float, Float) {
    if j < 4 { return (Float(s[j] & 63), Float(s[j + 4] & 63)) }
    let sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4)
    let m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4)
    return (Float(sc), Float(m))
}

/// Dequantizes blocks `range` of a tensor starting at `src` into `dst` (which points at the tensor's element 0).
func dequantizeBlocks(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ range: Range<Int>) {
    let bytes = src.assumingMemoryBound(to: UInt8.self)
    let ts = type.typeSize, bs = type.blockSize
    switch type {
    case .f32:
        UnsafeMutableRawPointer(dst + range.lowerBound).copyMemory(from: src + range.lowerBound * 4, byteCount: range.count * 4)

    case .f16:
        for i in range { dst[i] = f16(bytes, 2 * i) }

    case .bf16:
        for i in range {
            let h = UnsafeRawPointer(bytes + 2 * i).loadUnaligned(as: UInt16.self).littleEndian
            dst[i] = Float(bitPattern: UInt32(h) << 16)
        }

    case .q4_0:
        // value j < 16 is the low nibble of qs[j], value j ≥ 16 the high nibble of qs[j − 16]
        for b in range {
            let blk = bytes + b * ts, y = dst + b * bs
            let d = f16(blk, 0), qs = blk + 2
            for j in 0..<16 {
                y[j] = d * Float(Int32(qs[j] & 0x0F) - 8)
                y[j + 16] = d * Float(Int32(qs[j] >> 4) - 8)
            }
        }

    case .q4_1:
        for b in range {
            let blk = bytes + b * ts, y = dst + b * bs
            let d = f16(blk, 0), m = f16(blk, 2), qs = blk + 4
            for j in 0..<16 {
                let lo = d * Float(qs[j] & 0x0F), hi = d * Float(qs[j] >> 4)
                y[j] = lo + m
                y[j + 16] = hi + m
            }
        }

    case .q5_0:
        // bit j of the u32 qh is the fifth bit of value j
        for b in range {
            let blk = bytes + b * ts, y = dst + b * bs
            let d = f16(blk, 0), qh = UnsafeRawPointer(blk + 2).loadUnaligned(as: UInt32.self).littleEndian, qs = blk + 6
            for j in 0..<16 {
                let lo = UInt32(qs[j] & 0x0F) | (((qh >> UInt32(j)) & 1) << 4)
                let hi = UInt32(qs[j] >> 4) | (((qh >> UInt32(j + 16)) & 1) << 4)
                y[j] = d * Float(Int32(lo) - 16)
                y[j + 16] = d * Float(Int32(hi) - 16)
            }
        }

    case .q5_1:
        for b in range {
            let blk = bytes + b * ts, y = dst + b * bs
            let d = f16(blk, 0), m = f16(blk, 2)
            let qh = UnsafeRawPointer(blk + 4).loadUnaligned(as: UInt32.self).littleEndian, qs = blk + 8
            for j in 0..<16 {
                let lo = UInt32(qs[j] & 0x0F) | (((qh >> UInt32(j)) & 1) << 4)
                let hi = UInt32(qs[j] >> 4) | (((qh >> UInt32(j + 16)) & 1) << 4)
                let pl = d * Float(lo), ph = d * Float(hi)
                y[j] = pl + m
                y[j + 16] = ph + m
            }
        }

    case .q8_0:
        for b in range {
            let blk = bytes + b * ts, y = dst + b * bs
            let d = f16(blk, 0)
            for j in 0..<32 { y[j] = Float(Int8(bitPattern: blk[2 + j])) * d }
        }

    case .q2_K:
        // 16 groups of 16; the 2-bit quants of each 128-value half sit in 32 bytes, four values per byte at shifts
        // 0, 2, 4, 6 (shift k covers values 32k..<32k+32 of the half)
        for b in range {
            let blk = bytes + b * ts, y = dst + b * bs
            let scales = blk, qs = blk + 16
            let d = f16(blk, 80), dmin = f16(blk, 82)
            for g in 0..<16 {
                let dl = d * Float(scales[g] & 0x0F), ml = dmin * Float(scales[g] >> 4)
                let h = g / 8, k = (g % 8) / 2, l0 = (g % 2) * 16
                for l in l0..<l0 + 16 {
                    let q = Float((qs[32 * h + l] >> UInt8(2 * k)) & 3)
                    let p = dl * q
                    y[128 * h + 32 * k + l] = p - ml
                }
            }
        }

    case .q3_K:
        // low 2 bits as in Q2_K; the third bit is bit (e / 32) of hmask[e % 32], and a *clear* bit subtracts 4.
        // The 16 6-bit signed scales: low nibbles from bytes 0–7 (both halves), top 2 bits from bytes 8–11.
        for b in range {
            let blk = bytes + b * ts, y = dst + b * bs
            let hmask = blk, qs = blk + 32, sc = blk + 96
            let d = f16(blk, 108)
            for g in 0..<16 {
                let low = g < 8 ? sc[g] & 0x0F : sc[g - 8] >> 4
                let high = (sc[8 + g % 4] >> UInt8(2 * (g / 4))) & 3
                let dl = d * Float(Int32(low | (high << 4)) - 32)
                let h = g / 8, k = (g % 8) / 2, l0 = (g % 2) * 16
                for l in l0..<l0 + 16 {
                    let e = 128 * h + 32 * k + l
                    let ql = Int32((qs[32 * h + l] >> UInt8(2 * k)) & 3)
                    let hbit = Int32((hmask[e % 32] >> UInt8(e / 32)) & 1)
                    y[e] = dl * Float(ql - ((hbit ^ 1) << 2))
                }
            }
        }

    case .q4_K:
        // 8 sub-blocks of 32; sub-blocks 2c and 2c+1 are the low and high nibbles of qs[32c..<32c+32]
        for b in range {
            let blk = bytes + b * ts, y = dst + b * bs
            let d = f16(blk, 0), dmin = f16(blk, 2), scales = blk + 4, qs = blk + 16
            for s in 0..<8 {
                let (sc, m) = scaleMinK4(scales, s)
                let ds = d * sc, dm = dmin * m
                let q = qs + 32 * (s / 2), shift = UInt8(4 * (s % 2))
                for l in 0..<32 {
                    let p = ds * Float((q[l] >> shift) & 0x0F)
                    y[32 * s + l] = p - dm
                }
            }
        }

    case .q5_K:
        // as Q4_K, plus a fifth bit: bit s of qh[l] for value l of sub-block s
        for b in range {
            let blk = bytes + b * ts, y = dst + b * bs
            let d = f16(blk, 0), dmin = f16(blk, 2), scales = blk + 4, qh = blk + 16, qs = blk + 48
            for s in 0..<8 {
                let (sc, m) = scaleMinK4(scales, s)
                let ds = d * sc, dm = dmin * m
                let q = qs + 32 * (s / 2), shift = UInt8(4 * (s % 2))
                for l in 0..<32 {
                    let v = ((q[l] >> shift) & 0x0F) | (((qh[l] >> UInt8(s)) & 1) << 4)
                    let p = ds * Float(v)
                    y[32 * s + l] = p - dm
                }
            }
        }

    case .q6_K:
        // per 128-value half h and l < 32: values l, l+32, l+64, l+96 take the low nibbles of ql[l], ql[l+32], then
        // their high nibbles, with bit pairs 0, 2, 4, 6 of qh[l] on top; 16 groups of 16 with signed 8-bit scales
        for b in range {
            let blk = bytes + b * ts
            let d = f16(blk, 208)
            for h in 0..<2 {
                let ql = blk + 64 * h, qh = blk + 128 + 32 * h, sc = blk + 192 + 8 * h, y = dst + b * bs + 128 * h
                for l in 0..<32 {
                    let g = l / 16
                    let q1 = Int32((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32
                    let q2 = Int32((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                    let q3 = Int32((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                    let q4 = Int32((ql[l + 32] >> 4) | ((qh[l] >> 6) << 4)) - 32
                    y[l] = d * Float(Int8(bitPattern: sc[g])) * Float(q1)
                    y[l + 32] = d * Float(Int8(bitPattern: sc[g + 2])) * Float(q2)
                    y[l + 64] = d * Float(Int8(bitPattern: sc[g + 4])) * Float(q3)
                    y[l + 96] = d * Float(Int8(bitPattern: sc[g + 6])) * Float(q4)
                }
            }
        }

    default:
        preconditionFailure("dequantizeBlocks called for \(type.name); callers check canDequantize")
    }
}
