import Foundation

// Format v2's weight storage, the layout the runtime's kernels read in place (Sources/CCoQuantKernels/include/
// coquant_kernels.h has the full statement):
//   a row of W [rows, cols] is a sequence of runs (maximal ranges of consecutive columns of one weight group), each
//   padded to a multiple of 32 columns; a run of ≤ 4-bit codes is one 4-bit plane, of 5–8-bit codes two planes
//   (u = 16·hi + lo, lo first); a plane stores 32 columns in 16 bytes, byte j = code(j) | code(j + 16) << 4.
// Ŵ[r, c] = scales[r, g]·(u[r, c] − zeros[r, g]), g = groupIndex[c], as in v1.

public struct PlaneRun: Sendable, Equatable {
    public let col: Int
    public let count: Int
    public let padded: Int
    /// First column of the run in the padded column space (Σ padded of the runs before it).
    public let paddedCol: Int
    public let byteOffset: Int
    public let planes: Int
    public let group: Int
}

public struct PlaneLayout: Sendable, Equatable {
    public let runs: [PlaneRun]
    public let rowBytes: Int
    public let paddedCols: Int

    /// The runs of a row whose columns belong to `groupIndex` groups of `groupBits` bits (nil: all `bits`).
    public init(cols: Int, bits: Int, groupIndex: [Int32], groupBits: [Int]?) {
        var runs: [PlaneRun] = []
        var c = 0, bytes = 0, paddedCols = 0
        while c < cols {
            let g = Int(groupIndex[c])
            var e = c + 1
            while e < cols && Int(groupIndex[e]) == g { e += 1 }
            let padded = (e - c + 31) / 32 * 32
            let planes = (groupBits?[g] ?? bits) > 4 ? 2 : 1
            runs.append(PlaneRun(col: c, count: e - c, padded: padded, paddedCol: paddedCols, byteOffset: bytes,
                                 planes: planes, group: g))
            bytes += planes * padded / 2
            paddedCols += padded
            c = e
        }
        self.runs = runs
        rowBytes = bytes
        self.paddedCols = paddedCols
    }

    /// Codes [rows, cols] packed into [rows, rowBytes].
    public func pack(rows: Int, cols: Int, code: (Int, Int) -> Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: rows * rowBytes)
        for r in 0..<rows {
            for run in runs {
                for j in 0..<run.count {
                    let u = code(r, run.col + j)
                    for p in 0..<run.planes {
                        let v = UInt8(run.planes == 2 ? (p == 0 ? u & 15 : u >> 4) : u)
                        let byte = r * rowBytes + run.byteOffset + p * run.padded / 2 + j / 32 * 16 + j % 16
                        out[byte] |= j % 32 < 16 ? v : v << 4
                    }
                }
            }
        }
        return out
    }
}

/// A linear's codes in the v2 layout, read in place from the folder's memory map (or owned after a v1 repack).
public final class PackedPlanes: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let layout: PlaneLayout
    public let bytes: UnsafeRawBufferPointer     // [rows, layout.rowBytes]
    public let scales: [Float]                   // [rows, groups]
    public let zeros: [Float]                    // [rows, groups], integer-valued
    private let owner: AnyObject?                // the MappedFile, or nil when `bytes` is owned

    public var groups: Int { scales.count / rows }

    init(rows: Int, cols: Int, layout: PlaneLayout, bytes: UnsafeRawBufferPointer, owner: AnyObject?, scales: [Float], zeros: [Float]) {
        self.rows = rows; self.cols = cols; self.layout = layout; self.bytes = bytes
        self.owner = owner; self.scales = scales; self.zeros = zeros
    }

    /// Repacks a v1 (bit-packed) linear.
    public convenience init(_ p: PackedLinear) {
        let layout = PlaneLayout(cols: p.cols, bits: p.bits, groupIndex: p.groupIndex, groupBits: p.groupBits)
        let packed = layout.pack(rows: p.rows, cols: p.cols) { Int(p.code($0, $1)) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(packed.count, 1), alignment: 64)
        packed.withUnsafeBytes { buffer.copyMemory(from: $0) }
        self.init(rows: p.rows, cols: p.cols, layout: layout, bytes: UnsafeRawBufferPointer(buffer), owner: nil,
                  scales: p.scales, zeros: p.zeros)
    }

    deinit { if owner == nil { UnsafeMutableRawBufferPointer(mutating: bytes).deallocate() } }

    /// The group of each input column [cols].
    public var columnGroups: [Int] {
        var group = [Int](repeating: 0, count: cols)
        for run in layout.runs { for j in 0..<run.count { group[run.col + j] = run.group } }
        return group
    }

    public func code(_ r: Int, _ c: Int) -> Int {
        let run = layout.runs.last { $0.col <= c }!
        return code(r, run, c - run.col)
    }

    /// The code of column `j` of `run` in row r.
    func code(_ r: Int, _ run: PlaneRun, _ j: Int) -> Int {
        var u = 0
        for p in 0..<run.planes {
            let b = bytes[r * layout.rowBytes + run.byteOffset + p * run.padded / 2 + j / 32 * 16 + j % 16]
            u += Int(j % 32 < 16 ? b & 15 : b >> 4) << (4 * p)
        }
        return u
    }

    /// Ŵ [rows, cols] in fp32, exactly the values the in-memory quantized model uses (the simulator's weights).
    public func dequantized() -> [Float] {
        let g = groups
        var w = [Float](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            for run in layout.runs {
                let s = scales[r * g + run.group], z = zeros[r * g + run.group]
                for j in 0..<run.count { w[r * cols + run.col + j] = s * (Float(code(r, run, j)) - z) }
            }
        }
        return w
    }
}

/// A table stored as int8 codes with one fp32 scale per row (symmetric, s = max|w|/127, codes in [−127, 127]):
/// llama.cpp's Q8_0 with one block per row. Embeddings and the LM head are kept this way by default, and the
/// quantizing run rounds its in-memory model through `dequantized()`, so folder and memory hold the same values.
public final class Int8Rows: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let codes: UnsafeBufferPointer<Int8>  // [rows, cols]
    public let scales: [Float]                   // [rows]
    private let owner: AnyObject?

    init(rows: Int, cols: Int, codes: UnsafeBufferPointer<Int8>, scales: [Float], owner: AnyObject?) {
        self.rows = rows; self.cols = cols; self.codes = codes; self.scales = scales; self.owner = owner
    }

    /// Rounds w [rows, cols] half to even on each row's grid. The scale is rounded to fp16 first (Q8_0 stores it so),
    /// so a GGUF export of the table holds exactly these values.
    public convenience init(quantizing w: [Float], rows: Int, cols: Int) {
        precondition(w.count == rows * cols)
        let codes = UnsafeMutableBufferPointer<Int8>.allocate(capacity: max(rows * cols, 1))
        var scales = [Float](repeating: 0, count: rows)
        for r in 0..<rows {
            var m: Float = 0
            for c in 0..<cols { m = max(m, abs(w[r * cols + c])) }
            let half = Float(Float16(m / 127))
            let s = half > 0 ? half : 1
            scales[r] = s
            for c in 0..<cols { codes[r * cols + c] = Int8(max(-127, min(127, (w[r * cols + c] / s).rounded(.toNearestOrEven)))) }
        }
        self.init(rows: rows, cols: cols, codes: UnsafeBufferPointer(codes), scales: scales, owner: nil)
    }

    deinit { if owner == nil { UnsafeMutableBufferPointer(mutating: codes).deallocate() } }

    public func row(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        let s = scales[r]
        for c in 0..<cols { out[c] = s * Float(codes[r * cols + c]) }
    }

    public func dequantized() -> [Float] {
        var w = [Float](repeating: 0, count: rows * cols)
        w.withUnsafeMutableBufferPointer { p in for r in 0..<rows { row(r, into: p.baseAddress! + r * cols) } }
        return w
    }
}

/// A table stored as IEEE half precision (llama.cpp's F16), read in place: the `--embeddings f16` option.
public final class F16Rows: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let bits: UnsafeBufferPointer<UInt16>  // [rows, cols], fp16 bit patterns
    private let owner: AnyObject?

    init(rows: Int, cols: Int, bits: UnsafeBufferPointer<UInt16>, owner: AnyObject?) {
        self.rows = rows; self.cols = cols; self.bits = bits; self.owner = owner
    }

    /// Rounds w [rows, cols] to the nearest fp16 (ties to even; beyond ±65504 to ±inf, which the loader refuses).
    public convenience init(rounding w: [Float], rows: Int, cols: Int) {
        precondition(w.count == rows * cols)
        let bits = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: max(rows * cols, 1))
        for i in 0..<(rows * cols) { bits[i] = Float16(w[i]).bitPattern }
        self.init(rows: rows, cols: cols, bits: UnsafeBufferPointer(bits), owner: nil)
    }

    deinit { if owner == nil { UnsafeMutableBufferPointer(mutating: bits).deallocate() } }

    public func row(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        for c in 0..<cols { out[c] = Float(Float16(bitPattern: bits[r * cols + c])) }
    }

    public func dequantized() -> [Float] {
        var w = [Float](repeating: 0, count: rows * cols)
        w.withUnsafeMutableBufferPointer { p in for r in 0..<rows { row(r, into: p.baseAddress! + r * cols) } }
        return w
    }
}

/// An embedding table or LM head as a folder stores it, for the Runtime's row kernels.
public enum RowTable {
    case int8(Int8Rows)
    case f16(F16Rows)
    case planes(PackedPlanes)
}

extension SafeTensorsCheckpoint {
    /// How the table `<prefix>` is stored, in `quantization_config.embeddings.format`'s words; nil when absent.
    func tableStorage(_ prefix: String) -> String? {
        if info(prefix + ".codes") != nil { return "int8-row" }
        if info(prefix + ".qweight") != nil { return "int4-g32" }
        return info(prefix + ".weight").map { $0.dtype == "F16" ? "f16" : $0.dtype == "F32" ? "f32" : $0.dtype }
    }

    /// `<prefix>.weight` when it is F16 [rows, cols], read in place; nil when absent or of another dtype.
    public func f16Rows(_ prefix: String, rows: Int, cols: Int) throws -> F16Rows? {
        guard let w = info(prefix + ".weight"), w.dtype == "F16" else { return nil }
        let file = files[location[prefix + ".weight"]!]
        guard w.shape == [rows, cols] else {
            throw ModelFileError(file.path, "\(prefix).weight is F16 \(w.shape), expected [\(rows), \(cols)]")
        }
        let bits = UnsafeBufferPointer(start: (file.file.base + w.offset).assumingMemoryBound(to: UInt16.self), count: rows * cols)
        // Exponent all ones: inf or NaN, which no model table holds.
        guard !bits.contains(where: { $0 & 0x7C00 == 0x7C00 }) else {
            throw ModelFileError(file.path, "\(prefix).weight contains NaN or Inf")
        }
        return F16Rows(rows: rows, cols: cols, bits: bits, owner: file)
    }

    /// The v2 linear `<prefix>.qweight` (plane runs) with `.scales/.zeros[/.g_idx][/.group_bits]`, read in place;
    /// nil when the checkpoint has no `<prefix>.qweight`.
    public func packedPlanes(_ prefix: String, bits: Int, rows: Int, cols: Int) throws -> PackedPlanes? {
        guard let grid = try packedGrid(prefix, bits: bits, rows: rows, cols: cols) else { return nil }
        let q = info(prefix + ".qweight")!
        let file = files[location[prefix + ".qweight"]!]
        let layout = PlaneLayout(cols: cols, bits: bits, groupIndex: grid.groupIndex, groupBits: grid.groupBits)
        guard q.dtype == "U8", q.shape == [rows, layout.rowBytes] else {
            throw ModelFileError(file.path, "\(prefix).qweight is \(q.dtype) \(q.shape), expected U8 [\(rows), \(layout.rowBytes)] for its 4-bit plane runs")
        }
        return PackedPlanes(rows: rows, cols: cols, layout: layout,
                            bytes: UnsafeRawBufferPointer(start: file.file.base + q.offset, count: q.byteCount), owner: file,
                            scales: grid.scales, zeros: grid.zeros)
    }

    /// The packed codes of `<prefix>` [rows, cols] in a quantized folder: v2 plane runs in place, v1 repacked; nil when
    /// the tensor is not packed. The tables (embed_tokens, lm_head) are packed only as `int4-g32`, at 4 bits.
    public func packedCodes(_ prefix: String, quantization q: QuantizationConfig, rows: Int, cols: Int) throws -> PackedPlanes? {
        var bits = q.weights.storageBits
        if prefix == "model.embed_tokens" || prefix == "lm_head" {
            guard q.embeddings?.format == "int4-g32" else { return nil }
            bits = 4
        }
        if q.formatVersion >= 2 { return try packedPlanes(prefix, bits: bits, rows: rows, cols: cols) }
        return try packedLinear(prefix, bits: bits, rows: rows, cols: cols).map(PackedPlanes.init)
    }

    /// `<prefix>.codes` I8 [rows, cols] with `<prefix>.row_scales` F32 [rows], read in place; nil when absent.
    public func int8Rows(_ prefix: String, rows: Int, cols: Int) throws -> Int8Rows? {
        guard let q = info(prefix + ".codes") else { return nil }
        let file = files[location[prefix + ".codes"]!]
        guard q.dtype == "I8", q.shape == [rows, cols] else {
            throw ModelFileError(file.path, "\(prefix).codes is \(q.dtype) \(q.shape), expected I8 [\(rows), \(cols)]")
        }
        guard info(prefix + ".row_scales")?.shape == [rows] else {
            throw ModelFileError(file.path, "\(prefix).row_scales must be F32 [\(rows)] next to \(prefix).codes")
        }
        let scales = try floats(prefix + ".row_scales")
        guard scales.allSatisfy({ $0.isFinite && $0 > 0 }) else {
            throw ModelFileError(file.path, "\(prefix).row_scales has a non-finite or non-positive scale")
        }
        let codes = UnsafeBufferPointer(start: (file.file.base + q.offset).assumingMemoryBound(to: Int8.self), count: rows * cols)
        return Int8Rows(rows: rows, cols: cols, codes: codes, scales: scales, owner: file)
    }
}
