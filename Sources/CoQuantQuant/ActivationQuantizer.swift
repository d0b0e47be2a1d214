import CoQuantTensor

// Float32 in-place fake quantization of activations for the forward hooks (COQUANT_RESQ.md §3.2, §3.3).
//
// x: [rows, cols] with row r at x + r·rowStride (rowStride ≥ cols, so a column range of a wider buffer can be
// quantized on its own: the 8-bit high channels of CoQuant/ResQ get their own scale that way).
// Per token (groupSize nil) or per (token, group of g consecutive columns), asymmetric:
//
//   [xmin, xmax] = clipRatio · range   (range includes 0 or not: RangeRule)
//   s = (xmax − xmin)/maxq,  z = round(−xmin/s),  x ← s·(clamp(round(x/s) + z, 0, maxq) − z)
//
// All in Float32 like the reference's per-token path (its scales are fp32). The reference's group-wise path keeps
// bf16 scales; this one keeps fp32 there too (COQUANT_RESQ.md §3.5 calls such differences acceptable).

public struct ActivationQuantizer: Sendable, Equatable {
    public let bits: Int
    public let groupSize: Int?
    public let clipRatio: Float
    public let rangeRule: RangeRule

    /// `rangeRule` defaults to the reference's choice: 0 forced in per token, plain min/max per group (the K cache
    /// is per (token, head) with 0 forced in: pass `.includeZero` for it).
    public init(bits: Int, groupSize: Int? = nil, clipRatio: Float = 1, rangeRule: RangeRule? = nil) throws {
        guard (2...8).contains(bits) else { throw QuantError.unsupportedBits(bits) }
        if let g = groupSize, g <= 0 { throw QuantError.invalidGroupSize(g) }
        guard clipRatio > 0 && clipRatio <= 1 else { throw QuantError.invalidClipRatio(Double(clipRatio)) }
        self.bits = bits
        self.groupSize = groupSize
        self.clipRatio = clipRatio
        self.rangeRule = rangeRule ?? (groupSize == nil ? .includeZero : .minMax)
    }

    /// The same quantizer as a float64 grid (for checking this fast path against `quantize(_:grid:)`).
    public var grid: QuantGrid {
        // Cannot throw: init validated the same bits, group size and clip ratio.
        try! .activation(bits: bits, groupSize: groupSize, clipRatio: Double(clipRatio), rangeRule: rangeRule)
    }

    /// Fake-quantizes x in place.
    public func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, rowStride: Int? = nil) throws {
        let ld = rowStride ?? cols
        guard rows >= 0, cols > 0, ld >= cols else {
            throw QuantError.shapeMismatch("activation buffer \(rows)×\(cols) with row stride \(ld)")
        }
        let g = groupSize ?? cols
        guard cols % g == 0 else { throw QuantError.groupSizeDoesNotDivide(groupSize: g, dimension: cols) }
        let workers = rows * cols >= 1 << 15 && rows >= 2 ? min(forwardWorkers, rows) : 1
        parallelFor(workers) { w in
            for r in (rows * w / workers)..<(rows * (w + 1) / workers) {
                var c = 0
                while c < cols { quantizeSlice(x + r * ld + c, g); c += g }
            }
        }
    }

    @inline(__always)
    private func quantizeSlice(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
        let maxq = Float((1 << bits) - 1)
        // Range, eight lanes at a time.
        var lo8 = SIMD8<Float>(repeating: .infinity), hi8 = SIMD8<Float>(repeating: -.infinity)
        var i = 0
        while i + 8 <= n {
            let v = UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
            // replacing(with:where:) inlines to vminps/vmaxps; the stdlib's generic pointwiseMin/Max stayed an
            // out-of-line call per 8 lanes (3 % of a W4A4KV4 perplexity run in perf).
            lo8 = lo8.replacing(with: v, where: v .< lo8); hi8 = hi8.replacing(with: v, where: v .> hi8)
            i += 8
        }
        var lo = lo8.min(), hi = hi8.max()
        while i < n { lo = min(lo, p[i]); hi = max(hi, p[i]); i += 1 }

        switch rangeRule {
        case .includeZero: lo = min(lo, 0); hi = max(hi, 0)
        case .minMax: if lo == hi { lo = min(lo, 0); hi = max(hi, 0) }   // constant slice: see QuantGrid
        }
        lo *= clipRatio; hi *= clipRatio
        if lo == 0 && hi == 0 { lo = -1; hi = 1 }
        let s = (hi - lo) / maxq
        let z = (-lo / s).rounded(.toNearestOrEven)

        let s8 = SIMD8<Float>(repeating: s), z8 = SIMD8<Float>(repeating: z)
        let zero8 = SIMD8<Float>(repeating: 0), maxq8 = SIMD8<Float>(repeating: maxq)
        i = 0
        while i + 8 <= n {
            let v = UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
            var q = (v / s8).rounded(.toNearestOrEven) + z8
            q.replace(with: zero8, where: q .< zero8); q.replace(with: maxq8, where: q .> maxq8)
            UnsafeMutableRawPointer(p + i).storeBytes(of: s8 * (q - z8), as: SIMD8<Float>.self)
            i += 8
        }
        while i < n {
            let q = min(max((p[i] / s).rounded(.toNearestOrEven) + z, 0), maxq)
            p[i] = s * (q - z)
            i += 1
        }
    }
}
