import CoQuantModel
import CoQuantTensor
import Foundation

// Uniform quantizer grids in float64 (GPTQ_CDQUANT.md §2.2; COQUANT_RESQ.md §1.1, §3.1–§3.3).
//
// Shapes: x is [R, C] row-major. One (scale s, zero z) pair belongs to a *slice* of x:
//   per-tensor            the whole of x                      scales [1, 1]
//   per-row               one row: per output channel of a weight [out, in], per token of activations [tokens, d]
//   per-row group of g    g consecutive columns of one row: weight groups, per-(token, head) for o_proj input / KV
//                                                             scales [R, C/g]
//
//   code(x)     = clamp(round(x / s) + z, 0, maxq)        maxq = 2^bits − 1                 (quant.py:6-10)
//   quantize(x) = s · (code(x) − z)
//
// `round` is round-half-to-even (torch.round), and x / s is a true division, not x · (1/s): the ties of the
// symmetric grid (max |x| lands exactly on ±7.5 at 4 bits) then fall as they do in the reference.

public enum QuantError: Error, CustomStringConvertible, Equatable {
    case unsupportedBits(Int)
    case invalidGroupSize(Int)
    case groupSizeDoesNotDivide(groupSize: Int, dimension: Int)
    case invalidClipRatio(Double)
    case invalidMSESearch(String)
    case unsupportedGranularity(String)
    case shapeMismatch(String)
    case invalidParameter(String)
    case missingHessian
    case nonFiniteHessian
    case choleskyFailed(percDamp: Double, escalations: Int, reason: String)

    public var description: String {
        switch self {
        case .unsupportedBits(let b): return "unsupported bit width \(b): the uniform grids support 2 to 8 bits"
        case .invalidGroupSize(let g): return "group size \(g) must be positive"
        case .groupSizeDoesNotDivide(let g, let d): return "group size \(g) does not divide the dimension \(d)"
        case .invalidClipRatio(let c): return "clip ratio \(c) must be in (0, 1]"
        case .invalidMSESearch(let s): return "MSE clip search: \(s)"
        case .unsupportedGranularity(let s): return s
        case .shapeMismatch(let s): return "shape mismatch: \(s)"
        case .invalidParameter(let s): return s
        case .missingHessian: return "this solver needs the Hessian H = 2/n Σ x xᵀ of the layer input"
        case .nonFiniteHessian: return "the Hessian has NaN or infinite entries (check the calibration activations)"
        case .choleskyFailed(let p, let k, let why):
            return "H + λI is not positive definite even at percdamp \(p) after \(k) escalation(s): \(why)"
        }
    }
}

/// How the grid is placed over a slice's range [xmin, xmax].
public enum GridScheme: Sendable, Equatable {
    /// s = (xmax − xmin)/maxq, z = round(−xmin/s) (quant.py:72-76; QuaRot/CoQuant asymmetric quantizers).
    case asymmetric
    /// GPTQ's `quant.py` with `sym=True` (L59-63, L73-76): xmax ← max(|xmin|, xmax), xmin ← −xmax **only if
    /// xmin < 0**, s = (xmax − xmin)/maxq, z = (maxq+1)/2. So a 4-bit grid is s·{−8, …, 7} with s = 2·max|x|/15,
    /// and a row with no negative entry keeps xmin = 0 and is clipped to about [−xmax/2, xmax/2] (a reference quirk).
    case symmetric
    /// QuaRot / CoQuant `WeightQuantizer` and `ActQuantizer` with sym (COQUANT_RESQ.md §1.1, §3.1):
    /// s = max(max|x|, 1e−5)/(2^(b−1) − 1), signed codes in [−2^(b−1), 2^(b−1) − 1], stored here offset by
    /// z = 2^(b−1) so that every scheme has codes in 0…maxq.
    case signedSymmetric
    /// A ggml 32-value block type whose value is d·(q − z) with a fixed z (Q4_0: 8, Q5_0: 16, Q8_0: 128), placed as
    /// llama.cpp's reference quantizer places it — Q4_0/Q5_0: d = v/−2^(b−1) for the block's value v of largest
    /// magnitude (the first one on ties), so v lands exactly on the lowest code; Q8_0: d = max|x|/127 — and then
    /// **rounded to fp16, as the file stores it, before any code is chosen**: the codes are solved on the grid the
    /// GGUF file holds, so the export equals the in-memory result. (llama.cpp rounds d after choosing the codes
    /// with the unrounded d.) d may be negative; an all-zero block gets d = 1 (every code z, value 0).
    /// Q4_1 (d·q + m): d = (max − min)/15 and m = min, both fp16, so z = −m/d is fractional.
    /// The K-quants place one fp16 d (and dmin) per 256 columns over integer sub-block scales (`GGMLType.kScales`):
    /// Q3_K / Q6_K as Q4_0 per sub-block of 16 (scale v/−4, v/−32), then d = fp16(scale of largest magnitude / −32
    /// or −128) and each sub-block's integer nearest to its scale / d; Q2_K / Q4_K / Q5_K per sub-block a min-max
    /// range [min(x, 0), max(x)] (scale (max − min)/maxq, min −min(x, 0)), then d and dmin = fp16(largest / 15 or
    /// 63) and integers nearest. Every sub-block's grid is then s = d·sc and z = dmin·m / s (fractional for the
    /// types with mins); the codes are chosen on exactly that grid.
    case ggml(GGMLType)

    /// How `config.json` names the grid, so a folder says which reference's quantizer made its codes.
    public var configName: String {
        switch self {
        case .asymmetric: "asymmetric (s = (max − min)/(2^b − 1))"
        case .symmetric: "gptq quant.py symmetric (s = 2·max|w|/(2^b − 1), unsigned codes)"
        case .signedSymmetric: "quarot WeightQuantizer (s = max|w|/(2^(b−1) − 1), signed codes)"
        case .ggml(let t):
            if let k = t.kScales { "ggml \(t.name) (fp16 d per 256 columns, \(k.mins ? "scale and min" : "scale") per \(t.subBlockSize!) as integers)" }
            else if let z = t.blockZero { "ggml \(t.name) (fp16 d per 32 columns, codes q with value d·(q − \(z)))" }
            else { "ggml \(t.name) (fp16 d and m per 32 columns, codes q with value d·q + m)" }
        }
    }
}

/// Whether the range of a slice is widened to contain 0 before the grid is placed (COQUANT_RESQ.md §3.2 and §5
/// item 23). Weights (quant.py L55-57) and the per-token activation path (QuaRot `ActQuantizer.find_params`,
/// quant_utils.py:296-330) use `.includeZero`, so 0 is always exactly representable. The group-wise activation
/// path (o_proj input per head, V cache per kv head; quant_utils.py:245-281) uses plain `.minMax`.
public enum RangeRule: Sendable, Equatable {
    case includeZero
    case minMax
}

/// Which slices share one (scale, zero).
public enum Granularity: Sendable, Equatable {
    case perTensor
    case perRow
    case perRowGroup(Int)

    /// Weights [out, in]: one scale per output row.
    public static var perChannel: Granularity { .perRow }
    /// Activations [tokens, features]: one scale per token.
    public static var perToken: Granularity { .perRow }
    /// Weights: groups of g consecutive input columns.
    public static func perGroup(_ g: Int) -> Granularity { .perRowGroup(g) }
    /// Activations / KV [tokens, heads·head_dim]: one scale per (token, head) with g = head_dim.
    public static func perTokenGroup(_ g: Int) -> Granularity { .perRowGroup(g) }
}

/// Workers that find the grid parameters of `rows` independent rows of `cols` weights: both cores once the work is
/// well over the dispatch cost, which the MSE clip search (80 candidates, a power per weight) reaches soon.
func parameterSearchWorkers(rows: Int, cols: Int, mse: Bool) -> Int {
    rows >= 2 && rows * cols * (mse ? 80 : 1) >= 1 << 16 ? min(forwardWorkers, rows) : 1
}

/// The reference's weight clipping search (quant.py:78-95, `mse=True`): shrink the range by p = 1, 1 − 1/grid, …
/// (int(maxShrink·grid) candidates: 80 with the defaults) and keep the p with the smallest Σ |q(x) − x|^norm,
/// strictly smaller than the best so far, so the earliest (widest) candidate wins ties.
public struct MSEClipSearch: Sendable, Equatable {
    public var grid: Int
    public var maxShrink: Double
    public var norm: Double

    public init(grid: Int = 100, maxShrink: Double = 0.8, norm: Double = 2.4) {
        self.grid = grid
        self.maxShrink = maxShrink
        self.norm = norm
    }

    public static let reference = MSEClipSearch()
}

/// A uniform grid: bit width, placement, which slices share a scale, and how the range is found.
public struct QuantGrid: Sendable, Equatable {
    public let bits: Int
    public let scheme: GridScheme
    public let granularity: Granularity
    public let rangeRule: RangeRule
    /// Activations / KV: the range [xmin, xmax] is multiplied by this (QuaRot `clip_ratio`), after 0 is forced in.
    public let clipRatio: Double
    /// Weights: the reference MSE clip search, or nil for plain min-max.
    public let mse: MSEClipSearch?

    public var maxq: Int { (1 << bits) - 1 }

    public init(bits: Int, scheme: GridScheme = .asymmetric, granularity: Granularity = .perRow,
                rangeRule: RangeRule = .includeZero, clipRatio: Double = 1, mse: MSEClipSearch? = nil) throws {
        guard (2...8).contains(bits) else { throw QuantError.unsupportedBits(bits) }
        if case .perRowGroup(let g) = granularity, g <= 0 { throw QuantError.invalidGroupSize(g) }
        guard clipRatio > 0 && clipRatio <= 1 else { throw QuantError.invalidClipRatio(clipRatio) }
        if let m = mse {
            guard m.grid > 0, m.maxShrink > 0, m.maxShrink <= 1, m.norm > 0 else {
                throw QuantError.invalidMSESearch("grid \(m.grid), maxShrink \(m.maxShrink), norm \(m.norm)")
            }
        }
        if case .ggml(let t) = scheme {
            guard let sub = t.subBlockSize, t.codeBits == bits, granularity == .perRowGroup(sub), mse == nil, clipRatio == 1 else {
                throw QuantError.invalidParameter("the ggml \(t.name) grid is \(t.codeBits.map { "\($0)-bit" } ?? "not a code block type"), groups of \(t.subBlockSize ?? 32), no clipping (got \(bits) bits, \(granularity), clip \(mse != nil ? "MSE" : "\(clipRatio)"))")
            }
        }
        self.bits = bits
        self.scheme = scheme
        self.granularity = granularity
        self.rangeRule = rangeRule
        self.clipRatio = clipRatio
        self.mse = mse
    }

    /// A weight grid as GPTQ's `Quantizer.configure(bits, perchannel=True, sym, mse)` builds it: range always
    /// contains 0, per output row or per group of `groupSize` input columns.
    public static func weight(bits: Int, scheme: GridScheme = .asymmetric, groupSize: Int? = nil,
                              mse: MSEClipSearch? = nil) throws -> QuantGrid {
        try QuantGrid(bits: bits, scheme: scheme, granularity: groupSize.map { .perRowGroup($0) } ?? .perRow,
                      rangeRule: .includeZero, mse: mse)
    }

    /// An activation / KV grid: per token, or per (token, group of `groupSize` features). The range rule defaults
    /// to the reference's choice for that path: 0 forced in per token, plain min/max per group. The K cache is
    /// per (token, head) **with** 0 forced in (COQUANT_RESQ.md §3.3): pass `rangeRule: .includeZero` for it.
    public static func activation(bits: Int, scheme: GridScheme = .asymmetric, groupSize: Int? = nil,
                                  clipRatio: Double = 1, rangeRule: RangeRule? = nil) throws -> QuantGrid {
        try QuantGrid(bits: bits, scheme: scheme, granularity: groupSize.map { .perRowGroup($0) } ?? .perRow,
                      rangeRule: rangeRule ?? (groupSize == nil ? .includeZero : .minMax), clipRatio: clipRatio)
    }

    /// The reference's `find_params` for one slice: its (scale, zero).
    public func parameters(of x: UnsafeBufferPointer<Double>) -> (scale: Double, zero: Double) {
        precondition(!x.isEmpty, "quantizer slice is empty")
        if case .ggml(let type) = scheme { return ggmlParameters(of: x, type) }
        var lo = Double.infinity, hi = -Double.infinity
        for v in x { lo = Swift.min(lo, v); hi = Swift.max(hi, v) }
        switch rangeRule {
        case .includeZero:
            lo = Swift.min(lo, 0); hi = Swift.max(hi, 0)
        case .minMax:
            // The reference divides by a zero scale when a group is constant and non-zero (its all-zero guard
            // only catches xmin = xmax = 0): widen such a slice to include 0 instead of producing NaN.
            if lo == hi { lo = Swift.min(lo, 0); hi = Swift.max(hi, 0) }
        }
        lo *= clipRatio; hi *= clipRatio
        (lo, hi) = placedRange(lo, hi)
        var (s, z) = scaleAndZero(lo, hi)
        guard let mse else { return (s, z) }

        let m = Double(maxq), norm = Float(mse.norm)
        var best = Double.infinity
        for i in 0..<Int(mse.maxShrink * Double(mse.grid)) {
            let p = 1 - Double(i) / Double(mse.grid)
            let (s1, z1) = scaleAndZero(p * lo, p * hi)
            // Every term is ≥ 0, so once the partial sum reaches `best` this candidate cannot win: stopping there
            // changes no decision and skips most of the powers (80 per weight otherwise). The powers are float32
            // SIMD (powAbs8), as the reference's float32 torch computes them; libm's double pow was most of the
            // run time of a W4A4 solve.
            var err = 0.0, i = 0
            while i < x.count {
                var d = SIMD8<Float>()       // unused lanes stay 0 and add 0
                for j in 0..<Swift.min(8, x.count - i) {
                    let v = x[i + j]
                    d[j] = Float(gridQuantize(v, scale: s1, zero: z1, maxq: m) - v)
                }
                err += Double(powAbs8(d, norm).sum())
                if err >= best { break }
                i += 8
            }
            if err < best { best = err; s = s1; z = z1 }
        }
        return (s, z)
    }

    /// `GridScheme.ggml` for a 32-value block: (d rounded to fp16, the type's fixed zero), or Q4_1's (d, −m/d).
    private func ggmlParameters(of x: UnsafeBufferPointer<Double>, _ type: GGMLType) -> (scale: Double, zero: Double) {
        if type == .q4_1 || type == .q5_1 {
            var lo = Double.infinity, hi = -Double.infinity
            for e in x { lo = Swift.min(lo, e); hi = Swift.max(hi, e) }
            let d = fp16((hi - lo) / Double(maxq)), m = fp16(lo)
            return d == 0 ? (1, -m) : (d, -m / d)
        }
        var amax = 0.0, v = 0.0
        for e in x where abs(e) > amax { amax = abs(e); v = e }
        let h = fp16(type == .q8_0 ? amax / Double(maxq / 2) : v / -Double((maxq + 1) / 2))
        return (h == 0 ? 1 : h, Double(type.blockZero!))
    }

    /// Columns whose parameters are chosen together for groups of `g`: a K-quant's 256-column super-block (one fp16
    /// d over its sub-block scales), otherwise the group itself.
    public func span(groupSize g: Int) -> Int {
        if case .ggml(let t) = scheme, t.kScales != nil { return t.blockSize }
        return g
    }

    /// The parameters of the `x.count / g` groups of one span (`span(groupSize:)` columns, or fewer at a row's end
    /// when no K-quant), written to `scales[k·stride]` / `zeros[k·stride]`.
    public func parameters(ofSpan x: UnsafeBufferPointer<Double>, groupSize g: Int,
                           scales: UnsafeMutablePointer<Double>, zeros: UnsafeMutablePointer<Double>, stride: Int = 1) {
        guard case .ggml(let t) = scheme, let k = t.kScales else {
            for j in 0..<(x.count / g) {
                (scales[j * stride], zeros[j * stride]) = parameters(of: UnsafeBufferPointer(rebasing: x[(j * g)..<((j + 1) * g)]))
            }
            return
        }
        precondition(x.count == t.blockSize && g == t.subBlockSize!, "a \(t.name) span is \(t.blockSize) columns in groups of \(t.subBlockSize!)")
        let n = x.count / g
        var raw = [Double](repeating: 0, count: n), rawMin = [Double](repeating: 0, count: n)
        for j in 0..<n {
            let sub = x[(j * g)..<((j + 1) * g)]
            if k.mins {
                let lo = Swift.min(sub.min()!, 0), hi = Swift.max(sub.max()!, lo)
                raw[j] = (hi - lo) / Double(maxq); rawMin[j] = -lo
            } else {
                var amax = 0.0, v = 0.0
                for e in sub where abs(e) > amax { amax = abs(e); v = e }
                raw[j] = v / -Double((maxq + 1) / 2)
            }
        }
        // d so that the sub-block scale of largest magnitude is the integer range's extreme (−32 / −128 for the signed
        // ones, as llama.cpp places it); every other scale is its nearest integer multiple of d, never 0 (s = 0 has
        // no codes).
        let top = raw.indices.max { abs(raw[$0]) < abs(raw[$1]) }!
        var d = fp16(raw[top] / Double(k.mins ? k.range.upperBound : k.range.lowerBound))
        if d == 0 { d = 1 }
        let dmin = k.mins ? fp16(rawMin.max()! / Double(k.range.upperBound)) : 0
        for j in 0..<n {
            var sc = Swift.min(Swift.max((raw[j] / d).rounded(.toNearestOrEven), Double(k.range.lowerBound)), Double(k.range.upperBound))
            if sc == 0 { sc = 1 }
            let m = dmin == 0 ? 0 : Swift.min((rawMin[j] / dmin).rounded(.toNearestOrEven), Double(k.range.upperBound))
            let s = d * sc
            scales[j * stride] = s
            zeros[j * stride] = k.mins ? dmin * m / s : Double((maxq + 1) / 2)
        }
    }

    /// The range the scheme places its grid on (quant.py L59-66 for the GPTQ schemes).
    private func placedRange(_ lo: Double, _ hi: Double) -> (Double, Double) {
        switch scheme {
        case .asymmetric:
            return lo == 0 && hi == 0 ? (-1, 1) : (lo, hi)
        case .symmetric:
            let top = Swift.max(abs(lo), hi)
            let bottom = lo < 0 ? -top : lo          // quirk: a slice with no negative value keeps xmin = 0
            return bottom == 0 && top == 0 ? (-1, 1) : (bottom, top)
        case .signedSymmetric:
            let m = Swift.max(Swift.max(abs(lo), hi), 1e-5)   // QuaRot: .clamp(min=1e-5)
            return (-m, m)
        case .ggml:
            preconditionFailure("ggml grids are placed by ggmlParameters")
        }
    }

    /// Scale and zero of the grid on [lo, hi] (the MSE search calls it on the shrunk range p·[lo, hi]).
    private func scaleAndZero(_ lo: Double, _ hi: Double) -> (scale: Double, zero: Double) {
        let m = Double(maxq)
        switch scheme {
        case .asymmetric:
            let s = (hi - lo) / m
            return (s, (-lo / s).rounded(.toNearestOrEven))
        case .symmetric:
            return ((hi - lo) / m, (m + 1) / 2)
        case .signedSymmetric:
            return (hi / Double((maxq - 1) / 2), (m + 1) / 2)
        case .ggml:
            preconditionFailure("ggml grids are placed by ggmlParameters")
        }
    }

    /// Rows of the scale table and columns per slice for an x of shape [rows, cols].
    func layout(rows: Int, cols: Int) throws -> (paramRows: Int, groupSize: Int) {
        switch granularity {
        case .perTensor: return (1, cols)
        case .perRow: return (rows, cols)
        case .perRowGroup(let g):
            guard cols % g == 0 else { throw QuantError.groupSizeDoesNotDivide(groupSize: g, dimension: cols) }
            guard cols % span(groupSize: g) == 0 else { throw QuantError.groupSizeDoesNotDivide(groupSize: span(groupSize: g), dimension: cols) }
            return (rows, g)
        }
    }
}

/// s · (clamp(round(x/s) + z, 0, maxq) − z) (quant.py:6-10).
@inline(__always)
public func gridQuantize(_ x: Double, scale s: Double, zero z: Double, maxq: Double) -> Double {
    s * (gridCode(x, scale: s, zero: z, maxq: maxq) - z)
}

/// clamp(round(x/s) + z, 0, maxq), an integer held in a Double; clamp(round(x/s + z), 0, maxq) for a fractional z
/// (the grids with a min, s·q − m: z = m/s).
@inline(__always)
public func gridCode(_ x: Double, scale s: Double, zero z: Double, maxq: Double) -> Double {
    let c = z == z.rounded(.toNearestOrEven) ? (x / s).rounded(.toNearestOrEven) + z : (x / s + z).rounded(.toNearestOrEven)
    return Swift.min(Swift.max(c, 0), maxq)
}

/// A quantized tensor: dequantized values, integer codes and the per-slice grid parameters.
public struct QuantizedTensor: Sendable {
    /// x̂ = s·(code − z), same shape as the input.
    public var values: Matrix<Double>
    /// Codes in 0…maxq, row-major like `values`.
    public var codes: [Int32]
    /// [1, 1] per tensor, [R, 1] per row, [R, C/g] per group.
    public var scales: Matrix<Double>
    public var zeros: Matrix<Double>
    /// Columns per slice (C for per-row and per-tensor).
    public var groupSize: Int
}

/// Quantizes x on `grid` (round-to-nearest; GPTQ's `find_params` then `quantize`, opt.py:182-192 for weights).
public func quantize(_ x: Matrix<Double>, grid: QuantGrid) throws -> QuantizedTensor {
    let (paramRows, g) = try grid.layout(rows: x.rows, cols: x.cols)
    let rows = x.rows, cols = x.cols, groups = cols / g
    let maxq = Double(grid.maxq)
    var values = Matrix<Double>(zeros: rows, cols)
    var codes = [Int32](repeating: 0, count: rows * cols)
    var scales = Matrix<Double>(zeros: paramRows, groups), zeros = Matrix<Double>(zeros: paramRows, groups)

    x.data.withUnsafeBufferPointer { px in
        values.data.withUnsafeMutableBufferPointer { pv in
            codes.withUnsafeMutableBufferPointer { pc in
                scales.data.withUnsafeMutableBufferPointer { ps in
                    zeros.data.withUnsafeMutableBufferPointer { pz in
                        // One slice: [start, start + count), its parameters in parameter slot k.
                        func round(_ start: Int, _ count: Int, _ k: Int) {
                            let s = ps[k], z = pz[k]
                            for i in start..<(start + count) {
                                let c = gridCode(px[i], scale: s, zero: z, maxq: maxq)
                                pc[i] = Int32(c)
                                pv[i] = s * (c - z)
                            }
                        }
                        if grid.granularity == .perTensor {
                            (ps[0], pz[0]) = grid.parameters(of: px)
                            round(0, rows * cols, 0)
                            return
                        }
                        let span = grid.span(groupSize: g)
                        let workers = parameterSearchWorkers(rows: rows, cols: cols, mse: grid.mse != nil)
                        parallelFor(workers) { w in
                            for r in (rows * w / workers)..<(rows * (w + 1) / workers) {
                                for c0 in stride(from: 0, to: cols, by: span) {
                                    let k0 = r * groups + c0 / g
                                    grid.parameters(ofSpan: UnsafeBufferPointer(rebasing: px[(r * cols + c0)..<(r * cols + Swift.min(c0 + span, cols))]),
                                                    groupSize: g, scales: ps.baseAddress! + k0, zeros: pz.baseAddress! + k0)
                                }
                                for k in 0..<groups { round(r * cols + k * g, g, r * groups + k) }
                            }
                        }
                    }
                }
            }
        }
    }
    return QuantizedTensor(values: values, codes: codes, scales: scales, zeros: zeros, groupSize: g)
}

/// x rounded to the nearest fp16 (clamped to its finite range), as a Double.
func fp16(_ x: Double) -> Double {
    Double(Float16(Swift.max(Swift.min(x, Double(Float16.greatestFiniteMagnitude)), -Double(Float16.greatestFiniteMagnitude))))
}

